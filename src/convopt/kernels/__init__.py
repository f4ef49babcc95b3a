"""Pure tensor functions that compute convolutions; each algorithm registers itself on import."""

from convopt.kernels import direct, fft, im2col, reference, sparse, winograd  # noqa: F401  (registration)
from convopt.kernels.dispatch import conv
from convopt.kernels.registry import ALGORITHMS, ConvAlgorithm, get_algorithm, list_algorithms

__all__ = ["ALGORITHMS", "ConvAlgorithm", "conv", "get_algorithm", "list_algorithms"]

"""Thin nn.Module wrappers that own parameters and call convopt's kernels."""

from convopt.nn.conv import AlgoConv1d, AlgoConv2d, AlgoConv3d, from_conv

__all__ = ["AlgoConv1d", "AlgoConv2d", "AlgoConv3d", "from_conv"]

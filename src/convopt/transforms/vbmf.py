"""Rank by empirical variational Bayesian matrix factorisation (EVBMF): how many singular values stand out
of the noise, with the noise level estimated from the matrix itself.

Written from the global analytic solution of Nakajima, Sugiyama, Babacan and Tomioka (JMLR 14, 2013,
"Global analytic solution of fully-observed variational Bayesian matrix factorization"), as Kim et al.
(ICLR 2016) use it to pick Tucker-2 ranks from a conv weight's channel-mode unfoldings. For an L x M
matrix (L <= M, alpha = L / M) with singular values gamma_h, EVBMF keeps component h iff
gamma_h^2 > M * sigma^2 * x_low, with x_low = (1 + tau_low)(1 + alpha / tau_low) and tau_low = 2.5129 sqrt(alpha);
the noise variance sigma^2 minimises sum_h psi(gamma_h^2 / (M sigma^2)) over a bounded interval, where
psi(x) = x - log x, plus log(tau + 1) + alpha log(tau / alpha + 1) - tau when x > x_low, and
tau(x) = (x - 1 - alpha + sqrt((x - 1 - alpha)^2 - 4 alpha)) / 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar

TAU_CONSTANT = 2.5129  # tau_low / sqrt(alpha), the paper's numerical constant


@dataclass(frozen=True)
class VbmfEstimate:
    rank: int
    noise_variance: float
    threshold: float  # singular values above it are kept


def _objective(sigma2: float, gamma2: np.ndarray, m: int, alpha: float, x_low: float) -> float:
    x = gamma2 / (m * sigma2)
    value = float(np.sum(x - np.log(x)))
    big = x[x > x_low]
    if big.size:
        b = big - 1.0 - alpha
        tau = 0.5 * (b + np.sqrt(np.maximum(b * b - 4.0 * alpha, 0.0)))
        value += float(np.sum(np.log(tau + 1.0) + alpha * np.log(tau / alpha + 1.0) - tau))
    return value


def evbmf(singular_values: torch.Tensor, shape: tuple[int, int]) -> VbmfEstimate:
    """EVBMF rank and noise of a matrix of `shape` from its singular values (descending, all min(shape) of them).

    Raises:
        ValueError: the count of singular values does not match the shape, or the matrix is zero.
    """
    l, m = sorted(shape)
    gamma = singular_values.detach().double().cpu().numpy()
    if gamma.shape != (l,):
        raise ValueError(f"evbmf: expected all {l} singular values of a {shape[0]}x{shape[1]} matrix, got {gamma.shape}")
    gamma2 = np.sort(gamma)[::-1] ** 2
    if not gamma2[0] > 0:
        raise ValueError("evbmf: the matrix is zero; it has no rank to estimate")
    alpha = l / m
    tau_low = TAU_CONSTANT * math.sqrt(alpha)
    x_low = (1.0 + tau_low) * (1.0 + alpha / tau_low)
    h_max = max(0, min(math.ceil(l / (1.0 + alpha)) - 1, l - 1))  # the largest rank EVBMF can return
    upper = float(gamma2.sum()) / (l * m)
    lower = max(float(gamma2[h_max]) / (m * x_low), float(gamma2[h_max:].mean()) / m)
    positive = gamma2 > 0
    gamma2 = np.where(positive, gamma2, np.finfo(float).tiny)  # exact zeros: log 0 would end the search
    if lower >= upper:
        sigma2 = upper
    else:
        sigma2 = float(minimize_scalar(_objective, bounds=(lower, upper), method="bounded",
                                       args=(gamma2, m, alpha, x_low), options={"xatol": 1e-12 * upper}).x)  # fmt: skip
    threshold = math.sqrt(m * sigma2 * x_low)
    return VbmfEstimate(int(np.sum(np.sqrt(gamma2) > threshold)), sigma2, threshold)

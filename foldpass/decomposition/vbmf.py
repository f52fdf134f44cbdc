"""Rank selection by empirical variational Bayesian matrix factorization (EVBMF).

Nakajima, Tomioka, Sugiyama, Babacan, "Global analytic solution of fully-observed variational
Bayesian matrix factorization", JMLR 14 (2013): for Y = B A^T + E with Gaussian noise of unknown
variance sigma^2, the EVB solution keeps exactly the singular values above

    sqrt(M sigma^2 (1 + tau) (1 + alpha / tau)),   alpha = L / M,  tau = 2.5129 sqrt(alpha)

with sigma^2 chosen to minimize the free energy. No maintained package ships it; this is the
short analytic form (as in the widely used VBMF.py), tested on matrices of known rank.
"""

from __future__ import annotations

import numpy as np

from ..extras import require


def _tau(x, alpha):
    return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))


def _free_energy(sigma2, L, M, s, residual, xubar):
    H = len(s)
    alpha = L / M
    x = s**2 / (M * sigma2)
    z1, z2 = x[x > xubar], x[x <= xubar]
    tau_z1 = _tau(z1, alpha)
    return (np.sum(z2 - np.log(z2)) + np.sum(z1 - tau_z1) + np.sum(np.log((tau_z1 + 1) / z1))
            + alpha * np.sum(np.log(tau_z1 / alpha + 1)) + residual / (M * sigma2) + (L - H) * np.log(sigma2))


def evbmf_rank(y: np.ndarray) -> int:
    """The number of components EVBMF keeps in the matrix y (noise variance estimated)."""
    y = np.asarray(y, dtype=np.float64)
    if y.shape[0] > y.shape[1]:
        y = y.T
    L, M = y.shape
    s = np.linalg.svd(y, compute_uv=False)
    alpha = L / M
    tauubar = 2.5129 * np.sqrt(alpha)
    xubar = (1 + tauubar) * (1 + alpha / tauubar)
    eh_ub = int(min(np.ceil(L / (1 + alpha)) - 1, L)) - 1
    upper = np.sum(s**2) / (L * M)
    lower = max(s[eh_ub + 1] ** 2 / (M * xubar) if eh_ub + 1 < L else 0.0, np.mean(s[eh_ub + 1:] ** 2) / M)
    if not upper > lower > 0:
        return int(np.sum(s > 1e-12 * s[0]))
    minimize_scalar = require("scipy.optimize", "decompose").minimize_scalar
    sigma2 = minimize_scalar(_free_energy, args=(L, M, s, 0.0, xubar), bounds=[lower, upper], method="bounded").x
    threshold = np.sqrt(M * sigma2 * (1 + tauubar) * (1 + alpha / tauubar))
    return int(np.sum(s > threshold))

"""Gauss-Legendre quadrature in v = log(s / sigma) over a step, for the coefficients the planner evaluates by
quadrature (inlined into the modules that have a QUADRATURE_NODES rule)."""

from __future__ import annotations

import torch

from derive.runtime.module import QUADRATURE_NODES, QUADRATURE_WEIGHTS

# ---- inlined into the generated modules below this line ----


def _log_ratio(sigma, sigma_next):
    """log(sigma / sigma_next) without cancellation (log1p of the exact step when the step is short)."""
    short = 2 * sigma_next > sigma
    return torch.where(short, -torch.log1p(-(sigma - sigma_next) / sigma), torch.log(sigma / sigma_next))


def _quadrature(integrand, prefactor, sigma, sigma_next):
    """prefactor * int over v = log(s / sigma) in [-log(sigma / sigma_next), 0], by Gauss-Legendre."""
    nodes = torch.tensor(QUADRATURE_NODES, dtype=torch.float64)
    weights = torch.tensor(QUADRATURE_WEIGHTS, dtype=torch.float64)
    half = 0.5 * _log_ratio(sigma, sigma_next)
    v = half[:, None] * (nodes[None, :] - 1)
    return prefactor(sigma, sigma_next) * half * (integrand(sigma[:, None], v) @ weights)

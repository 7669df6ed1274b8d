"""The Adams form of a step's weights: the step's density integrated against the Lagrange basis of the nodes
directly, by Gauss-Legendre in v = log(s / sigma) (inlined into the adams modules)."""

from __future__ import annotations

import torch

from derive.runtime.module import (
    _LAGRANGE_BASIS,
    QUADRATURE_NODES,
    QUADRATURE_WEIGHTS,
    _adams_density,
    _adams_prefactor,
    _expansion_offset,
)
from derive.runtime.quadrature import _log_ratio

# ---- inlined into the generated modules below this line ----


def _prepare_weights(sigma, sigma_next):
    """Nothing to prepare: each step's weights are integrated on their own."""
    return None


def _step_weights(prepared, s, i, offsets):
    """Weights of the k = len(offsets) + 1 newest outputs on step i (the Lagrange basis integrals)."""
    return _adams_weights(s[i], s[i + 1], offsets)


def _adams_weights(sigma, sigma_next, offsets):
    """int density * l_j(u) over the step for each stored output j (Gauss-Legendre in v = log(s / sigma))."""
    nodes = torch.tensor(QUADRATURE_NODES, dtype=torch.float64)
    weights = torch.tensor(QUADRATURE_WEIGHTS, dtype=torch.float64)
    half = 0.5 * _log_ratio(sigma, sigma_next)
    v = half * (nodes - 1)
    density = _adams_density(sigma, v) * weights
    (basis,) = _LAGRANGE_BASIS[len(offsets) + 1](_expansion_offset(sigma, v), *offsets)
    scale = _adams_prefactor(sigma, sigma_next) * half
    return [float(scale * torch.dot(density, b)) for b in basis]

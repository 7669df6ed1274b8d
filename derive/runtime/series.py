"""The switch between a closed form and its small-step series (inlined into the modules whose plan uses a
series below a derived threshold)."""

from __future__ import annotations

import torch

# ---- inlined into the generated modules below this line ----


def _polyval(x, coefficients):
    """sum_m coefficients[m] x^m by Horner's rule."""
    total = torch.zeros_like(x)
    for value in reversed(coefficients):
        total = total * x + value
    return total


def _switch(sigma, sigma_next, threshold, closed, series):
    """Closed form for relative steps h / sigma >= threshold, the small-step series below it."""
    h = sigma - sigma_next
    small = h < threshold * sigma
    safe_next = torch.where(small, 0.5 * sigma, sigma_next)
    return torch.where(small, series(sigma, sigma_next, h), closed(sigma, safe_next))

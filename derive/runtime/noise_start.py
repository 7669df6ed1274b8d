"""The noise-prediction form's first step from alpha = 0 (pure noise): refused, since at alpha = 0 the noise
prediction alone does not determine the data prediction (inlined into the noise-form modules of the process
families; the data form's step is printed from the derivation instead)."""

from __future__ import annotations

# ---- inlined into the generated modules below this line ----


def _pure_noise_step(sigma, alpha_next, sigma_next):
    """The noise-prediction form has no step from alpha = 0."""
    raise ValueError("the noise-prediction form cannot start at alpha = 0 (pure noise); start at alpha > 0")

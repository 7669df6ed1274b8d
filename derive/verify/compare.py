"""``derive compare A B``: two samplers on the same model, starting noise, noise levels and Brownian path.

Both TARGETs (see :mod:`derive.verify.targets`) run in float64 on the exact denoiser of a Gaussian mixture
(strongly nonlinear near its narrow component) from the same starting states, on the same Karras grid (``rho =
7``) plus a final 0; stochastic samplers draw their noise from one Brownian path ``W(s)``. The states at every
noise level are compared (normalized coordinates, the state each sampler holds when it reaches the level): the
largest difference per level, relative to the state's magnitude, and the first level where it exceeds ``tol``
-- where the two implementations part.
"""

from __future__ import annotations

import numpy as np
import torch

from derive.verify import harness
from derive.verify.blackbox import BrownianNoise
from derive.verify.problems import GaussianMixture, karras_sigmas
from derive.verify.targets import Target

__all__ = ["compare"]


def compare(
    a: Target,
    b: Target,
    *,
    steps: int = 20,
    sigma_min: float = 0.0292,
    sigma_max: float = 14.6,
    batch: int = 8,
    seed: int = 0,
    tol: float = 1e-8,
) -> dict:
    """Per-level differences of ``a`` and ``b`` (see the module docstring) as JSON-ready data."""
    data = GaussianMixture.standard(2, seed=0)
    rng = np.random.default_rng(seed)
    y0 = torch.tensor(data.sample_np(batch, rng) + sigma_max * rng.standard_normal((batch, data.d)))
    levels = [*[float(v) for v in karras_sigmas(steps, sigma_min, sigma_max)], 0.0]
    noise = BrownianNoise(y0.shape, sigma_max, seed + 1)
    with harness.single_thread():
        runs = [t.run(data.denoiser_torch, y0, levels, noise=noise) for t in (a, b)]
    rows, first = [], None
    for i, level in enumerate(levels):
        sa, sb = runs[0].states.get(i), runs[1].states.get(i)
        if sa is None or sb is None:
            rows.append({"index": i, "sigma": level, "max_abs": None, "relative": None})
            continue
        diff = float((sa - sb).abs().max())
        relative = diff / max(1.0, float(sa.abs().max()))
        rows.append({"index": i, "sigma": level, "max_abs": diff, "relative": relative})
        if first is None and not relative <= tol:
            first = i
    return {
        "a": {"name": a.name, **a.describe(), "model_calls": runs[0].calls},
        "b": {"name": b.name, **b.describe(), "model_calls": runs[1].calls},
        "problem": "GaussianMixture.standard(2, seed=0), exact denoiser",
        "sigmas": levels,
        "tol": tol,
        "rows": rows,
        "first_different": first,
        "largest": max((r["relative"] for r in rows if r["relative"] is not None), default=None),
    }

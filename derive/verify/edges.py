"""Edge sweeps of a sampler: every step count, the final noise level, and the floating-point type.

* **steps**: every step count from 1 to 30 on the sampler's own schedule (a diffusers scheduler's
  ``set_timesteps(n)``; Karras ``rho = 7`` from 14.6 to 0.0292 plus a final 0, k-diffusion's usual grid, for a
  function). Exact mean and variance of the output on Gaussian data (as the weak study: no sampling error) give
  the error against the data distribution and the *residual noise* ``sqrt(max(var - v, 0))`` -- the noise
  the sampler leaves in its output. Flagged: a non-finite output, a crash, an error that grows by more than
  1.5x from ``n - 1`` to ``n`` steps (a final-step rule that acts on some step counts only), an excess variance
  ``(var - v) / v`` above 1 % at 30 steps that is not below 0.8x its value at 15 steps (noise that more steps do not remove: a
  discretization error of order 1 or more falls by 2x at least).
* **final**: the same sampler on a 10-step Karras grid ending ``[..., s_min, 0]``, with the last level repeated
  ``[..., s_min, s_min, 0]``, and ending at ``s_min`` without a zero: finite?, residual noise (flagged when the
  repeat raises it by half or more).
* **dtypes**: 25 steps of the own schedule with the state in float16, bfloat16, float32 and float64 (no float64
  shim for the first three: the scheduler's arithmetic as shipped), fixed noise: non-finite entries and the
  largest error against the float64 run relative to its magnitude.

A first level at pure noise (a flow schedule's ``t = 1``) is replaced by ``t = 1 - 1e-3``: normalized
coordinates need ``t < 1``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from derive.verify import blackbox
from derive.verify.diffusers_target import DiffusersTarget
from derive.verify.problems import GaussianData, karras_sigmas
from derive.verify.targets import Target

__all__ = ["DTYPES", "dtype_sweep", "final_sweep", "own_levels", "step_sweep", "sweep"]

DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
KARRAS = (0.0292, 14.6)
GROWTH = 1.5
DATA = GaussianData([0.3, -0.5, 1.0], [0.25, 1.0, 4.0])
#: residual noise is flagged when the output's variance exceeds the data's by more than this fraction at 30
#: steps and the excess is not below RESIDUAL_PERSISTS times its value at 15 (an error of order 1 falls by 2x)
RESIDUAL_EXCESS = 0.01
RESIDUAL_PERSISTS = 0.8


def own_levels(target: Target, n: int) -> list[float]:
    if isinstance(target, DiffusersTarget):
        levels = target.own_levels(n)
    else:
        levels = [*[float(v) for v in karras_sigmas(n, *KARRAS)], 0.0]
    if not math.isfinite(levels[0]):
        levels[0] = 999.0  # t = 0.999 in flow coordinates
    return levels


def _moments(target: Target, levels: list[float]) -> dict:
    try:
        mean, var = blackbox.exact_moments(target, DATA, levels, len(levels) - 1)
    except Exception as error:  # noqa: BLE001 - a crash is a finding, reported with its message
        return {
            "finite": False,
            "error": math.inf,
            "residual": math.inf,
            "crash": f"{type(error).__name__}: {error}"[:160],
        }
    finite = bool(np.all(np.isfinite(mean)) and np.all(np.isfinite(var)))
    last = levels[-1]
    target_var = DATA.var + last**2
    error = float(np.max(np.abs(mean - DATA.mean) + np.abs(var - target_var))) if finite else math.inf
    residual = float(np.sqrt(np.max(np.maximum(var - DATA.var, 0.0)))) if finite else math.inf
    # variance in excess of the data's, relative to it: a discretization error falls with more steps, noise
    # the sampler leaves behind does not
    excess = float(np.max(np.maximum(var - DATA.var, 0.0) / DATA.var)) if finite else math.inf
    return {"finite": finite, "error": error, "residual": residual, "excess": excess}


def step_sweep(target: Target, counts=range(1, 31)) -> dict:
    rows, flags = [], []
    previous = None
    for n in counts:
        try:
            levels = own_levels(target, n)
        except Exception as error:  # noqa: BLE001
            rows.append({"steps": n, "finite": False, "crash": f"{type(error).__name__}: {error}"[:160]})
            flags.append(f"n={n}: cannot build the schedule ({type(error).__name__})")
            previous = None
            continue
        row = {"steps": n, "last_sigma": levels[-1], **_moments(target, levels)}
        rows.append(row)
        if "crash" in row:
            flags.append(f"n={n}: crash ({row['crash']})")
        elif not row["finite"]:
            flags.append(f"n={n}: non-finite output")
        else:
            if (
                previous is not None
                and math.isfinite(previous)
                and row["error"] > GROWTH * previous
                and n >= 3
            ):
                flags.append(f"n={n}: error {row['error']:.3g} > {GROWTH}x the error with {n - 1} steps")
        previous = row.get("error")
    by_steps = {row["steps"]: row for row in rows}
    last, half = rows[-1] if rows else {}, by_steps.get(rows[-1]["steps"] // 2, {}) if rows else {}
    if (
        last.get("finite")
        and half.get("finite")
        and last["excess"] > RESIDUAL_EXCESS
        and last["excess"] > RESIDUAL_PERSISTS * half["excess"]
    ):
        flags.append(
            f"n={last['steps']}: residual noise {last['residual']:.3g} (variance {last['excess']:.1%} above the "
            f"data's) that halving the step does not remove ({half['excess']:.1%} with {half['steps']} steps; "
            f"last level {last['last_sigma']:.3g})"
        )
    return {"rows": rows, "flags": flags}


def final_sweep(target: Target) -> dict:
    base = [float(v) for v in karras_sigmas(10, *KARRAS)]
    cases = {"zero": [*base, 0.0], "repeated": [*base, base[-1], 0.0], "no zero": base}
    rows, flags = {}, []
    for name, levels in cases.items():
        row = _moments(target, levels)
        rows[name] = row
        if "crash" in row:
            flags.append(f"{name}: crash ({row['crash']})")
        elif not row["finite"]:
            flags.append(f"{name}: non-finite output")
    zero, repeated = rows["zero"], rows["repeated"]
    if zero.get("finite") and repeated.get("finite") and repeated["residual"] > 1.5 * zero["residual"] + 1e-3:
        flags.append(
            f"repeated: residual noise {repeated['residual']:.3g} against {zero['residual']:.3g} without the repeat"
        )
    return {"rows": rows, "flags": flags}


def dtype_sweep(target: Target, n: int = 25) -> dict:
    levels = own_levels(target, n)
    rng = np.random.default_rng(0)
    y0 = torch.tensor(DATA.sample_np(8, rng) + levels[0] * rng.standard_normal((8, DATA.d)))
    noise = blackbox.BrownianNoise(y0.shape, max(levels), seed=1)
    outputs, rows, flags = {}, {}, []
    for name in ("float64", "float32", "bfloat16", "float16"):
        try:
            out = target.run(DATA.denoiser_torch, y0, levels, noise=noise, dtype=DTYPES[name]).output
        except Exception as error:  # noqa: BLE001
            rows[name] = {"crash": f"{type(error).__name__}: {error}"[:160]}
            flags.append(f"{name}: crash ({rows[name]['crash']})")
            continue
        outputs[name] = out
        bad = int((~torch.isfinite(out)).sum())
        rows[name] = {"non_finite": bad}
        if bad:
            flags.append(f"{name}: {bad} non-finite entries")
    reference = outputs.get("float64")
    if reference is not None:
        scale = max(1.0, float(reference.abs().max()))
        for name, out in outputs.items():
            diff = (out - reference).abs()
            rows[name]["relative_error"] = (
                float(diff[torch.isfinite(diff)].max() / scale) if torch.isfinite(diff).any() else math.inf
            )
    return {"steps": n, "rows": rows, "flags": flags}


def sweep(target: Target, counts=range(1, 31)) -> dict:
    """Every edge sweep of ``target``; ``flags`` lists what deserves a look."""
    steps, final, dtypes = step_sweep(target, counts), final_sweep(target), dtype_sweep(target)
    return {
        "steps": steps,
        "final": final,
        "dtypes": dtypes,
        "flags": steps["flags"] + final["flags"] + dtypes["flags"],
    }

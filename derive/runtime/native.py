"""The family's own coordinates: checks of the schedule and the timesteps, and the per-step coefficients in
family coordinates (inlined into the modules of the process families; times.py or table.py adds how times are
read)."""

from __future__ import annotations

import math

import torch

from derive.runtime.contract import _check_arguments, _check_output, _float64, _noise_function, _real
from derive.runtime.loop import _run
from derive.runtime.module import (
    MEAN_REVERTING,
    PARAMETER_CONDITIONS,
    SCHEDULE,
    SCHEDULE_DOC,
    _family_coefficients,
    _pure_noise_step,
    to_prediction,
)
from derive.runtime.predictor import _corrections
from derive.runtime.table import coefficient_table

# ---- inlined into the generated modules below this line ----


def _parameter(value, name):
    """A schedule parameter as a float, refused (naming it) where it breaks the derivation's assumption."""
    value = _real(value, name)
    condition = PARAMETER_CONDITIONS.get(name)
    if (condition == "positive" and not value > 0) or (condition == "nonnegative" and not value >= 0):
        raise ValueError(
            f"schedule parameter {name} must be {condition}, got {value!r} ({SCHEDULE}: {SCHEDULE_DOC})"
        )
    return value


def _as_times(t, name):
    """``t`` (a number, or a 1-D tensor or sequence) as a 1-D float64 tensor, and whether it was a number."""
    if isinstance(t, bool):
        raise TypeError(f"{name} must be a number or a 1-D sequence of numbers, got bool")
    if isinstance(t, torch.Tensor):
        scalar = t.dim() == 0
        times = _float64(t.reshape(1) if scalar else t, name)
    else:
        scalar = not isinstance(t, (str, bytes)) and not hasattr(t, "__len__") and hasattr(t, "__float__")
        times = _float64([float(t)] if scalar else t, name)
    if not bool(torch.isfinite(times).all()):
        raise ValueError(f"{name} must be finite (found NaN or Inf)")
    return times, scalar


def _check_levels(times, alpha, sigma):
    """alpha and sigma of the requested times: real, and the noise level sigma / alpha non-increasing from the
    first timestep (noise) to the last (data). The message names the timesteps and the schedule's parameters."""
    bad = ~(torch.isfinite(alpha) & torch.isfinite(sigma) & (alpha >= 0) & (sigma >= 0))
    if bool(bad.any()):
        j = int(bad.nonzero()[0])
        raise ValueError(
            f"the schedule {SCHEDULE} gives alpha = {float(alpha[j]):.6g}, sigma = {float(sigma[j]):.6g} at "
            f"timesteps[{j}] = {float(times[j])!r} ({SCHEDULE_DOC})"
        )
    level = torch.where(alpha > 0, sigma / torch.where(alpha > 0, alpha, 1.0), math.inf)
    grows = level[1:] > level[:-1]
    if bool(grows.any()):
        j = int(grows.nonzero()[0])
        raise ValueError(
            f"timesteps must run from noise to data: the noise level sigma / alpha grows from timesteps[{j}] = "
            f"{float(times[j])!r} to timesteps[{j + 1}] = {float(times[j + 1])!r}"
        )


def family_table(alpha, sigma):
    """Per-step coefficients in the family's coordinates: x_{i+1} = A x_i + sum_j B_ij P_{i-j} + C z + M mu.

    Rows (A, B, C, M, final); a module with a corrector appends the step's correction in family coordinates
    (B times the normalized corrections; None where the step is not corrected):
    x^c_{i+1} = x^p_{i+1} + sum_j B d_ij P_{i+1-j}.
    """
    alpha = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1)
    sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
    if bool((alpha[1:] <= 0).any()) or bool((alpha < 0).any()):
        raise ValueError(
            "alpha must be positive after the first point (alpha = 0 only at the start, pure noise)"
        )
    pure_noise = bool(alpha[0] == 0)
    first = 1 if pure_noise else 0
    s = sigma[first:] / alpha[first:]
    ratios, stds, weights, finals = coefficient_table(s)
    corrections = _corrections(s, weights)
    a = alpha.tolist()
    g = sigma.tolist()
    rows = []
    if pure_noise:
        # the data form's limit of the update (printed); the noise form refuses (noise_start.py)
        step = _pure_noise_step(*(torch.tensor(v, dtype=torch.float64) for v in (g[0], a[1], g[1])))
        A, B, C, M = (float(v) for v in step)
        rows.append((A, (B,), C, M, g[1] == 0) + (() if corrections is None else (None,)))
    for i in range(len(ratios)):
        k = i + first
        coefficients = _family_coefficients(
            *(
                torch.tensor(v, dtype=torch.float64)
                for v in (a[k], a[k + 1], ratios[i], sum(weights[i]), stds[i])
            )
        )
        A, B, C, M = (float(v) for v in coefficients)
        row = (A, tuple(B * w for w in weights[i]), C, M, finals[i])
        if corrections is not None:
            row += (None if corrections[i] is None else tuple(B * d for d in corrections[i]),)
        rows.append(row)
    return rows


def _check_mu(mu, x):
    """The mean of a mean-reverting process: a number or a tensor broadcastable to x, on x's device."""
    if isinstance(mu, (int, float)) and not isinstance(mu, bool):
        mu = torch.full_like(x, float(mu))
    if not isinstance(mu, torch.Tensor):
        raise TypeError(
            f"mu must be a tensor broadcastable to x's shape {tuple(x.shape)}, got {type(mu).__name__}"
        )
    try:
        broadcast = torch.broadcast_shapes(mu.shape, x.shape) == x.shape
    except RuntimeError:
        broadcast = False
    if not broadcast:
        raise ValueError(f"mu of shape {tuple(mu.shape)} does not broadcast to x's shape {tuple(x.shape)}")
    return mu.to(device=x.device)


def _sample_native(
    model,
    x,
    times,
    alpha,
    sigma,
    mu,
    final_to_zero,
    extra_args,
    callback,
    noise_sampler,
    generator,
    check_finite,
):
    """sample_native's work once its times are read and its schedule evaluated (see sample_native)."""
    if not isinstance(final_to_zero, bool):
        raise TypeError(f"final_to_zero must be True or False, got {final_to_zero!r}")
    if times.numel() < (1 if final_to_zero else 2):
        raise ValueError(
            f"timesteps must hold at least {1 if final_to_zero else 2} times, got {times.numel()}"
        )
    _check_levels(times, alpha, sigma)
    _check_arguments(
        model, x, extra_args, callback, noise_sampler, generator, None, check_finite, times.numel()
    )
    extra_args = {} if extra_args is None else extra_args
    if MEAN_REVERTING:
        mu = _check_mu(mu, x)
    if final_to_zero:
        alpha = torch.cat([alpha, alpha.new_ones(1)])
        sigma = torch.cat([sigma, sigma.new_zeros(1)])
    rows = family_table(alpha, sigma)
    ratios = [row[0] for row in rows]
    weights = [row[1] for row in rows]
    stds = [row[2] for row in rows]
    offsets = [row[3] for row in rows]
    finals = [row[4] for row in rows]
    corrections = [row[5] for row in rows] if len(rows[0]) > 5 else None
    a = alpha.tolist()
    g = sigma.tolist()
    ones = x.new_ones([x.shape[0]])
    model_times = [times[i].to(x.device) * ones.to(times.dtype) for i in range(len(rows))]

    def predict(state, i):
        output = _check_output(
            model(state.to(x.dtype), model_times[i], **extra_args), x, i, g[i], "the model"
        )
        return to_prediction(state, output, a[i], g[i], mu if MEAN_REVERTING else 0.0)

    noise = _noise_function(noise_sampler, generator, x, sigma, g)
    report = None
    if callback is not None:

        def report(i, state, denoised):
            callback({"x": state, "i": i, "t": times[i], "sigma": g[i], "denoised": denoised})

    return _run(
        predict,
        x,
        len(rows),
        ratios,
        weights,
        stds,
        finals,
        noise,
        report,
        None,
        0,
        g,
        mu if MEAN_REVERTING else None,
        offsets,
        check_finite=check_finite,
        corrections=corrections,
    )

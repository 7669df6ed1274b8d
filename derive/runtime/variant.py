"""The published update of a variant module, step by step as published (inlined into the variant modules)."""

from __future__ import annotations

import math

import torch

from derive.runtime.contract import (
    _check_arguments,
    _check_output,
    _check_steps,
    _check_table,
    _compute_dtype,
    _float64,
    _noise_function,
    _noise_options,
    _progress_bar,
)
from derive.runtime.module import (
    _CORRECTORS,
    _STAGES,
    FORM,
    ORDER,
    _node_offset,
    _ratio,
    noise_variance,
    taylor_weights,
)

# ---- inlined into the generated modules below this line ----


def coefficient_table(sigmas):
    """(ratio, noise_std, weights, final) per step in float64, computed once before sampling.

    Per step i: y_{i+1} = ratio[i] y_i + sum_j weights[i][j] m_{i-j} + noise_std[i] z; ``final[i]`` marks a
    step to sigma = 0, which returns the data prediction.
    """
    return _tables(sigmas)[:4]


def _tables(sigmas):
    """The coefficient table and, per step, the corrector's weights of (mt, m_i, m_{i-1}, ...) where the
    variant has a corrector (None on final steps and without one)."""
    s = _float64(sigmas)
    if s.numel() < 2 or not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError("sigmas must hold at least two finite, non-negative noise levels")
    if not bool((s[1:] < s[:-1]).all()):
        raise ValueError(
            "sigmas must be strictly decreasing (the published multistep updates divide by steps)"
        )
    values = s.tolist()
    _check_steps(values)
    sigma, sigma_next = s[:-1], s[1:]
    final = sigma_next == 0
    safe_next = torch.where(final, sigma, sigma_next)
    ratio = _ratio(sigma, safe_next)
    noise_var = torch.clamp(noise_variance(sigma, safe_next), min=0.0)
    taylor = taylor_weights(sigma, safe_next)
    ratios, stds, weights, finals, corrections = [], [], [], [], []
    for i in range(len(sigma)):
        if final[i]:
            ratios.append(0.0)
            stds.append(0.0)
            weights.append((1.0,))
            finals.append(True)
            corrections.append(None)
            continue
        k = min(ORDER, i + 1)
        offsets = [float(_node_offset(s[i], s[i - j])) for j in range(1, k)]
        coefficients = [float(value[i]) for value in taylor]
        step = float(_node_offset(s[i], s[i + 1]))
        w = _STAGES[k](*coefficients, step, *offsets)
        ratios.append(float(ratio[i]))
        stds.append(math.sqrt(float(noise_var[i])))
        weights.append(tuple(float(value) for value in w) if k > 1 else (float(w),))
        finals.append(False)
        corrections.append(
            tuple(float(v) for v in _CORRECTORS[k](*coefficients, step, *offsets)) if _CORRECTORS else None
        )
    _check_table(ratios, stds, weights, values)
    return ratios, stds, weights, finals, corrections


@torch.no_grad()
def sample(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=None,
    s_noise=1.0,
    noise_sampler=None,
    *,
    generator=None,
    history=None,
    check_finite=False,
):
    """Sample from sigmas[0] to sigmas[-1] with the published update (k-diffusion / ComfyUI convention).

    model(x, sigma_batch, **extra_args) returns the denoised prediction x0. ``noise_sampler(sigma, sigma_next)``
    returns unit-variance noise shaped like x (default: normal noise from ``generator``). ``callback`` receives a
    dict with x, i, sigma, sigma_hat, denoised. The positional order is k-diffusion's (model, x, sigmas,
    extra_args, callback, disable, eta, s_noise, noise_sampler); ``disable=False`` shows a progress bar per step
    (tqdm, when it is installed). ``s_noise`` scales the injected noise, as in k-diffusion (a module without
    noise, phi = s, accepts only 1); ``eta``, k-diffusion's phi(s) = s**(1 + eta), is fixed by the published
    update: only None or the module's own value (0 for phi = s, 1 for phi = s**2) is accepted. ``history``
    (optional) is a list of m predictions (of the kind FORM names) at sigmas[0..m-1], oldest first, with ``x``
    the state at sigmas[m] (used to measure the order of the method itself, free of the lower-order start).
    ``generator`` may be a list of one torch.Generator per batch item. ``check_finite=True`` raises ValueError
    naming the step and sigma when the model returns NaN or Inf. fp16 / bf16 states are carried in float32 and
    returned in their own dtype. Every argument is checked before the first model call (ValueError / TypeError
    naming it); a step with sigma_next / sigma < MIN_STEP_RATIO, longer than the range the coefficients are
    verified over, is refused (a final step to sigma = 0 excepted), as is a step whose coefficients overflow
    float64. With a corrector, once the output mt at the predicted state y_{i+1} is known, y_{i+1} is recomputed
    from y_i with the corrector of the same history (mt is stored as is; the last predicted state is not
    corrected).
    """
    s_noise = _noise_options(eta, s_noise)
    ratios, stds, weights, finals, corrections = _tables(sigmas)
    _check_arguments(
        model, x, extra_args, callback, noise_sampler, generator, history, check_finite, len(ratios)
    )
    extra_args = {} if extra_args is None else extra_args
    stds = [std * s_noise for std in stds]
    s_in = x.new_ones([x.shape[0]])
    values = _float64(sigmas).tolist()
    model_sigmas = sigmas if isinstance(sigmas, torch.Tensor) else values
    dtype = x.dtype
    noise = _noise_function(noise_sampler, generator, x, sigmas, values)
    x = x.to(_compute_dtype(dtype))
    stored = [] if history is None else list(reversed(history))[:ORDER]
    last = None  # with a corrector: the state the last predictor started from
    start = 0 if history is None else len(history)
    bar = _progress_bar(disable, len(ratios) - start)
    for i in range(start, len(ratios)):
        if bar is not None:
            bar.update()
        output = model(x.to(dtype), model_sigmas[i] * s_in, **extra_args)
        denoised = _check_output(output, x, i, values[i], "the model")
        if check_finite and not bool(torch.isfinite(denoised).all()):
            raise ValueError(f"the model returned NaN or Inf at step {i} (sigma = {values[i]:.6g})")
        new = denoised if FORM == "data" else (x - denoised) / values[i]
        if last is not None:
            w = corrections[i - 1]
            x = last * ratios[i - 1] + new * w[0]
            for j, weight in enumerate(w[1:]):
                x = x + stored[j] * weight
        stored.insert(0, new)
        del stored[ORDER:]
        if callback is not None:
            callback(
                {"x": x.to(dtype), "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised}
            )
        if finals[i]:
            x = denoised
            continue
        if _CORRECTORS:
            last = x
        update = x * ratios[i]
        for j, weight in enumerate(weights[i]):
            update = update + stored[j] * weight
        if stds[i] > 0:
            update = update + noise(i) * stds[i]
        x = update
    if bar is not None:
        bar.close()
    return x.to(dtype)

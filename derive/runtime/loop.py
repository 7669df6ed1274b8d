"""The sampling loop and the k-diffusion / ComfyUI entry point of a solver module (inlined into every solver
module)."""

from __future__ import annotations

import torch

from derive.runtime.contract import (
    _check_arguments,
    _check_output,
    _compute_dtype,
    _float64,
    _noise_function,
    _noise_options,
    _progress_bar,
)
from derive.runtime.module import FORM, ORDER
from derive.runtime.predictor import _corrections
from derive.runtime.table import coefficient_table

# ---- inlined into the generated modules below this line ----


def _run(
    predict,
    x,
    n_steps,
    ratios,
    weights,
    stds,
    finals,
    noise,
    callback,
    history,
    start,
    levels,
    mu=None,
    offsets=None,
    check_finite=False,
    corrections=None,
):
    """The sampling loop: per step one prediction and one fixed linear combination (no coefficient math),
    formed in place: one new tensor and K + 1 passes over memory per step. With ``corrections`` (the pc
    method), step i - 1's correction is applied once the output at the predicted state is known."""
    dtype = x.dtype
    x = x.to(_compute_dtype(dtype))
    stored = [] if history is None else list(reversed(history))[:ORDER]
    keep = ORDER if corrections is None else ORDER + 1
    for i in range(start, n_steps):
        denoised, quantity = predict(x, i)
        if check_finite and not bool(torch.isfinite(denoised).all()):
            raise ValueError(f"the model returned NaN or Inf at step {i} (sigma = {levels[i]:.6g})")
        stored.insert(0, quantity)
        del stored[keep:]
        if callback is not None:
            callback(i, x.to(dtype), denoised)
        if corrections is not None and i > start and corrections[i - 1] is not None:
            # out of place: the callback may hold the predicted state
            x = torch.add(x, stored[0], alpha=corrections[i - 1][0])
            for j in range(1, len(corrections[i - 1])):
                x.add_(stored[j], alpha=corrections[i - 1][j])
        if finals[i]:
            x = denoised
            continue
        w = weights[i]
        update = torch.mul(x, ratios[i])
        for j in range(len(w)):
            update.add_(stored[j], alpha=w[j])
        if mu is not None and offsets[i] != 0:
            update.add_(mu, alpha=offsets[i])
        if stds[i] > 0:
            update.add_(noise(i), alpha=stds[i])
        x = update
    return x.to(dtype)


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
    """Sample by integrating the ER SDE from sigmas[0] to sigmas[-1] (k-diffusion / ComfyUI convention).

    model(x, sigma_batch, **extra_args) returns the denoised prediction x0; ``sigmas`` is decreasing, in
    normalized units, and may end in 0 (the last step then returns the prediction). ``noise_sampler(sigma,
    sigma_next)`` returns unit-variance noise shaped like x (default: normal noise from ``generator``, a
    torch.Generator or a list of one per batch item). ``callback`` receives a dict with x, i, sigma,
    sigma_hat, denoised. The positional order is k-diffusion's (model, x, sigmas, extra_args, callback, disable,
    eta, s_noise, noise_sampler). ``disable=False`` shows a progress bar per step (tqdm, when it is installed).
    ``s_noise`` scales the injected noise, as in k-diffusion; a module without noise (phi = s) accepts only 1.
    ``eta`` is k-diffusion's stochasticity, phi(s) = s**(1 + eta) (its DPM++ SDE samplers); here phi is fixed
    when the module is generated, so only None or the module's own value (0 for phi = s, 1 for phi = s**2) is
    accepted. With a corrector (METHOD "pc"), the callback's x is the predicted state (where the model was
    called), before its correction.

    ``history`` (optional) is a list of m predictions (of the kind FORM names: data or noise) at sigmas[0],
    ..., sigmas[m-1], oldest first; ``x`` is then the state at sigmas[m] and sampling starts there with a full
    multistep history (used to measure the order of the method itself, free of the lower-order start). With a
    corrector such a restart differs from the uninterrupted run, whose output at sigmas[m] was taken at the
    predicted state, not at the corrected one.

    ``check_finite=True`` raises ValueError naming the step and sigma when the model returns NaN or Inf (one
    host-device synchronisation per step, hence opt-in). fp16 / bf16 states are carried in float32 and
    returned in their own dtype.

    Every argument is checked before the first model call (ValueError / TypeError naming it). A step with
    sigma_next / sigma < MIN_STEP_RATIO, longer than the range the coefficients are verified over, is
    refused (a final step to sigma = 0 excepted), as is a step whose coefficients overflow float64.
    """
    s_noise = _noise_options(eta, s_noise)
    ratios, stds, weights, finals = coefficient_table(sigmas)
    _check_arguments(
        model, x, extra_args, callback, noise_sampler, generator, history, check_finite, len(ratios)
    )
    extra_args = {} if extra_args is None else extra_args
    stds = [std * s_noise for std in stds]
    s_in = x.new_ones([x.shape[0]])
    values = _float64(sigmas).tolist()
    # the model sees the caller's sigmas (a tensor keeps its dtype and device); sequences are read as float64
    model_sigmas = sigmas if isinstance(sigmas, torch.Tensor) else values
    start = 0 if history is None else len(history)
    bar = _progress_bar(disable, len(ratios) - start)

    def predict(y, i):
        if bar is not None:
            bar.update()
        output = model(y.to(x.dtype), model_sigmas[i] * s_in, **extra_args)
        denoised = _check_output(output, x, i, values[i], "the model")
        if FORM == "data":
            return denoised, denoised
        return denoised, (y - denoised) / values[i]

    noise = _noise_function(noise_sampler, generator, x, sigmas, values)
    report = None
    if callback is not None:

        def report(i, y, denoised):
            callback({"x": y, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})

    try:
        return _run(
            predict,
            x,
            len(ratios),
            ratios,
            weights,
            stds,
            finals,
            noise,
            report,
            history,
            start,
            values,
            check_finite=check_finite,
            corrections=_corrections(sigmas, weights),
        )
    finally:
        if bar is not None:
            bar.close()

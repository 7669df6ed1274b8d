"""The runtime contract: argument checks before the first model call, checks of what the model and the noise
sampler return at each step, the refusal of unverified steps and non-finite coefficients, the default noise.
Inlined into every generated module."""

from __future__ import annotations

import math

import torch

from derive.runtime.module import CHECKED_SIGMAS, MIN_STEP_RATIO, SPEC

# ---- inlined into the generated modules below this line ----


def _float64(values, name="sigmas"):
    """A 1-D float64 CPU copy of a tensor or sequence of real numbers (Python lists are read as float64, not
    torch's default float32); TypeError / ValueError naming ``name`` for anything else."""
    if isinstance(values, torch.Tensor):
        tensor = values.detach()
    elif isinstance(values, (str, bytes, dict, set)) or not hasattr(values, "__len__"):
        raise TypeError(f"{name} must be a 1-D tensor or a sequence of numbers, got {type(values).__name__}")
    else:
        try:
            tensor = torch.tensor(values, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{name} must be a 1-D sequence of real numbers ({error})") from None
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"{name} must hold real numbers, got {tensor.dtype}")
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(tensor.shape)}")
    return tensor.to(device="cpu", dtype=torch.float64)


def _real(value, name):
    """``value`` as a finite Python float (a number or a one-element tensor); TypeError / ValueError naming it."""
    if isinstance(value, (bool, str, bytes, complex)) or (
        isinstance(value, torch.Tensor) and value.numel() != 1
    ):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        value = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _check_arguments(
    model, x, extra_args, callback, noise_sampler, generator, history, check_finite, n_steps
):
    """Everything sample() can check before the first model call: one error naming the argument."""
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError(
            "x must have a batch dimension first (got a 0-d tensor); pass x[None] for one sample"
        )
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype} (convert it with x.float())")
    if extra_args is not None and not (hasattr(extra_args, "keys") and hasattr(extra_args, "__getitem__")):
        raise TypeError(
            f"extra_args must be a dict of keyword arguments for the model, got {type(extra_args).__name__}"
        )
    for name, value in (("callback", callback), ("noise_sampler", noise_sampler)):
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be True or False, got {check_finite!r}")
    _check_generator(generator, x)
    if history is not None:
        if not isinstance(history, (list, tuple)):
            raise TypeError(f"history must be a list of tensors shaped like x, got {type(history).__name__}")
        if len(history) > n_steps:
            raise ValueError(
                f"history holds {len(history)} predictions, more than the {n_steps} steps of sigmas"
            )
        for j, item in enumerate(history):
            if not isinstance(item, torch.Tensor) or item.shape != x.shape:
                shape = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
                raise ValueError(
                    f"history[{j}] must be a tensor shaped like x, {tuple(x.shape)}; got {shape}"
                )


def _check_generator(generator, x):
    """None, one torch.Generator, or a list of one per batch item, on x's device type."""
    if generator is None:
        return
    items = list(generator) if isinstance(generator, (list, tuple)) else [generator]
    if isinstance(generator, (list, tuple)) and len(items) != x.shape[0]:
        raise ValueError(f"got {len(items)} generators for a batch of {x.shape[0]}: pass one per batch item")
    for item in items:
        if not isinstance(item, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or a list of one per batch item, got {type(item).__name__}"
            )
        if item.device.type != x.device.type:
            raise ValueError(f"generator is on {item.device.type} but x is on {x.device.type}")


def _check_output(value, x, i, level, source):
    """What the model or the noise sampler returned at step i must be a tensor of x's shape on x's device."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{source} returned {type(value).__name__} at step {i} (sigma = {level:.6g}); "
            f"expected a tensor shaped like x, {tuple(x.shape)}"
        )
    if value.shape != x.shape:
        raise ValueError(
            f"{source} returned shape {tuple(value.shape)} at step {i} (sigma = {level:.6g}); "
            f"expected the state's shape {tuple(x.shape)}"
        )
    if value.device != x.device:
        raise ValueError(f"{source} returned a tensor on {value.device} at step {i}; x is on {x.device}")
    return value


def _check_table(ratios, stds, weights, values):
    """Every coefficient of the schedule must be finite: a step where they are not is refused, with its range."""
    for i in range(len(ratios)):
        if not all(math.isfinite(v) for v in (ratios[i], stds[i], *weights[i])):
            raise ValueError(
                f"the coefficients of step {i} (sigma {values[i]:.6g} -> {values[i + 1]:.6g}) are not finite "
                f"in float64 (phi(s) = {SPEC.get('phi')} overflows there); this module's coefficients are verified "
                f"for sigma in [{CHECKED_SIGMAS[0]:g}, {CHECKED_SIGMAS[1]:g}]"
            )


def _check_steps(values):
    """Steps longer than the verified range (sigma_next / sigma below MIN_STEP_RATIO) are refused."""
    for i in range(len(values) - 1):
        if values[i + 1] > 0 and values[i + 1] < MIN_STEP_RATIO * values[i]:
            raise ValueError(
                f"step {i} (sigma {values[i]:.6g} -> {values[i + 1]:.6g}) is longer than this module's coefficients "
                f"are verified for (sigma_next / sigma >= {MIN_STEP_RATIO:g}, a log-step of at most "
                f"{-math.log(MIN_STEP_RATIO):.4g}); insert intermediate noise levels"
            )


def _default_noise(x, generator):
    """Unit normal noise shaped like x, from one generator or one per batch item."""
    if isinstance(generator, (list, tuple)):
        if not generator:
            return x.new_empty(x.shape)
        return torch.stack(
            [torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=x.device) for g in generator]
        )
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _compute_dtype(dtype):
    """fp16 / bf16 states are carried in float32 (rounding the state to 8 or 11 bits every step accumulates
    over long schedules); the model still sees, and the result comes back in, the caller's dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_sigmas(s):
    """A solver module's noise levels: at least two, finite, non-negative, non-increasing, only the last zero."""
    if s.numel() < 2:
        raise ValueError("sigmas must hold at least two noise levels")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("sigmas must be finite (found NaN or Inf)")
    if bool((s < 0).any()):
        raise ValueError("sigmas must be non-negative")
    if bool((s[1:] > s[:-1]).any()):
        raise ValueError("sigmas must be non-increasing")
    if bool((s[:-1] == 0).any()):
        raise ValueError("only the last sigma may be zero")


def _noise_options(eta, s_noise):
    """k-diffusion's ``eta`` and ``s_noise`` checked against the module: returns s_noise as a float.

    ``eta`` (phi(s) = s**(1 + eta)) is fixed when the module is generated, so only None or the module's own value
    is accepted; ``s_noise`` must be a finite number >= 0, and exactly 1 for a module that injects no noise."""
    phi = SPEC.get("phi")
    if eta is not None and eta != {"s": 0.0, "s**2": 1.0}.get(phi):
        raise ValueError(
            f"eta={eta!r} is not this module's: phi(s) = {phi} fixes its noise "
            "(k-diffusion's eta = 0 is phi = s, 1 is s**2)"
        )
    s_noise = _real(s_noise, "s_noise")
    if s_noise < 0:
        raise ValueError(f"s_noise must be >= 0, got {s_noise!r}")
    if s_noise != 1.0 and phi == "s":
        raise ValueError(
            f"s_noise={s_noise!r} would change nothing: this module (phi(s) = s) injects no noise"
        )
    return s_noise


def _progress_bar(disable, total):
    """A tqdm bar of ``total`` steps when ``disable is False`` and tqdm is installed, else None."""
    if disable is not False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total)


def _noise_function(noise_sampler, generator, x, levels, values):
    """noise(i): the noise of step i, from ``noise_sampler(levels[i], levels[i + 1])`` (checked) or the default."""

    def noise(i):
        if noise_sampler is not None:
            return _check_output(noise_sampler(levels[i], levels[i + 1]), x, i, values[i], "noise_sampler")
        return _default_noise(x, generator)

    return noise

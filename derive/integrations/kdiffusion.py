"""The k-diffusion / ComfyUI convention: sampler functions and Brownian-tree noise.

A k-diffusion sampler is ``sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=...,
s_noise=..., noise_sampler=None)``: ``model(x, sigma_batch, **extra_args)`` returns the data prediction (a
denoiser), ``sigmas`` decrease (usually to 0) and ``noise_sampler(sigma, sigma_next)`` returns unit-variance
noise for the step. Every generated module's ``sample`` has this signature (positional order included);
:func:`wrap_sampler` adds ComfyUI's seeded default noise and flow models (sigmas = t, x = (1 - t) x0 + t eps).

ComfyUI wraps such functions in ``comfy.samplers.KSAMPLER`` and calls them as
``sampler(model_k, noise, sigmas, extra_args=..., callback=..., disable=..., **extra_options)``;
``examples/comfyui_derive/`` is a custom node package that registers generated modules as KSAMPLER entries
(the ``KSampler`` node's list and a ``SAMPLER`` node for ``SamplerCustom``). See ``docs/comfyui.md``.
"""

from __future__ import annotations

import math

import torch

from derive.integrations import correction_table, load_module, module_id, step_table

__all__ = ["BrownianTreeNoiseSampler", "default_noise_sampler", "wrap_sampler"]


def _torchsde():
    try:
        import torchsde
    except ImportError:
        raise ImportError(
            "BrownianTreeNoiseSampler needs torchsde: pip install torchsde (or pip install 'derive[kdiffusion]')"
        ) from None
    return torchsde


class _BatchedBrownianTree:
    """One torchsde BrownianTree per seed (per batch item when given a list of seeds), queried on sorted times."""

    def __init__(self, x, t0, t1, seed=None, cpu=True):
        torchsde = _torchsde()
        t0, t1, self.sign = self._sort(t0, t1)
        self.cpu = cpu
        if seed is None:
            seed = torch.randint(0, 2**63 - 1, []).item()
        self.batched = isinstance(seed, (list, tuple))
        seeds = list(seed) if self.batched else [seed]
        if self.batched and len(seeds) != x.shape[0]:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {x.shape[0]}")
        shape = x.shape[1:] if self.batched else x.shape
        w0 = torch.zeros(shape, dtype=x.dtype, device="cpu" if cpu else x.device)
        self.device = x.device
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in seeds]

    @staticmethod
    def _sort(a, b):
        return (a, b, 1) if a < b else (b, a, -1)

    def __call__(self, t0, t1):
        t0, t1, sign = self._sort(t0, t1)
        w = torch.stack([tree(t0, t1) for tree in self.trees]) * (self.sign * sign)
        w = w if self.batched else w[0]
        return w.to(self.device)


class BrownianTreeNoiseSampler:
    """Unit-variance noise for an interval (sigma, sigma_next), from one Brownian path fixed by ``seed``.

    ``noise(sigma, sigma_next) = (W(t(sigma_next)) - W(t(sigma))) / sqrt(|t(sigma_next) - t(sigma)|)`` with
    ``t = transform(sigma)``, as k-diffusion's: the path does not depend on how the interval is split, so
    ``sqrt(|c - a|) noise(a, c) = sqrt(|b - a|) noise(a, b) + sqrt(|c - b|) noise(b, c)`` (times
    transformed), and a sampler run with more steps sees the same Brownian motion. ``seed`` is an int or a list
    of one int per batch item; ``cpu`` builds the trees on the CPU (the noise is moved to ``x``'s device).
    Needs torchsde, imported on construction.
    """

    def __init__(self, x, sigma_min, sigma_max, seed=None, transform=lambda sigma: sigma, cpu=True):
        self.transform = transform
        t0 = self._time(sigma_min)
        t1 = self._time(sigma_max)
        self.tree = _BatchedBrownianTree(x, t0, t1, seed, cpu=cpu)

    def _time(self, sigma):
        return float(self.transform(torch.as_tensor(sigma, dtype=torch.float64)))

    def __call__(self, sigma, sigma_next):
        t0, t1 = self._time(sigma), self._time(sigma_next)
        return self.tree(t0, t1) / math.sqrt(abs(t1 - t0))


def default_noise_sampler(x, seed=None):
    """Normal noise shaped like ``x``; seeded (a fresh generator) when ``seed`` is given, as ComfyUI's."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(int(seed))

    def noise(sigma, sigma_next):
        return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)

    return noise


def _module_eta(module):
    """k-diffusion's eta of a module (its phi(s) = s**(1 + eta)): 0 for phi = s, 1 for phi = s**2, else None."""
    phi = getattr(module, "SPEC", {}).get("phi")
    return {"s": 0.0, "s**2": 1.0}.get(phi)


def _check_noise_options(module, eta, s_noise):
    """eta and s_noise with their k-diffusion meaning for ``module``, or ValueError naming the argument."""
    phi = getattr(module, "SPEC", {}).get("phi")
    if eta is not None and (_module_eta(module) is None or float(eta) != _module_eta(module)):
        raise ValueError(
            f"eta={eta!r}: {module_id(module)} has fixed stochasticity (phi(s) = {phi}; k-diffusion's eta = 0 is "
            "phi = s, eta = 1 is phi = s**2); generate a module with another --phi instead of passing eta"
        )
    if s_noise is not None and float(s_noise) != 1.0 and phi == "s":
        raise ValueError(
            f"s_noise={s_noise!r} would change nothing: {module_id(module)} (phi(s) = s) injects no noise"
        )


def wrap_sampler(module, s_noise=1.0, eta=None, flow=False, schedule=None):
    """A k-diffusion sampler function ``(model, x, sigmas, extra_args=None, callback=None, disable=None,
    eta=None, s_noise=None, noise_sampler=None)`` running ``module`` (a module object, name or path).

    - ``s_noise`` multiplies the injected noise, as in k-diffusion (SDE modules; an ODE module, phi = s,
      accepts only 1). A value passed to the returned function (ComfyUI's ``extra_options``) replaces it.
    - ``eta``: k-diffusion's stochasticity, phi(s) = s**(1 + eta); a module's phi is fixed when it is
      generated (``derive gen --phi``), so only None or the module's own value (0 for phi = s, 1 for
      phi = s**2) is accepted, here or at call time.
    - ``flow``: the model is a flow-matching denoiser in ComfyUI's CONST convention (SD3 / Flux): ``sigmas`` are
      times t in [0, 1] and x = (1 - t) x0 + t eps; the steps are then taken in those coordinates (a first
      step from t = 1, pure noise, included). Otherwise x and sigmas are the variance-exploding / normalized
      coordinates of k-diffusion (x = x0 + sigma eps) and the module's own ``sample`` runs.

    - ``schedule="default"`` replaces the caller's ``sigmas`` by the module's derived schedule
      (:func:`derive.schedules.default`) over the same range and with the same number of model calls (a trailing
      0 is kept: the derived levels then end at the last positive sigma). ``None`` runs the caller's sigmas; a
      schedule from :func:`derive.schedules.tune` is simply passed as ``sigmas``. Not with ``flow``.

    Without a ``noise_sampler`` the noise is normal, from a generator seeded with ``extra_args["seed"]`` when
    present (ComfyUI) and from torch's global generator otherwise. ``disable=False`` shows a per-step progress
    bar (tqdm, when installed), as k-diffusion's samplers.
    """
    module = load_module(module)
    _check_noise_options(module, eta, s_noise)
    if schedule not in (None, "default"):
        raise ValueError(f"schedule must be None or 'default' (got {schedule!r})")
    if schedule is not None and flow:
        raise ValueError("schedule='default' takes normalized sigmas; it does not apply with flow=True")
    default_s_noise = 1.0 if s_noise is None else float(s_noise)

    def sampler(
        model,
        x,
        sigmas,
        extra_args=None,
        callback=None,
        disable=None,
        eta=None,
        s_noise=None,
        noise_sampler=None,
    ):
        _check_noise_options(module, eta, s_noise)
        scale = default_s_noise if s_noise is None else float(s_noise)
        extra_args = {} if extra_args is None else extra_args
        base = (
            noise_sampler if noise_sampler is not None else default_noise_sampler(x, extra_args.get("seed"))
        )
        if schedule == "default":
            sigmas = _derived_sigmas(module, sigmas)
        if not flow:
            return module.sample(model, x, sigmas, extra_args, callback, disable, None, scale, base)

        def scaled(sigma, sigma_next):
            return base(sigma, sigma_next) * scale

        return _sample_flow(module, model, x, sigmas, extra_args, callback, scaled, disable)

    sampler.__name__ = f"sample_{module_id(module).rsplit('/', 1)[-1].removesuffix('.py')}"
    sampler.__doc__ = f"k-diffusion sampler over {module_id(module)} (s_noise={s_noise}, flow={flow})."
    return sampler


def _derived_sigmas(module, sigmas):
    """The derived schedule with the caller's range and number of model calls (trailing 0 kept)."""
    from derive.schedules import default

    s = torch.as_tensor(sigmas).detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    zero = len(s) > 2 and float(s[-1]) == 0.0
    positive = s[:-1] if zero else s
    out = default(module, nfe=len(positive) - 1, sigma_max=float(positive[0]), sigma_min=float(positive[-1]))
    return torch.cat([out, out.new_zeros(1)]) if zero else out


def _progress(total, disable):
    """A tqdm bar when ``disable`` is False and tqdm is installed, else None."""
    if disable is not False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total)


@torch.no_grad()
def _sample_flow(module, model, x, sigmas, extra_args, callback, noise, disable=None):
    """Steps in flow coordinates (alpha = 1 - t, sigma = t) with a denoiser model(x, t), corrector included."""
    t = torch.as_tensor(sigmas).detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    rows = step_table(module, 1.0 - t, t)
    corrections = correction_table(module, 1.0 - t, t)
    keep = module.ORDER + (0 if corrections is None else 1)
    values = t.tolist()
    s_in = x.new_ones([x.shape[0]])
    history = []
    last = None
    bar = _progress(len(rows), disable)
    try:
        for i, (A, B, C, M, final) in enumerate(rows):
            if bar is not None:
                bar.update()
            denoised = model(x, sigmas[i] * s_in, **extra_args)
            if callback is not None:
                callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
            if final:
                x = denoised
                continue
            if module.FORM == "data":
                history.insert(0, denoised)
            else:
                history.insert(0, (x - (1.0 - values[i]) * denoised) / values[i])
            del history[keep:]
            if corrections is not None:
                if i > 0 and corrections[i - 1] is not None:
                    a_last, a_new, weights = corrections[i - 1]
                    corrected = last * a_last + x * a_new
                    for j, weight in enumerate(weights):
                        corrected = corrected + history[j] * weight
                    x = corrected
                last = x
            update = x * A
            for j, weight in enumerate(B):
                update = update + history[j] * weight
            if C > 0:
                update = update + noise(sigmas[i], sigmas[i + 1]) * C
            x = update
    finally:
        if bar is not None:
            bar.close()
    return x

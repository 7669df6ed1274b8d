"""The k-diffusion / ComfyUI convention: sampler functions and Brownian-tree noise.

A k-diffusion sampler is ``sampler(model, x, sigmas, extra_args=None, callback=None, disable=None,
noise_sampler=None)``: ``model(x, sigma_batch, **extra_args)`` returns the data prediction (a denoiser),
``sigmas`` decrease (usually to 0) and ``noise_sampler(sigma, sigma_next)`` returns unit-variance noise for the
step. Every generated module's ``sample`` already has this signature; :func:`wrap_sampler` adds the ``s_noise``
scale, ComfyUI's seeded default noise, and flow models (sigmas = t, x = (1 - t) x0 + t eps).

Registering a generated sampler in ComfyUI
------------------------------------------

ComfyUI wraps sampler functions of this signature in ``comfy.samplers.KSAMPLER``; a custom node returning it as a
``SAMPLER`` plugs into ``SamplerCustom`` / ``SamplerCustomAdvanced``. A file in ``ComfyUI/custom_nodes/``::

    import comfy.samplers
    from derive.integrations import load_module
    from derive.integrations.kdiffusion import wrap_sampler

    class DeriveSampler:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {
                "module": (["ersde_order3", "ersde_order2_phi_ode", "ersde_order2_phi_sde"],),
                "s_noise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01}),
                "flow": ("BOOLEAN", {"default": False}),   # True for SD3 / Flux (ComfyUI's CONST sampling)
            }}

        RETURN_TYPES = ("SAMPLER",)
        FUNCTION = "get_sampler"
        CATEGORY = "sampling/custom_sampling/samplers"

        def get_sampler(self, module, s_noise, flow):
            function = wrap_sampler(load_module(module), s_noise=s_noise, flow=flow)
            return (comfy.samplers.KSAMPLER(function),)

    NODE_CLASS_MAPPINGS = {"DeriveSampler": DeriveSampler}

ComfyUI passes ``extra_args`` with a ``"seed"``; the default noise is then ``torch.randn`` from a generator
seeded with it, as ComfyUI's own samplers do. For the ``KSampler`` node's dropdown instead, set the function as
``comfy.k_diffusion.sampling.sample_<name>`` and append ``<name>`` to ``comfy.samplers.KSampler.SAMPLERS`` (and
``comfy.samplers.KSAMPLER_NAMES``) before the node list is built. See ``docs/comfyui.md``.
"""

from __future__ import annotations

import math

import torch

from derive.integrations import load_module, module_id, step_table

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
    phi = getattr(module, "SPEC", {}).get("phi")
    return {"s": 0.0, "s**2": 1.0}.get(phi)


def wrap_sampler(module, s_noise=1.0, eta=None, flow=False):
    """A k-diffusion sampler function ``(model, x, sigmas, extra_args=None, callback=None, disable=None,
    noise_sampler=None)`` running ``module`` (a module object, name or path).

    - ``s_noise`` multiplies the injected noise (SDE modules; ODE modules inject none).
    - ``eta``: accepted for k-diffusion's signature; a module's stochasticity is fixed by its phi when it is
      generated (``derive gen --phi``), so only None or the module's own value (0 for phi = s, 1 for phi = s^2)
      is accepted.
    - ``flow``: the model is a flow-matching denoiser in ComfyUI's CONST convention (SD3 / Flux): ``sigmas`` are
      times t in [0, 1] and x = (1 - t) x0 + t eps; the steps are then taken in those coordinates (a first
      step from t = 1, pure noise, included). Otherwise x and sigmas are the variance-exploding / normalized
      coordinates of k-diffusion (x = x0 + sigma eps) and the module's own ``sample`` runs.

    Without a ``noise_sampler`` the noise is normal, from a generator seeded with ``extra_args["seed"]`` when
    present (ComfyUI) and from torch's global generator otherwise.
    """
    module = load_module(module)
    own_eta = _module_eta(module)
    if eta is not None and (own_eta is None or float(eta) != own_eta):
        raise ValueError(
            f"{module_id(module)} has fixed stochasticity (phi = {getattr(module, 'SPEC', {}).get('phi')}); "
            "generate a module with another --phi instead of passing eta"
        )

    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
        extra_args = {} if extra_args is None else extra_args
        base = (
            noise_sampler if noise_sampler is not None else default_noise_sampler(x, extra_args.get("seed"))
        )

        def scaled(sigma, sigma_next):
            return base(sigma, sigma_next) * s_noise

        if not flow:
            return module.sample(
                model,
                x,
                sigmas,
                extra_args=extra_args,
                callback=callback,
                disable=disable,
                noise_sampler=scaled,
            )
        return _sample_flow(module, model, x, sigmas, extra_args, callback, scaled)

    sampler.__name__ = f"sample_{module_id(module).rsplit('/', 1)[-1].removesuffix('.py')}"
    sampler.__doc__ = f"k-diffusion sampler over {module_id(module)} (s_noise={s_noise}, flow={flow})."
    return sampler


@torch.no_grad()
def _sample_flow(module, model, x, sigmas, extra_args, callback, noise):
    """Steps in flow coordinates (alpha = 1 - t, sigma = t) with a denoiser model(x, t)."""
    t = torch.as_tensor(sigmas).detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    rows = step_table(module, 1.0 - t, t)
    values = t.tolist()
    s_in = x.new_ones([x.shape[0]])
    history = []
    for i, (A, B, C, M, final) in enumerate(rows):
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
        del history[module.ORDER :]
        update = x * A
        for j, weight in enumerate(B):
            update = update + history[j] * weight
        if C > 0:
            update = update + noise(sigmas[i], sigmas[i + 1]) * C
        x = update
    return x

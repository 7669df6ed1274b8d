"""The ComfyUI custom node example (examples/comfyui_derive) against a stand-in of ComfyUI's calling convention.

The stand-in reproduces what ComfyUI does around a sampler function (comfy/samplers.py, comfy/model_sampling.py):
``ksampler(name)`` looks ``sample_<name>`` up in ``comfy.k_diffusion.sampling``; ``KSAMPLER.sample`` scales the
initial noise with the model's ``noise_scaling`` (EPS: x = latent + sigma noise, or sqrt(1 + sigma^2) noise at the
largest sigma; CONST, flow models: x = sigma noise + (1 - sigma) latent), passes a model that takes
``(x, sigma, **extra_args)`` with extra_args holding ``seed``, ``model_options`` and ``denoise_mask``, maps the
k-diffusion callback dict to ``callback(i, denoised, x, total_steps)``, calls
``function(model_k, x, sigmas, extra_args=..., callback=..., disable=..., **extra_options)`` and undoes the
scaling with ``inverse_noise_scaling``. References are computed independently: the module's own sample() and, for
flow models, an Euler loop in flow coordinates.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys
import types

import pytest
import torch

from derive.integrations import load_module
from derive.integrations.kdiffusion import default_noise_sampler

ROOT = pathlib.Path(__file__).resolve().parent.parent


class EPS:
    sigma_max = 14.6

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        scale = torch.sqrt(1.0 + sigma**2.0) if max_denoise else sigma
        return noise * scale + latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class CONST:
    sigma_max = 1.0

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return sigma * noise + (1.0 - sigma) * latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent / (1.0 - sigma)


def build_comfy():
    """comfy, comfy.samplers, comfy.k_diffusion.sampling and comfy.model_sampling as ComfyUI lays them out."""
    comfy = types.ModuleType("comfy")
    samplers = types.ModuleType("comfy.samplers")
    k_diffusion = types.ModuleType("comfy.k_diffusion")
    sampling = types.ModuleType("comfy.k_diffusion.sampling")
    model_sampling = types.ModuleType("comfy.model_sampling")
    model_sampling.EPS, model_sampling.CONST = EPS, CONST
    comfy.samplers, comfy.k_diffusion, comfy.model_sampling = samplers, k_diffusion, model_sampling
    k_diffusion.sampling = sampling

    class KSamplerX0Inpaint:
        def __init__(self, model, sigmas):
            self.inner_model = model
            self.sigmas = sigmas

        def __call__(self, x, sigma, denoise_mask=None, model_options=None, seed=None):
            return self.inner_model(x, sigma, model_options=model_options, seed=seed)

    class Sampler:
        def max_denoise(self, model_wrap, sigmas):
            max_sigma = float(model_wrap.inner_model.model_sampling.sigma_max)
            sigma = float(sigmas[0])
            return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma

    class KSAMPLER(Sampler):
        def __init__(self, sampler_function, extra_options=None, inpaint_options=None):
            self.sampler_function = sampler_function
            self.extra_options = {} if extra_options is None else extra_options
            self.inpaint_options = {} if inpaint_options is None else inpaint_options

        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                   disable_pbar=False):  # fmt: skip
            extra_args["denoise_mask"] = denoise_mask
            model_k = KSamplerX0Inpaint(model_wrap, sigmas)
            model_k.latent_image, model_k.noise = latent_image, noise
            ms = model_wrap.inner_model.model_sampling
            noise = ms.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
            total_steps = len(sigmas) - 1
            k_callback = None
            if callback is not None:

                def k_callback(x):
                    callback(x["i"], x["denoised"], x["x"], total_steps)

            samples = self.sampler_function(model_k, noise, sigmas, extra_args=extra_args, callback=k_callback,
                                            disable=disable_pbar, **self.extra_options)  # fmt: skip
            return ms.inverse_noise_scaling(sigmas[-1], samples)

    def ksampler(sampler_name, extra_options=None, inpaint_options=None):
        function = getattr(sampling, f"sample_{sampler_name}")
        return KSAMPLER(function, extra_options, inpaint_options)

    samplers.KSAMPLER, samplers.ksampler, samplers.KSamplerX0Inpaint = KSAMPLER, ksampler, KSamplerX0Inpaint
    samplers.KSAMPLER_NAMES = ["euler", "dpmpp_2m"]
    samplers.SAMPLER_NAMES = samplers.KSAMPLER_NAMES + ["ddim", "uni_pc"]
    samplers.KSampler = type("KSampler", (), {"SAMPLERS": samplers.SAMPLER_NAMES})
    return {
        "comfy": comfy,
        "comfy.samplers": samplers,
        "comfy.k_diffusion": k_diffusion,
        "comfy.k_diffusion.sampling": sampling,
        "comfy.model_sampling": model_sampling,
    }


class ModelPatcher:
    def __init__(self, sampling):
        self.sampling = sampling

    def get_model_object(self, name):
        assert name == "model_sampling"
        return self.sampling


class InnerModel:
    """ComfyUI's wrapped model: a denoiser with model_sampling and model_patcher (what samplers inspect)."""

    def __init__(self, sampling, denoise):
        self.model_sampling = sampling
        self.model_patcher = ModelPatcher(sampling)
        self.denoise = denoise
        self.seen = []

    def __call__(self, x, sigma, model_options=None, seed=None):
        self.seen.append((float(sigma[0]), seed))
        return self.denoise(x, sigma)


class ModelWrap:  # CFGGuider-like: KSAMPLER reads inner_model.model_sampling, samplers model_patcher
    def __init__(self, inner):
        self.inner_model = inner
        self.model_patcher = inner.model_patcher

    def __call__(self, x, sigma, **kwargs):
        return self.inner_model(x, sigma, **kwargs)


@pytest.fixture
def example(monkeypatch):
    for name, module in build_comfy().items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location(
        "comfyui_derive", ROOT / "examples" / "comfyui_derive" / "__init__.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ve_denoiser(x, sigma):
    """The exact x0 of standard normal data in x = x0 + sigma eps, plus a smooth nonlinear term."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return x / (1 + s**2) + 0.05 * torch.tanh(x)


SIGMAS = torch.tensor([14.6, 6.0, 2.5, 1.0, 0.4, 0.1, 0.0], dtype=torch.float64)


def test_register_lists_the_samplers(example):
    import comfy.samplers

    for name in example.SAMPLERS:
        assert name in comfy.samplers.KSAMPLER_NAMES and name in comfy.samplers.KSampler.SAMPLERS
        assert comfy.samplers.KSAMPLER_NAMES.count(name) == 1
    example.register()  # idempotent
    assert comfy.samplers.KSampler.SAMPLERS.count("derive_ersde_3") == 1
    assert set(example.NODE_CLASS_MAPPINGS) == {"DeriveSampler"}


@pytest.mark.parametrize("name", ["derive_ersde_3", "derive_ersde_2_ode", "derive_ersde_2_sde"])
def test_ksampler_entry_runs_the_module(example, name):
    """An EPS model through ComfyUI's KSAMPLER equals the module's own sample() with ComfyUI's seeded noise."""
    import comfy.samplers

    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    inner = InnerModel(EPS(), ve_denoiser)
    steps = []
    result = comfy.samplers.ksampler(name).sample(
        ModelWrap(inner),
        SIGMAS,
        {"seed": 7, "model_options": {}},
        lambda i, denoised, x, total: steps.append((i, total)),
        noise,
        latent_image=torch.zeros_like(noise),
    )
    assert steps == [(i, len(SIGMAS) - 1) for i in range(len(SIGMAS) - 1)]
    assert all(seed == 7 for _, seed in inner.seen)
    module = load_module(example.SAMPLERS[name])
    x = noise * math.sqrt(1 + 14.6**2)  # max_denoise: sigma[0] is the model's sigma_max
    expected = module.sample(ve_denoiser, x, SIGMAS, noise_sampler=default_noise_sampler(x, 7))
    assert float((result - expected).abs().max()) < 1e-12


def test_sampler_node_passes_s_noise(example):
    """The SAMPLER node's s_noise reaches the function through KSAMPLER's extra_options (k-diffusion's meaning)."""
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    node = example.NODE_CLASS_MAPPINGS["DeriveSampler"]()
    assert "ersde_order2_phi_sde" in node.INPUT_TYPES()["required"]["module"][0]
    results = {}
    for s_noise in (0.0, 0.5, 1.0):
        (sampler,) = node.get_sampler("ersde_order2_phi_sde", s_noise)
        results[s_noise] = sampler.sample(
            ModelWrap(InnerModel(EPS(), ve_denoiser)),
            SIGMAS,
            {"seed": 3},
            None,
            noise,
            torch.zeros_like(noise),
        )
    module = load_module("ersde_order2_phi_sde")
    x = noise * math.sqrt(1 + 14.6**2)
    half = module.sample(ve_denoiser, x, SIGMAS, s_noise=0.5, noise_sampler=default_noise_sampler(x, 3))
    assert float((results[0.5] - half).abs().max()) < 1e-12
    assert float((results[1.0] - results[0.0]).abs().max()) > 1e-3
    (ode,) = node.get_sampler("ersde_order2_phi_ode", 0.5)
    with pytest.raises(ValueError, match="s_noise"):
        ode.sample(ModelWrap(InnerModel(EPS(), ve_denoiser)), SIGMAS, {"seed": 3}, None, noise, noise * 0)


def test_flow_model_in_const_coordinates(example):
    """A CONST (flow) model: the order-1 flow module is the Euler method in x = (1 - t) x0 + t eps, started from
    pure noise at t = 1; ComfyUI's inverse_noise_scaling at t = 0 leaves the result as is."""
    import comfy.samplers

    example.register({"derive_flow_1": "flow_order1_ode"})
    times = torch.tensor([1.0, 0.75, 0.5, 0.3, 0.1, 0.0], dtype=torch.float64)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def velocity(x, t):
        return torch.tanh(x) * (1 + t.reshape(-1, 1, 1, 1))

    def denoiser(x, t):  # x0 = x - t v
        return x - t.reshape(-1, 1, 1, 1) * velocity(x, t)

    latent = torch.zeros_like(noise)
    result = comfy.samplers.ksampler("derive_flow_1").sample(
        ModelWrap(InnerModel(CONST(), denoiser)), times, {"seed": 0}, None, noise, latent
    )
    euler = noise.clone()
    for i in range(len(times) - 1):
        euler = euler + (times[i + 1] - times[i]) * velocity(euler, times[i : i + 1])
    assert float((result - euler).abs().max() / euler.abs().max()) < 1e-12
    assert not example.is_flow_model(ModelWrap(InnerModel(EPS(), denoiser)))

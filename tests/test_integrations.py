"""The ecosystem integrations: the diffusers scheduler, the k-diffusion / ComfyUI helpers, docs and examples.

Parity with diffusers is measured in float64 with diffusers' float32 tables (alphas_cumprod) replaced by the
same float64 ones: diffusers keeps them in float32, which alone makes trajectories differ by ~4e-7 (asserted
below, so that the replacement is the only thing the tolerance depends on).
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import pathlib
import re
import sys
import types
import typing

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")  # a test dependency: nothing below is skipped when installed

from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    EDMEulerScheduler,
    FlowMatchEulerDiscreteScheduler,
    UNet2DConditionModel,
    UNet2DModel,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerOutput

from derive.integrations import load_module, step_table
from derive.integrations.diffusers import DeriveScheduler
from derive.integrations.kdiffusion import BrownianTreeNoiseSampler, wrap_sampler

ROOT = pathlib.Path(__file__).resolve().parent.parent
PARITY = 1e-12  # relative, float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_model(x, t):
    """A fixed smooth nonlinear 'model output' of (x, t) in float64."""
    t = float(t)
    return torch.tanh(x * (1 + t / 1000.0)) + 0.1 * torch.cos(3 * x + t / 100.0)


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def float64_tables(reference, ours):
    """Give a diffusers DDIM/DDPM scheduler the float64 tables of ours (same betas)."""
    reference.betas = ours.betas.clone()
    reference.alphas = ours.alphas.clone()
    reference.alphas_cumprod = ours.alphas_cumprod.clone()
    if hasattr(reference, "final_alpha_cumprod"):
        reference.final_alpha_cumprod = (
            torch.tensor(1.0, dtype=torch.float64)
            if reference.config.set_alpha_to_one
            else ours.alphas_cumprod[0].clone()
        )
    if hasattr(reference, "one"):
        reference.one = torch.tensor(1.0, dtype=torch.float64)


def run(scheduler, x, generator=None, **step_kwargs):
    for t in scheduler.timesteps:
        x = scheduler.step(toy_model(x, t), t, x, generator=generator, **step_kwargs).prev_sample
    return x


def start(seed=0, shape=(2, 3, 4, 4)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- parity with diffusers' schedulers ------------------------------------------------------------------------

SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


@pytest.mark.parametrize("module", ["ersde_order1_phi_ode", "vpsde_order1_ode"])
@pytest.mark.parametrize(
    ("spacing", "offset", "alpha_to_one", "prediction"),
    [
        ("leading", 1, True, "epsilon"),
        ("leading", 0, False, "v_prediction"),
        ("trailing", 0, True, "sample"),
        ("trailing", 0, False, "epsilon"),
    ],
)
def test_ddim_parity(module, spacing, offset, alpha_to_one, prediction):
    config = dict(SD_BETAS, timestep_spacing=spacing, steps_offset=offset, prediction_type=prediction)
    ddim = DDIMScheduler(clip_sample=False, set_alpha_to_one=alpha_to_one, **config)
    ours = DeriveScheduler(module=module, final_sigmas_type="zero" if alpha_to_one else "sigma_min", **config)
    ddim.set_timesteps(25)
    ours.set_timesteps(25)
    assert torch.equal(ddim.timesteps, ours.timesteps)
    x = start()
    float32_reference = run(ddim, x)
    float64_tables(ddim, ours)
    reference = run(ddim, x)
    assert rel(run(ours, x), reference) < PARITY
    # the only convention that differs: diffusers' float32 tables (~4e-7 relative)
    assert 1e-9 < rel(float32_reference, reference) < 1e-5


def test_ddim_clipped_parity():
    """clip_sample clamps x0 and re-derives eps: DDIM's use_clipped_model_output=True (GLIDE)."""
    ddim = DDIMScheduler(clip_sample=True, clip_sample_range=0.8)
    ours = DeriveScheduler(module="vpsde_order1_ode", clip_sample=True, clip_sample_range=0.8)
    ddim.set_timesteps(20)
    ours.set_timesteps(20)
    float64_tables(ddim, ours)
    x = 3 * start()
    assert rel(run(ours, x), run(ddim, x, use_clipped_model_output=True)) < PARITY


def test_ddim_linspace_steps_off_its_own_grid():
    """Documented: DDIM's linspace spacing steps to t - N // n, not to the next listed timestep."""
    ddim = DDIMScheduler(timestep_spacing="linspace")
    ddim.set_timesteps(25)
    t = ddim.timesteps.tolist()
    assert any(t[i] - 1000 // 25 != t[i + 1] for i in range(len(t) - 1))


@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_parity(clip):
    ddpm = DDPMScheduler(clip_sample=clip)
    ours = DeriveScheduler(module="ersde_order1_phi_sde", clip_sample=clip)
    ddpm.set_timesteps(20)
    ours.set_timesteps(20)
    assert torch.equal(ddpm.timesteps, ours.timesteps)
    float64_tables(ddpm, ours)
    x = start()
    reference = run(ddpm, x, torch.Generator().manual_seed(1))
    assert rel(run(ours, x, torch.Generator().manual_seed(1)), reference) < PARITY


def test_ddpm_parity_last_timestep_not_zero():
    """Documented: when the last timestep is not 0, DDPM adds 1e-10 z (its variance floor) on the final step.

    We return the data prediction there and draw nothing, so DDPM's z is the next draw of our generator.
    """
    ddpm = DDPMScheduler(clip_sample=False, timestep_spacing="trailing")
    ours = DeriveScheduler(module="ersde_order1_phi_sde", timestep_spacing="trailing")
    ddpm.set_timesteps(20)
    ours.set_timesteps(20)
    assert int(ours.timesteps[-1]) > 0
    float64_tables(ddpm, ours)
    x = start()
    reference = run(ddpm, x, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(1)
    result = run(ours, x, generator)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    assert rel(result, reference) > 1e-13  # the floor is visible
    assert rel(result + 1e-10 * z, reference) < PARITY


def test_ddim_eta_one_parity():
    """DDIM with eta = 1 is DDPM's posterior step: the same module reproduces it."""
    ddim = DDIMScheduler(clip_sample=False)
    ours = DeriveScheduler(module="ersde_order1_phi_sde")
    ddim.set_timesteps(15)
    ours.set_timesteps(15)
    float64_tables(ddim, ours)
    x = start()
    reference = run(ddim, x, torch.Generator().manual_seed(3), eta=1.0)
    assert rel(run(ours, x, torch.Generator().manual_seed(3)), reference) < PARITY


@pytest.mark.parametrize(
    ("module", "config", "options"),
    [
        ("flow_order1_ode", {"shift": 3.0}, {}),
        ("flow_order1_ode", {"use_dynamic_shifting": True, "shift_terminal": 0.05}, {"mu": 0.8}),
        ("ersde_order1_phi_ode", {"shift": 3.0}, {}),
    ],
)
def test_flow_match_euler_parity(module, config, options):
    """Order 1 flow ODE = FlowMatchEuler (which steps in float32): schedules agree to float32, trajectories in
    float64 to an Euler loop over our float64 sigmas; the first step starts from pure noise (t = 1)."""
    reference = FlowMatchEulerDiscreteScheduler(**config)
    ours = DeriveScheduler.from_config(reference.config, module=module)
    assert ours.config.prediction_type == "flow_prediction"
    reference.set_timesteps(12, **options)
    ours.set_timesteps(12, **options)
    assert ours.sigma_t[0] == 1.0
    assert float((reference.sigmas.double() - ours.sigmas.double()).abs().max()) < 1e-7
    assert float(((reference.timesteps - ours.timesteps) / 1000).abs().max()) < 1e-7
    x = start()
    euler = x.clone()
    for i, t in enumerate(ours.timesteps):
        euler = euler + (ours.sigma_t[i + 1] - ours.sigma_t[i]) * toy_model(euler, t)
    result = run(ours, x)
    assert rel(result, euler) < PARITY
    assert rel(result, run(reference, x)) < 1e-6  # FlowMatchEuler computes in float32


def test_flow_custom_sigmas_as_flux():
    """Flux passes sigmas = linspace(1, 1/n, n) and mu: shifted and ended with 0, as FlowMatchEuler."""
    reference = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    ours = DeriveScheduler.from_config(reference.config)
    assert ours.module.FAMILY == "flow"
    sigmas = np.linspace(1.0, 1 / 8, 8)
    reference.set_timesteps(sigmas=sigmas, mu=1.1)
    ours.set_timesteps(sigmas=sigmas, mu=1.1)
    assert float((reference.sigmas.double() - ours.sigmas.double()).abs().max()) < 1e-7


# ---- the adapter against the modules' own sampling loops -------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "ersde_order3_phi_sde",
        "ersde_order2",
        "vpsde_order3_sde",
        "edm_order2_ode",
        "variant_unipc_bh2_3",
        "ersde_order2_pc",
    ],
)
def test_scheduler_matches_module_sample(name):
    """Multistep history, data and noise forms, SDE noise, correctors (UniPC, pc: applied on the next step call):
    the scheduler (VP coordinates, an eps model) equals the module's own sample (normalized coordinates, a
    denoiser) with the same generator."""
    ours = DeriveScheduler(module=name, use_karras_sigmas=True, **SD_BETAS)
    ours.set_timesteps(12)
    module = ours.module
    x = start()
    result = run(ours, x, torch.Generator().manual_seed(5))

    alpha, sigma = ours.alpha_t, ours.sigma_t
    s = torch.tensor([g / a for g, a in zip(sigma, alpha)], dtype=torch.float64)

    def denoiser(y, s_batch):
        i = int((s == s_batch[0]).nonzero()[0])
        state = alpha[i] * y
        return (state - sigma[i] * toy_model(state, ours.timesteps[i])) / alpha[i]

    y = module.sample(denoiser, x / alpha[0], s, generator=torch.Generator().manual_seed(5))
    assert rel(result, y * alpha[-1]) < 1e-11


@pytest.mark.parametrize("name", ["flow_order2_sde", "flow_order3_ode"])
def test_scheduler_matches_flow_sample_native(name):
    ours = DeriveScheduler(module=name)
    times = [0.9, 0.7, 0.5, 0.35, 0.2, 0.1, 0.04]
    ours.set_timesteps(sigmas=times)
    x = start()
    result = run(ours, x, torch.Generator().manual_seed(2))
    native = ours.module.sample_native(
        lambda state, t: toy_model(state, t[0] * 1000),
        x,
        torch.tensor(times, dtype=torch.float64),
        final_to_zero=True,
        generator=torch.Generator().manual_seed(2),
    )
    assert rel(result, native) < 1e-11


def without_family_table(module):
    """The module's normalized-coordinate pieces only (as an ersde module has them)."""
    return types.SimpleNamespace(
        coefficient_table=module.coefficient_table,
        noise_scale_fn=module.noise_scale_fn,
        ORDER=module.ORDER,
        FORM=module.FORM,
    )


@pytest.mark.parametrize("name", ["flow_order1_ode", "flow_order1_sde", "flow_order3_sde", "edm_order2_sde"])
def test_pure_noise_first_step_is_the_derived_limit(name):
    """step_table's own first step from alpha = 0 (used for the ersde modules, phi's limit s / phi(s) measured)
    equals the module's derived one (its family_table's first row)."""
    module = load_module(name)
    alpha, sigma = [0.0, 0.4, 0.8, 1.0], [1.0, 0.6, 0.2, 0.0]
    derived = step_table(module, alpha, sigma)
    ours = step_table(without_family_table(module), alpha, sigma)
    assert not derived[0][4] and not ours[0][4]
    for got, want in zip(ours, derived):
        assert np.allclose([got[0], *got[1], got[2]], [want[0], *want[1], want[2]], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(
    "name", ["vpsde_order3_sde", "flow_order3_sde", "edm_order3_ode", "vesde_order2_sde", "mrsde_order3_sde"]
)
def test_family_table_agrees_with_coefficient_table(name):
    """Each module's family_table is its coefficient_table in the family's coordinates (A, B, C; M needs mu)."""
    module = load_module(name)
    bare = without_family_table(module)
    t = torch.linspace(0.95, 0.05, 9, dtype=torch.float64)
    alpha, sigma = torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)
    for family, converted in zip(step_table(module, alpha, sigma), step_table(bare, alpha, sigma)):
        assert family[4] == converted[4]
        got = [family[0], *family[1], family[2]]
        want = [converted[0], *converted[1], converted[2]]
        assert np.allclose(got, want, rtol=1e-13, atol=1e-15)


def test_step_table_is_float64_for_list_input():
    """Plain lists are converted in float64 (the modules' torch.as_tensor(list) would round them to float32)."""
    module = load_module("ersde_order1_phi_ode")
    alpha = [1.0, 1.0, 1.0]
    sigma = [1.2345678901234567, 0.3456789012345678, 0.0]
    A, B, *_ = step_table(module, alpha, sigma)[0]
    assert A == pytest.approx(sigma[1] / sigma[0], rel=1e-15)
    assert B[0] == pytest.approx(1 - sigma[1] / sigma[0], rel=1e-15)
    assert step_table(module, alpha, sigma)[1][4]


# ---- inside pipelines ----------------------------------------------------------------------------------------


def tiny_unet():
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


@pytest.mark.parametrize("name", ["ersde_order2_phi_sde", "vpsde_order2_ode"])
def test_ddpm_pipeline(name):
    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=DeriveScheduler(module=name))
    pipe.set_progress_bar_config(disable=True)
    images = [
        pipe(
            batch_size=2, num_inference_steps=8, generator=torch.Generator().manual_seed(0), output_type="np"
        ).images
        for _ in range(2)
    ]
    assert images[0].shape == (2, 8, 8, 3)
    assert np.isfinite(images[0]).all()
    np.testing.assert_array_equal(images[0], images[1])  # the pipeline's generator drives the noise


def retrieve_timesteps(scheduler, num_inference_steps=None, device=None, timesteps=None, sigmas=None):
    """diffusers' retrieve_timesteps (used by the SD, SDXL, SD3 and Flux pipelines), which importing from
    diffusers needs transformers for: custom timesteps/sigmas only if set_timesteps' signature names them."""
    parameters = set(inspect.signature(scheduler.set_timesteps).parameters)
    if timesteps is not None:
        assert "timesteps" in parameters
        scheduler.set_timesteps(timesteps=timesteps, device=device)
        return scheduler.timesteps, len(scheduler.timesteps)
    if sigmas is not None:
        assert "sigmas" in parameters
        scheduler.set_timesteps(sigmas=sigmas, device=device)
        return scheduler.timesteps, len(scheduler.timesteps)
    scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler.timesteps, num_inference_steps


def test_guided_loop_with_conditional_unet():
    """A Stable-Diffusion-style loop: retrieve_timesteps, init_noise_sigma, scale_model_input, two model calls
    per step combined by classifier-free guidance, v-prediction and Karras sigmas."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=16,
        attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()
    scheduler = DeriveScheduler(
        module="ersde_order3_phi_ode", prediction_type="v_prediction", use_karras_sigmas=True, **SD_BETAS
    )
    timesteps, steps = retrieve_timesteps(scheduler, 6, "cpu")
    assert steps == 6 and timesteps.dtype == torch.int64
    text = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(1))
    embeddings = torch.cat([torch.zeros_like(text), text])
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            uncond, cond = unet(model_input, t, encoder_hidden_states=embeddings).sample.chunk(2)
            latents = scheduler.step(uncond + 7.5 * (cond - uncond), t, latents, return_dict=False)[0]
    assert latents.shape == (1, 4, 8, 8) and bool(torch.isfinite(latents).all())
    # custom timesteps and sigmas go through retrieve_timesteps too
    retrieve_timesteps(scheduler, None, "cpu", timesteps=[999, 700, 400, 100])
    assert scheduler.sigma_t[-1] == 0.0 and len(scheduler.timesteps) == 4
    retrieve_timesteps(scheduler, None, "cpu", sigmas=[14.6, 3.0, 0.5, 0.0])
    assert len(scheduler.timesteps) == 3


def test_step_output_and_protocol():
    scheduler = DeriveScheduler()
    assert scheduler.order == 1 and scheduler.init_noise_sigma == 1.0 and len(scheduler) == 1000
    assert scheduler.config.module == "ersde_order2_phi_ode"
    scheduler.set_timesteps(5)
    x = start()
    t = scheduler.timesteps[0]
    assert torch.equal(scheduler.scale_model_input(x, t), x)
    output = scheduler.step(toy_model(x, t), t, x)
    assert isinstance(output, SchedulerOutput) and output.pred_original_sample.shape == x.shape
    assert scheduler.step_index == 1
    half = scheduler.step(toy_model(x, t).half(), scheduler.timesteps[1], x.half()).prev_sample
    assert half.dtype == torch.float16


def test_img2img_begin_index_restarts_the_history():
    """set_begin_index (img2img): the table is rebuilt from there, equal to a schedule starting there."""
    full = DeriveScheduler(module="ersde_order3_phi_ode")
    full.set_timesteps(10)
    full.set_begin_index(4)
    x0, noise = start(1), start(2)
    x = full.add_noise(x0, noise, full.timesteps[4:5])
    index = int(full.timesteps[4])
    abar = full.alphas_cumprod[index]
    assert rel(x, abar.sqrt() * x0 + (1 - abar).sqrt() * noise) < 1e-15
    x_full = x
    for t in full.timesteps[4:]:
        x_full = full.step(toy_model(x_full, t), t, x_full).prev_sample
    part = DeriveScheduler(module="ersde_order3_phi_ode")
    part.set_timesteps(timesteps=full.timesteps[4:].tolist())
    assert rel(x_full, run(part, x)) < 1e-14


def test_add_noise_matches_ddpm():
    ours = DeriveScheduler(**SD_BETAS)
    ddpm = DDPMScheduler(**SD_BETAS)
    float64_tables(ddpm, ours)
    x0, noise = start(1), start(2)
    t = torch.tensor([3, 500])
    assert rel(ours.add_noise(x0, noise, t), ddpm.add_noise(x0, noise, t)) < 1e-15
    assert rel(ours.get_velocity(x0, noise, t), ddpm.get_velocity(x0, noise, t)) < 1e-15


# ---- configs ---------------------------------------------------------------------------------------------------


def test_config_round_trip(tmp_path):
    module = load_module("ersde_order2_phi_sde")
    ours = DeriveScheduler.from_module(module, use_karras_sigmas=True, **SD_BETAS)
    assert ours.config.module == "ersde_order2_phi_sde" and ours.module is module
    ours.save_config(tmp_path)
    loaded = DeriveScheduler.from_pretrained(tmp_path)
    public = [{k: v for k, v in s.config.items() if not k.startswith("_")} for s in (loaded, ours)]
    assert public[0] == public[1]
    for scheduler in (ours, loaded):
        scheduler.set_timesteps(6)
    assert torch.equal(ours.timesteps, loaded.timesteps)
    x = start()
    assert torch.equal(
        run(ours, x, torch.Generator().manual_seed(0)), run(loaded, x, torch.Generator().manual_seed(0))
    )

    # a module outside generated/ is stored by path
    copy = tmp_path / "my_sampler.py"
    copy.write_text((ROOT / "generated" / "ersde_order2_phi_ode.py").read_text())
    by_path = DeriveScheduler(module=str(copy))
    assert by_path.config.module == str(copy.resolve())
    by_path.save_config(tmp_path / "by_path")
    assert DeriveScheduler.from_pretrained(tmp_path / "by_path").module.__file__ == str(copy.resolve())


def test_from_config_to_and_from_diffusers():
    ddim = DDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing", **SD_BETAS)
    ours = DeriveScheduler.from_config(ddim.config, module="ersde_order3_phi_ode")
    assert ours.config.prediction_type == "v_prediction" and ours.config.beta_schedule == "scaled_linear"
    assert ours.config.timestep_spacing == "trailing"
    back = DDIMScheduler.from_config(ours.config)
    assert back.config.prediction_type == "v_prediction" and back.config.beta_end == 0.012
    dpm = DPMSolverMultistepScheduler.from_config(ours.config)
    assert dpm.config.beta_schedule == "scaled_linear"
    assert DeriveScheduler.from_config(DDPMScheduler().config).config.module == "ersde_order2_phi_ode"
    assert "DDIMScheduler" in [cls.__name__ for cls in ours.compatibles]
    flow = DeriveScheduler.from_config(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    assert flow.config.prediction_type == "flow_prediction" and flow.config.shift == 3.0
    assert flow.config.module == "flow_order2_ode"
    assert FlowMatchEulerDiscreteScheduler.from_config(flow.config).config.shift == 3.0


def test_bad_configs():
    with pytest.raises(ValueError, match="mrsde|mean-reverting"):
        DeriveScheduler(module="mrsde_order2_sde")
    with pytest.raises(ValueError, match="prediction_type"):
        DeriveScheduler(prediction_type="velocity")
    with pytest.raises(ValueError, match="no generated module"):
        DeriveScheduler(module="no_such_module_here")
    noise_form = DeriveScheduler(module="vpsde_order2_ode", prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="pure noise"):
        noise_form.set_timesteps(5)


# ---- k-diffusion / ComfyUI -------------------------------------------------------------------------------------


def ve_denoiser(x, sigma):
    """Exact x0 prediction for standard normal data in k-diffusion coordinates x = x0 + sigma eps."""
    return x / (1 + sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2)


KARRAS = torch.tensor([14.6, 6.0, 2.5, 1.0, 0.4, 0.1, 0.0], dtype=torch.float64)
#: k-diffusion's sampler signature, in its positional order
KDIFFUSION_ORDER = [
    "model",
    "x",
    "sigmas",
    "extra_args",
    "callback",
    "disable",
    "eta",
    "s_noise",
    "noise_sampler",
]


def test_wrap_sampler_signature_and_s_noise():
    sampler = wrap_sampler("ersde_order2_phi_sde", s_noise=1.0)
    assert list(inspect.signature(sampler).parameters) == KDIFFUSION_ORDER
    x = start() * KARRAS[0]
    z = start(7)
    constant = lambda sigma, sigma_next: z

    def with_noise(scale):
        return wrap_sampler("ersde_order2_phi_sde", s_noise=scale)(
            ve_denoiser, x, KARRAS, noise_sampler=constant
        )

    none, one, two = with_noise(0.0), with_noise(1.0), with_noise(2.0)
    assert torch.equal(none, with_noise(0.0))  # deterministic
    assert rel(one - none, z) > 1e-3  # the noise enters
    assert rel(two - none, 2 * (one - none)) < 1e-12  # linear denoiser: the output is linear in s_noise
    module = load_module("ersde_order2_phi_sde")
    assert rel(one, module.sample(ve_denoiser, x, KARRAS, noise_sampler=constant)) < 1e-15
    # a call-time s_noise (ComfyUI's extra_options) replaces the wrapped one
    sampler = wrap_sampler("ersde_order2_phi_sde", s_noise=1.0)
    assert rel(sampler(ve_denoiser, x, KARRAS, s_noise=2.0, noise_sampler=constant), two) < 1e-15
    # an ODE module injects no noise: s_noise other than 1 is refused, not ignored
    with pytest.raises(ValueError, match="s_noise"):
        wrap_sampler("ersde_order2_phi_ode", s_noise=3.0)
    with pytest.raises(ValueError, match="s_noise"):
        wrap_sampler("ersde_order2_phi_ode")(ve_denoiser, x, KARRAS, s_noise=0.0)
    with pytest.raises(ValueError, match="eta"):
        wrap_sampler("ersde_order2_phi_ode", eta=1.0)
    with pytest.raises(ValueError, match="eta"):
        wrap_sampler("ersde_order2_phi_sde")(ve_denoiser, x, KARRAS, eta=0.5)
    wrap_sampler("ersde_order2_phi_sde", eta=1.0)


def test_wrap_sampler_comfy_seed_and_callback():
    sampler = wrap_sampler("ersde_order3_phi_sde")
    x = start() * KARRAS[0]
    seen = []

    def model(x, sigma, seed=None):  # ComfyUI's wrapped model accepts the seed it passes along
        return ve_denoiser(x, sigma)

    runs = [sampler(model, x, KARRAS, extra_args={"seed": 11}, callback=seen.append) for _ in range(2)]
    assert torch.equal(*runs)
    assert [entry["i"] for entry in seen[: len(KARRAS) - 1]] == list(range(len(KARRAS) - 1))
    assert set(seen[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}


def test_wrap_sampler_flow_convention():
    """flow=True: ComfyUI's CONST state x = (1 - t) x0 + t eps; equals the module's sample_native (t < 1) and
    starts from pure noise at t = 1 (order 1 ODE: flow Euler)."""
    module = load_module("flow_order2_ode")
    times = torch.tensor([0.9, 0.6, 0.3, 0.1, 0.0], dtype=torch.float64)
    x = start()

    def velocity(state, t):
        return toy_model(state, float(t[0]) * 1000)

    def denoiser(state, t):
        return state - t.reshape(-1, 1, 1, 1) * velocity(state, t)

    wrapped = wrap_sampler(module, flow=True)(denoiser, x, times)
    native = module.sample_native(velocity, x, times[:-1], final_to_zero=True)
    assert rel(wrapped, native) < 1e-12

    times = torch.tensor([1.0, 0.7, 0.4, 0.1, 0.0], dtype=torch.float64)
    euler = x.clone()
    for i in range(len(times) - 1):
        euler = euler + (times[i + 1] - times[i]) * velocity(euler, times[i : i + 1])
    assert rel(wrap_sampler("flow_order1_ode", flow=True)(denoiser, x, times), euler) < 1e-12


def test_brownian_tree_noise_is_split_invariant():
    x = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    whole = BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=42)
    split = BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=42)
    a, b, c = 10.0, 3.0, 0.5
    combined = (math.sqrt(a - b) * split(a, b) + math.sqrt(b - c) * split(b, c)) / math.sqrt(a - c)
    n = whole(a, c)
    assert float((n - combined).abs().max()) < 1e-12
    assert 0.8 < float(n.std()) < 1.2  # unit variance
    assert float((BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=43)(a, c) - n).abs().max()) > 0.1
    per_item = BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=[5, 6])(a, c)
    alone = BrownianTreeNoiseSampler(x[:1], 0.03, 14.6, seed=6)(a, c)
    assert torch.equal(per_item[1], alone[0])
    # a log-sigma transform is a different clock on the same construction
    logs = BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=42, transform=lambda s: -s.log())
    t = [-math.log(v) for v in (a, b, c)]
    combined = (math.sqrt(t[1] - t[0]) * logs(a, b) + math.sqrt(t[2] - t[1]) * logs(b, c)) / math.sqrt(
        t[2] - t[0]
    )
    assert (
        float(
            (BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=42, transform=lambda s: -s.log())(a, c) - combined)
            .abs()
            .max()
        )
        < 1e-12
    )


def test_brownian_tree_missing_torchsde_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchsde", None)
    with pytest.raises(ImportError, match="pip install torchsde"):
        BrownianTreeNoiseSampler(torch.zeros(2), 0.1, 1.0, seed=0)


# ---- docs and examples -----------------------------------------------------------------------------------------


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def test_docs_diffusers_snippets():
    blocks = python_blocks(ROOT / "docs" / "diffusers.md")
    assert len(blocks) >= 2
    namespace = {}
    for block in blocks:
        exec(compile(block, "docs/diffusers.md", "exec"), namespace)  # noqa: S102


def test_docs_comfyui_snippets():
    blocks = python_blocks(ROOT / "docs" / "comfyui.md")
    assert len(blocks) >= 1
    namespace = {}
    for block in blocks:
        exec(compile(block, "docs/comfyui.md", "exec"), namespace)  # noqa: S102


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("prediction", "dynamics"), [("noise", "sde"), ("data", "ode")])
def test_example_mr_restoration(prediction, dynamics):
    result = load_example("mr_restoration").main(size=16, steps=8, prediction=prediction, dynamics=dynamics)
    assert math.isfinite(result["network_error"])
    assert result["restored"].shape == result["clean"].shape
    assert result["oracle_error"] < 1e-5  # the oracle model restores the clean image


def test_example_flow_sampling():
    results = load_example("flow_sampling").main(size=8, steps=40, batch=8)
    for (dynamics, name), sample in results.items():
        assert bool(torch.isfinite(sample).all())
        if name == "exact":  # Gaussian data N(0.5, 0.3^2)
            assert abs(float(sample.mean()) - 0.5) < 0.02, dynamics
            assert abs(float(sample.std()) - 0.3) < 0.02, dynamics


# ---- drop-in behaviour: configs of other schedulers, peers side by side ---------------------------------------

F32 = 1e-5  # relative: diffusers' float32 tables and steps against ours in float64


def peer_run(scheduler, x, steps, seed=None, scale=1.0):
    scheduler.set_timesteps(steps)
    options = {} if seed is None else {"generator": torch.Generator().manual_seed(seed)}
    for t in scheduler.timesteps:
        x = scheduler.step(scale * toy_model(x, t), t, x, **options).prev_sample
    return x


def test_multistep_config_runs_its_own_grid():
    """A default DPMSolverMultistep config (in memory: every key at its default) runs 999 ... 100 at 10 steps."""
    reference = DPMSolverMultistepScheduler()
    ours = DeriveScheduler.from_config(reference.config)
    assert ours.config.timestep_grid == "multistep" and ours.config.timestep_spacing == "linspace"
    assert ours.config.module == "variant_dpmpp_2m"
    for spacing in ("linspace", "leading", "trailing"):
        for steps in (10, 25):
            reference = DPMSolverMultistepScheduler(timestep_spacing=spacing, steps_offset=1)
            ours = DeriveScheduler.from_config(reference.config)
            reference.set_timesteps(steps)
            ours.set_timesteps(steps)
            assert torch.equal(reference.timesteps, ours.timesteps), (spacing, steps)
    assert ours.timesteps[0] > 0
    ddim = DeriveScheduler.from_config(DDIMScheduler(timestep_spacing="linspace").config)
    ddim.set_timesteps(10)
    assert ddim.config.timestep_grid == "ddim" and int(ddim.timesteps[-1]) == 0


@pytest.mark.parametrize(
    ("peer", "config", "module", "steps"),
    [
        (DPMSolverMultistepScheduler, {}, "variant_dpmpp_2m", 10),
        (DPMSolverMultistepScheduler, {"solver_order": 3}, "variant_dpmpp_3m", 10),
        (
            DPMSolverMultistepScheduler,
            {"solver_type": "heun", "use_karras_sigmas": True},
            "variant_dpmpp_2m_heun",
            12,
        ),
        (
            DPMSolverMultistepScheduler,
            {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
            "variant_dpm_2m",
            10,
        ),
        (UniPCMultistepScheduler, {}, "variant_unipc_bh2_2", 10),
        (UniPCMultistepScheduler, {"solver_order": 3}, "variant_unipc_bh2_3", 20),
        (
            UniPCMultistepScheduler,
            {"solver_type": "bh1", "predict_x0": False, "final_sigmas_type": "sigma_min"},
            "variant_unipc_bh1_2_noise",
            10,
        ),
        (DEISMultistepScheduler, {"solver_order": 3}, "variant_deis_3", 12),
    ],
)
def test_multistep_peers_from_their_configs(peer, config, module, steps):
    """diffusers' multistep schedulers as shipped (float32), defaults included (lower_order_final; UniPC's
    corrector), side by side with DeriveScheduler.from_config(their config)."""
    reference = peer(**config)
    ours = DeriveScheduler.from_config(reference.config)
    assert ours.config.module == module
    x = start()
    result = peer_run(ours, x, steps)
    assert torch.equal(ours.timesteps, peer_run_timesteps(reference, steps))
    assert rel(result, peer_run(reference, x, steps)) < F32


def peer_run_timesteps(scheduler, steps):
    scheduler.set_timesteps(steps)
    return scheduler.timesteps


def test_unipc_corrector_is_applied():
    """Without its corrector the UniPC variant is 0.1-2 % away from default UniPC; with it, float32 parity."""
    reference = UniPCMultistepScheduler()
    x = start()
    expected = peer_run(reference, x, 10)
    corrected = peer_run(DeriveScheduler.from_config(reference.config), x, 10)
    predictor_only = peer_run(UniPCMultistepScheduler(disable_corrector=list(range(10))), x, 10)
    assert rel(corrected, expected) < F32
    assert rel(predictor_only, expected) > 1e-3
    with pytest.raises(ValueError, match="disable_corrector"):
        DeriveScheduler.from_config(UniPCMultistepScheduler(disable_corrector=[0]).config)


def test_sde_dpmpp_noise_dtype():
    """SDE-DPM-Solver++ draws float32 noise whatever the state's dtype: by default so does its module, and
    float64 runs then follow the peer's trajectory with the same seed."""
    reference = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
    ours = DeriveScheduler.from_config(reference.config)
    assert ours.config.module == "variant_sde_dpmpp_2m"
    x = start()
    expected = peer_run(reference, x, 10, seed=4)
    assert rel(peer_run(ours, x, 10, seed=4), expected) < F32
    float64_noise = DeriveScheduler.from_config(reference.config, noise_dtype="float64")
    assert rel(peer_run(float64_noise, x, 10, seed=4), expected) > 1e-2
    ddpm = DeriveScheduler(module="variant_ddpm")
    assert ddpm._noise_dtype is None  # DDPM's convention: the model output's dtype


def test_sd_ddim_config_set_alpha_to_one_false():
    """Stable Diffusion's DDIM config (set_alpha_to_one=False, steps_offset=1): the last step goes to
    alphas_cumprod[0], as DDIM."""
    ddim = DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1, **SD_BETAS)
    ours = DeriveScheduler.from_config(ddim.config, module="variant_ddim")
    assert ours.config.final_sigmas_type == "sigma_min"
    ddim.set_timesteps(20)
    ours.set_timesteps(20)
    float64_tables(ddim, ours)
    x = start()
    assert rel(run(ours, x), run(ddim, x)) < PARITY
    with_zero = DeriveScheduler.from_config(DDIMScheduler(**SD_BETAS).config, module="variant_ddim")
    assert with_zero.config.final_sigmas_type == "zero" and with_zero.config.clip_sample  # DDIM's defaults


def test_sigma_min_final_after_timestep_zero_is_the_identity():
    """Leading spacing ends at timestep 0; sigma_min repeats it: a zero-length last step, the state unchanged
    (the published variants refuse repeated sigmas in their own sample)."""
    ours = DeriveScheduler(module="variant_dpmpp_2m", final_sigmas_type="sigma_min")
    ours.set_timesteps(10)
    assert int(ours.timesteps[-1]) == 0
    x = start()
    for t in ours.timesteps[:-1]:
        x = ours.step(toy_model(x, t), t, x).prev_sample
    t = ours.timesteps[-1]
    assert torch.equal(ours.step(toy_model(x, t), t, x).prev_sample, x)


def test_zero_snr_parity_with_ddim():
    """rescale_betas_zero_snr: alpha = 0 at timestep 999, which trailing spacing visits; the first step starts
    from pure noise (v prediction), as DDIM."""
    config = dict(
        SD_BETAS, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"
    )
    ddim = DDIMScheduler(clip_sample=False, **config)
    ours = DeriveScheduler.from_config(ddim.config, module="variant_ddim")
    assert ours.config.rescale_betas_zero_snr and float(ours.alphas_cumprod[-1]) == 0.0
    ddim.set_timesteps(10)  # 1000 / n an integer: DDIM steps to t - 1000 // n, the next trailing timestep
    ours.set_timesteps(10)
    assert ours.alpha_t[0] == 0.0 and int(ours.timesteps[0]) == 999
    float64_tables(ddim, ours)
    x = start()
    assert rel(run(ours, x), run(ddim, x)) < PARITY
    epsilon = DeriveScheduler(module="variant_ddim", **dict(config, prediction_type="epsilon"))
    with pytest.raises(ValueError, match="zero SNR"):
        epsilon.set_timesteps(12)


def test_dynamic_thresholding_parity():
    reference = DPMSolverMultistepScheduler(thresholding=True, sample_max_value=1.5, prediction_type="sample")
    ours = DeriveScheduler.from_config(reference.config)
    assert ours.config.thresholding and ours.config.sample_max_value == 1.5
    x = start()
    expected = peer_run(reference, x, 10, scale=3.0)
    assert rel(peer_run(ours, x, 10, scale=3.0), expected) < F32
    plain = DeriveScheduler.from_config(DPMSolverMultistepScheduler(prediction_type="sample").config)
    assert rel(peer_run(plain, x, 10, scale=3.0), expected) > 1e-2  # thresholding acted


def test_unreproducible_configs_are_refused():
    cases = [
        (DPMSolverMultistepScheduler(use_lu_lambdas=True), "use_lu_lambdas"),
        (
            DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min"),
            "no generated",
        ),
        (
            DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=3),
            "no generated module",
        ),
        (DPMSolverMultistepScheduler(lambda_min_clipped=-5.1), "lambda_min_clipped"),
        (DDPMScheduler(variance_type="fixed_large"), "variance_type"),
        (EDMEulerScheduler(), "EDM"),
    ]
    for scheduler, message in cases:
        with pytest.raises(ValueError, match=message):
            DeriveScheduler.from_config(scheduler.config)
    # an explicit module replaces the solver keys
    chosen = DeriveScheduler.from_config(
        DPMSolverMultistepScheduler(solver_order=3).config, module="ersde_order2"
    )
    assert chosen.config.module == "ersde_order2"
    with pytest.raises(ValueError, match="lower_order_final"):
        DeriveScheduler(lower_order_final="sometimes")


def test_ddim_pipeline_and_eta():
    """DDIMPipeline passes eta and use_clipped_model_output to step(). Its constructor converts any scheduler
    to a DDIMScheduler (diffusers' behaviour), so the scheduler is assigned afterwards."""
    unet = tiny_unet()
    assert type(DDIMPipeline(unet=unet, scheduler=DeriveScheduler()).scheduler) is DDIMScheduler
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)

    def images(**kwargs):
        generator = torch.Generator().manual_seed(0)
        return pipe(num_inference_steps=10, generator=generator, output_type="np", **kwargs).images

    expected = images()
    pipe.scheduler = DeriveScheduler.from_config(pipe.scheduler.config, module="variant_ddim")
    assert np.abs(images() - expected).max() < 1e-5
    assert np.isfinite(images(eta=0.0)).all()
    with pytest.raises(ValueError, match="eta"):
        images(eta=0.5)
    pipe.scheduler = DeriveScheduler.from_config(pipe.scheduler.config, module="variant_ddpm")
    assert np.isfinite(images(eta=1.0)).all()  # DDIM's eta = 1 is DDPM's posterior step
    with pytest.raises(ValueError, match="eta"):
        images(eta=0.0)
    clipped = DeriveScheduler(module="variant_ddim", clip_sample=True)
    clipped.set_timesteps(5)
    x = start()
    t = clipped.timesteps[0]
    clipped.step(toy_model(x, t), t, x, use_clipped_model_output=None)
    with pytest.raises(ValueError, match="use_clipped_model_output"):
        clipped.step(toy_model(x, t), clipped.timesteps[1], x, use_clipped_model_output=False)
    with pytest.raises(TypeError, match="unexpected"):
        clipped.step(toy_model(x, t), clipped.timesteps[1], x, churn=0.5)


# ---- generated sample(): k-diffusion's signature ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["ersde_order2_phi_sde", "variant_sde_dpmpp_2m", "ersde_order2_pc"])
def test_generated_sample_takes_kdiffusion_arguments(name):
    module = load_module(name)
    assert list(inspect.signature(module.sample).parameters)[:9] == KDIFFUSION_ORDER
    x = start() * KARRAS[0]
    z = start(7)

    def constant(sigma, sigma_next):
        return z

    keyword = module.sample(ve_denoiser, x, KARRAS, extra_args={}, disable=True, noise_sampler=constant)
    positional = module.sample(ve_denoiser, x, KARRAS, {}, None, True, None, 1.0, constant)
    assert torch.equal(keyword, positional)
    none, two = (module.sample(ve_denoiser, x, KARRAS, s_noise=s, noise_sampler=constant) for s in (0.0, 2.0))
    assert rel(two - none, 2 * (keyword - none)) < 1e-12  # s_noise scales the injected noise (linear model)
    with pytest.raises(ValueError, match="eta"):
        module.sample(ve_denoiser, x, KARRAS, eta=0.0)


def test_generated_sample_refuses_meaningless_noise_options():
    module = load_module("ersde_order2_phi_ode")
    x = start() * KARRAS[0]
    assert torch.equal(module.sample(ve_denoiser, x, KARRAS, eta=0.0), module.sample(ve_denoiser, x, KARRAS))
    with pytest.raises(ValueError, match="s_noise"):
        module.sample(ve_denoiser, x, KARRAS, s_noise=0.5)
    with pytest.raises(ValueError, match="eta"):
        module.sample(ve_denoiser, x, KARRAS, eta=1.0)
    with pytest.raises(ValueError, match="eta"):
        load_module("ersde_order2").sample(ve_denoiser, x, KARRAS, eta=1.0)  # phi = s (e^{s^0.3} + 10)


class CountingBar:
    """A stand-in for tqdm.auto.tqdm that records its updates."""

    made: typing.ClassVar[list] = []

    def __init__(self, total=None):
        self.total, self.count, self.closed = total, 0, False
        CountingBar.made.append(self)

    def update(self, n=1):
        self.count += n

    def close(self):
        self.closed = True


@pytest.mark.parametrize("name", ["ersde_order3_phi_ode", "variant_unipc_bh2_2", "flow"])
def test_progress_bar(name, monkeypatch):
    """disable=False shows one tqdm update per step; None or True shows none; without tqdm, none (silently)."""
    fake = types.ModuleType("tqdm.auto")
    fake.tqdm = CountingBar
    monkeypatch.setitem(sys.modules, "tqdm.auto", fake)
    x = start() * KARRAS[0]
    if name == "flow":
        times = torch.tensor([1.0, 0.7, 0.4, 0.1, 0.0], dtype=torch.float64)
        sampler, sigmas = wrap_sampler("flow_order2_ode", flow=True), times
    else:
        sampler, sigmas = load_module(name).sample, KARRAS
    CountingBar.made.clear()
    sampler(ve_denoiser, x, sigmas, disable=False)
    (bar,) = CountingBar.made
    assert bar.total == bar.count == len(sigmas) - 1 and bar.closed
    sampler(ve_denoiser, x, sigmas, disable=True)
    sampler(ve_denoiser, x, sigmas)
    assert len(CountingBar.made) == 1
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # not installed: import fails
    assert bool(torch.isfinite(sampler(ve_denoiser, x, sigmas, disable=False)).all())


@pytest.mark.parametrize("name", ["ersde_order2_phi_ode_pc", "variant_unipc_bh2_3"])
def test_wrap_sampler_flow_with_a_corrector(name):
    """flow=True with a corrector module (a schedule below t = 1): equals the module's own sample() in
    normalized coordinates y = x / (1 - t), s = t / (1 - t); a start at t = 1 is refused, naming the reason."""
    module = load_module(name)
    times = torch.tensor([0.9, 0.7, 0.5, 0.3, 0.15, 0.05, 0.0], dtype=torch.float64)
    x = start()

    def denoiser(state, t):
        return state / (1 + t.reshape(-1, 1, 1, 1)) + 0.05 * torch.tanh(state)

    s = times / (1 - times)

    def normalized(y, s_batch):
        t = s_batch / (1 + s_batch)
        return denoiser(y * (1 - t.reshape(-1, 1, 1, 1)), t)

    expected = module.sample(normalized, x / (1 - times[0]), s)
    assert rel(wrap_sampler(module, flow=True)(denoiser, x, times), expected) < 1e-12
    with pytest.raises(ValueError, match="pure noise"):
        wrap_sampler(module, flow=True)(denoiser, x, torch.cat([times.new_ones(1), times]))

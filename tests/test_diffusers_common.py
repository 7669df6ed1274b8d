"""diffusers' generic scheduler checks (the ideas of its ``SchedulerCommonTest``) run against DeriveScheduler.

Every check runs over several modules (data and noise forms, a multistep one, an SDE one, a published UniPC
variant with its corrector, a predictor-corrector module): step shapes at timesteps inside and outside the
schedule, outputs after save_pretrained / from_pretrained and after a round trip through every compatible
scheduler's config, tuple and dict outputs, the public attributes, add_noise, trained betas, and diffusers'
config attribute access (a warning for config-only attributes, an AttributeError naming the class).
"""

from __future__ import annotations

import inspect
import tempfile
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")  # a test dependency: nothing below is skipped when installed

from diffusers.utils import logging

from derive.integrations.diffusers import DeriveScheduler

MODULES = [
    "ersde_order2_phi_ode",
    "vpsde_order3_sde",
    "ersde_order3_phi_sde",
    "variant_unipc_bh2_2",
    "ersde_order2_pc",
]
STEPS = 25


@pytest.fixture(params=MODULES)
def config(request):
    return {
        "module": request.param,
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
    }


def dummy_sample():
    return torch.rand((4, 3, 8, 8), generator=torch.Generator().manual_seed(0))


def step_output(scheduler, timestep, sample, residual, **kwargs):
    return scheduler.step(residual, timestep, sample, generator=torch.manual_seed(0), **kwargs).prev_sample


def run_loop(scheduler, sample):
    for t in scheduler.timesteps:
        sample = step_output(scheduler, t, sample, torch.tanh(sample) * (1 + float(t) / 1000))
    return sample


@pytest.mark.parametrize("timestep", [0, 1, 999])
def test_step_shape(config, timestep):
    """Also at timesteps that are not in the schedule (0 and 1 at 25 steps): the last step, as diffusers."""
    scheduler = DeriveScheduler(**config)
    scheduler.set_timesteps(STEPS)
    sample = dummy_sample()
    output = step_output(scheduler, timestep, sample, 0.1 * sample)
    assert output.shape == sample.shape
    other = DeriveScheduler(**config)
    other.set_timesteps(STEPS)
    assert step_output(other, scheduler.timesteps[3], sample, 0.1 * sample).shape == sample.shape


def test_timestep_outside_the_schedule_is_the_last_step(config):
    scheduler = DeriveScheduler(**config)
    scheduler.set_timesteps(STEPS)
    assert 1 not in scheduler.timesteps.tolist()
    assert scheduler.index_for_timestep(1) == STEPS - 1
    sample = dummy_sample()
    scheduler.step(0.1 * sample, 1, sample)
    assert scheduler.step_index == STEPS


@pytest.mark.parametrize("timestep", [1, "first"])
def test_from_save_pretrained_outputs(config, timestep):
    scheduler = DeriveScheduler(**config)
    with tempfile.TemporaryDirectory() as folder:
        scheduler.save_config(folder)
        loaded = DeriveScheduler.from_pretrained(folder)
    for s in (scheduler, loaded):
        s.set_timesteps(STEPS)
    t = scheduler.timesteps[0] if timestep == "first" else timestep
    sample = dummy_sample()
    a = step_output(scheduler, t, sample, 0.1 * sample)
    b = step_output(loaded, t, sample, 0.1 * sample)
    assert torch.equal(a, b)
    for s in (scheduler, loaded):
        s.set_timesteps(STEPS)
    assert torch.equal(run_loop(scheduler, sample), run_loop(loaded, sample))


def test_from_pretrained_config(config):
    scheduler = DeriveScheduler(**config)
    with tempfile.TemporaryDirectory() as folder:
        scheduler.save_pretrained(folder)
        loaded = DeriveScheduler.from_pretrained(folder)
    expected = dict(scheduler.config)
    del expected["_use_default_values"]  # not written to the file
    assert expected == loaded.config


def test_compatibles_round_trip(config):
    """Through every compatible scheduler and back: the same config (diffusers' rule for configs a
    DeriveScheduler wrote), and from the last one the same outputs."""
    scheduler = DeriveScheduler(**config)
    assert all(c is not None for c in scheduler.compatibles)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for compatible in scheduler.compatibles:
            other = compatible.from_config(scheduler.config)
            assert other is not None
            back = DeriveScheduler.from_config(other.config)
            kept = {k: v for k, v in back.config.items() if k in scheduler.config}
            assert kept == dict(scheduler.config), compatible.__name__
            added = {k for k in back.config if k not in scheduler.config}
            assert not added & set(inspect.signature(DeriveScheduler.__init__).parameters)
    for s in (scheduler, back):
        s.set_timesteps(STEPS)
    sample = dummy_sample()
    assert torch.equal(run_loop(scheduler, sample), run_loop(back, sample))


def test_outputs_equivalence(config):
    """return_dict=False gives the same prev_sample as the dataclass output."""
    sample = dummy_sample()
    outputs = []
    for return_dict in (True, False):
        scheduler = DeriveScheduler(**config)
        scheduler.set_timesteps(STEPS)
        states = []
        x = sample
        for t in scheduler.timesteps[:4]:
            out = scheduler.step(0.1 * x, t, x, generator=torch.manual_seed(0), return_dict=return_dict)
            x = out.prev_sample if return_dict else out[0]
            states.append(x)
        outputs.append(states)
    for a, b in zip(*outputs):
        assert torch.allclose(a, b, atol=1e-5)


def test_public_api(config):
    scheduler = DeriveScheduler(**config)
    assert hasattr(scheduler, "init_noise_sigma") and hasattr(scheduler, "step")
    sample = dummy_sample()
    assert scheduler.scale_model_input(sample, 0.0).shape == sample.shape
    assert set(inspect.signature(scheduler.set_timesteps).parameters) >= {"num_inference_steps", "device"}


def test_add_noise(config):
    scheduler = DeriveScheduler(**config)
    scheduler.set_timesteps(100)
    sample = dummy_sample()
    noise = torch.randn_like(sample)
    t = scheduler.timesteps[5][None]
    noised = scheduler.add_noise(sample, noise, t)
    assert noised.shape == sample.shape
    abar = float(scheduler.alphas_cumprod[int(t)])
    assert torch.allclose(noised, abar**0.5 * sample + (1 - abar) ** 0.5 * noise, atol=1e-6)


def test_trained_betas(config):
    scheduler = DeriveScheduler(**config, trained_betas=np.array([0.1, 0.3]))
    with tempfile.TemporaryDirectory() as folder:
        scheduler.save_pretrained(folder)
        loaded = DeriveScheduler.from_pretrained(folder)
    assert scheduler.betas.tolist() == loaded.betas.tolist()


def test_getattr(config):
    scheduler = DeriveScheduler(**config)
    scheduler.dummy_attribute = 5
    scheduler.register_to_config(test_attribute=5)
    logger = logging.get_logger("diffusers.configuration_utils")
    logger.setLevel(30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an ordinary attribute warns about nothing
        assert scheduler.dummy_attribute == 5
        assert hasattr(scheduler, "save_pretrained")
        assert scheduler.module.ORDER >= 1
    with pytest.warns(FutureWarning):
        assert scheduler.test_attribute == 5
    with pytest.raises(AttributeError) as error:
        _ = scheduler.does_not_exist
    assert str(error.value) == "'DeriveScheduler' object has no attribute 'does_not_exist'"


def test_no_kwargs_in_init():
    """diffusers' deprecated-kwargs check: no **kwargs in __init__, no _deprecated_kwargs."""
    assert "kwargs" not in inspect.signature(DeriveScheduler.__init__).parameters
    assert len(DeriveScheduler._deprecated_kwargs) == 0

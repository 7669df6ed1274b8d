"""Black-box verification of others' samplers (``derive verify --sampler``, ``derive compare``, edge sweeps), run
against the real diffusers schedulers at coarse settings."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from derive.verify import blackbox, edges, published
from derive.verify.compare import compare
from derive.verify.diffusers_target import DiffusersTarget
from derive.verify.problems import GaussianData, karras_sigmas
from derive.verify.targets import FunctionTarget, parse_target

from .conftest import GENERATED

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

COARSE = blackbox.settings(coarse=True)
DATA = GaussianData([0.3, -0.5, 1.0], [0.25, 1.0, 4.0])


def _euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """A user's own sampler in the k-diffusion convention: Euler on the probability-flow ODE."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def _ancestral(deterministic_step):
    """A k-diffusion-convention ancestral sampler (eta = 1), written here: ``deterministic_step(model, x,
    denoised, s, down)`` moves from ``s`` to ``sigma_down``, then fresh noise brings it up to the next level."""

    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
        noise_sampler = noise_sampler or (lambda s, t: torch.randn_like(x))
        for i in range(len(sigmas) - 1):
            s, t = sigmas[i], sigmas[i + 1]
            denoised = model(x, s * x.new_ones([x.shape[0]]))
            if callback is not None:
                callback({"x": x, "i": i, "sigma": s, "denoised": denoised})
            up = min(t, (t**2 * (s**2 - t**2) / s**2) ** 0.5)
            down = (t**2 - up**2) ** 0.5
            x = deterministic_step(model, x, denoised, s, down)
            if t > 0:
                x = x + noise_sampler(s, t) * up
        return x

    return sampler


def _euler_step(model, x, denoised, s, down):
    return x + (x - denoised) / s * (down - s)


def _dpm_2_step(model, x, denoised, s, down):
    """A midpoint step in log sigma (Euler for a step to 0)."""
    if down == 0:
        return _euler_step(model, x, denoised, s, down)
    mid = math.exp((math.log(s) + math.log(down)) / 2)
    x_mid = _euler_step(model, x, denoised, s, mid)
    d_mid = (x_mid - model(x_mid, mid * x.new_ones([x.shape[0]]))) / mid
    return x + d_mid * (down - s)


#: the ancestral Euler step (eta = 1)
_euler_ancestral = _ancestral(_euler_step)


def test_dpm_solver_3m_measures_order_two_and_fails_its_claim():
    report = blackbox.verify_target(
        parse_target("diffusers:DPMSolverMultistepScheduler", {"solver_order": 3}), COARSE, claimed=3
    )
    assert 1.6 < report.order("method") < 2.4
    assert not report.passed
    assert report.order("start") < 1.3  # its first step is first order: the reason the graded grid is needed


def test_unipc_corrected_order_two_measures_three():
    report = blackbox.verify_target(
        parse_target("diffusers:UniPCMultistepScheduler", {"solver_order": 2}), COARSE, claimed=3
    )
    assert report.order("method") > 2.8
    assert report.passed
    assert report.as_dict()["how"]["method"].startswith("graded grid")


def test_a_users_function_one_step_method_confirmed_by_single_steps():
    target = FunctionTarget(_euler, {}, spec="test:_euler")
    report = blackbox.verify_target(target, COARSE, claimed=2)
    assert 0.85 < report.order("method") < 1.15 and 0.8 < report.order("start") < 1.2
    assert not report.passed  # claimed 2: falls short
    assert "one-step method" in report.how["method"]


def test_installed_grid_reproduces_the_schedulers_own_run():
    """Installing the scheduler's own noise levels changes nothing but the float64 precision: the driven run
    matches diffusers' own loop (float32 tables) to float32 accuracy."""
    from diffusers import HeunDiscreteScheduler

    target = DiffusersTarget("HeunDiscreteScheduler", {})
    n = 10
    levels = target.own_levels(n)
    y0 = torch.tensor(DATA.sample_np(4, 0)) + levels[0] * torch.randn(
        4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    ours = target.run(DATA.denoiser_torch, y0, levels).output
    scheduler = HeunDiscreteScheduler()
    scheduler.set_timesteps(n)
    x = y0.to(torch.float32)
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        sigma = float(scheduler.sigmas[scheduler.step_index])  # Heun evaluates both stages at stored levels
        y = x_in.double() * math.sqrt(1 + sigma**2)
        eps = (y - DATA.denoiser_torch(y, sigma)) / sigma
        x = scheduler.step(eps.float(), t, x).prev_sample
    assert float((ours - x.double()).abs().max() / ours.abs().max()) < 1e-5


def test_exact_moments_agree_with_monte_carlo():
    """The exact weak computation (unit Brownian increments per batch row) against 40000 sampled runs."""
    target = FunctionTarget(_euler_ancestral, {}, spec="test:_euler_ancestral")
    levels = [*map(float, karras_sigmas(6, 0.1, 5.0)), 0.0]
    mean, var = blackbox.exact_moments(target, DATA, levels, len(levels) - 2)
    g = torch.Generator().manual_seed(1)
    y0 = torch.tensor(DATA.mean) + torch.sqrt(torch.tensor(DATA.var) + 25.0) * torch.randn(
        40000, 3, generator=g, dtype=torch.float64
    )
    out = target.run(
        DATA.denoiser_torch,
        y0,
        levels,
        noise=lambda a, b: torch.randn(40000, 3, generator=g, dtype=torch.float64),
    )
    sample = out.states[len(levels) - 2].numpy()
    assert np.all(np.abs(sample.mean(0) - mean) < 4 * np.sqrt(var / 40000))
    assert np.all(np.abs(sample.var(0) / var - 1) < 4 * math.sqrt(2 / 40000))


def test_stochastic_sampler_strong_and_weak_orders():
    report = blackbox.verify_target(
        parse_target("diffusers:EulerAncestralDiscreteScheduler"),
        blackbox.settings(True, paths=32, reference_factor=2),
        claimed=1,
    )
    assert report.dynamics == "sde" and report.kappa == "2"
    assert 0.7 < report.order("method") < 1.2
    assert 0.7 < report.order("strong") < 1.4
    assert 0.7 < report.order("weak") < 1.3


def test_compare_finds_where_two_implementations_part():
    module = GENERATED / "variant_dpmpp_2m.py"
    same = compare(
        parse_target(str(module)),
        parse_target("diffusers:DPMSolverMultistepScheduler", {"solver_order": 2}),
        steps=12,
    )
    assert same["first_different"] is None and same["largest"] < 1e-10
    other = compare(
        parse_target(str(module)),
        parse_target("diffusers:DPMSolverMultistepScheduler", {"solver_order": 3}),
        steps=12,
    )
    assert other["first_different"] == 3  # the third-order update starts at the third step, reaching level 3


def test_edge_sweep_finds_the_sde_dpmsolver_third_order_crash():
    target = parse_target(
        "diffusers:DPMSolverMultistepScheduler",
        {"solver_order": 3, "algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"},
    )
    sweep = edges.step_sweep(target, counts=range(1, 7))
    crashed = [row["steps"] for row in sweep["rows"] if "crash" in row]
    assert crashed and "UnboundLocalError" in sweep["rows"][crashed[0] - 1]["crash"]
    assert (
        edges.step_sweep(
            parse_target("diffusers:DPMSolverMultistepScheduler", {"solver_order": 3}), range(1, 7)
        )["flags"]
        == []
    )


def test_dtype_sweep_errors_shrink_with_precision():
    rows = edges.dtype_sweep(parse_target("diffusers:EulerDiscreteScheduler"), n=8)["rows"]
    assert rows["float64"]["relative_error"] == 0.0
    assert (
        rows["float32"]["relative_error"]
        < 1e-5
        < rows["float16"]["relative_error"]
        < rows["bfloat16"]["relative_error"]
        < 0.1
    )


def test_published_table_lists_at_least_25_rows_each_with_a_command():
    assert len(published.ROWS) >= 25
    assert len({row.key for row in published.ROWS}) == len(published.ROWS)
    for row in published.ROWS:
        assert row.command.startswith(("derive verify --sampler", "python -m derive.verify.published --only"))


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "derive.cli", *args], check=False, capture_output=True, text=True
    )


def test_cli_verify_sampler_exit_codes_and_json(tmp_path):
    path = tmp_path / "out.json"
    done = _cli(
        "verify",
        "--sampler",
        "diffusers:DPMSolverMultistepScheduler",
        "--config",
        '{"solver_order": 3}',
        "--claimed",
        "3",
        "--coarse",
        "--json",
        str(path),
    )
    assert done.returncode == 1, done.stderr
    (entry,) = json.loads(path.read_text())["samplers"]
    assert {"name", "claimed", "method", "as_used"} <= set(entry) and entry["claimed"] == 3
    for bad in (
        ["--sampler", "nope"],
        ["--sampler", "diffusers:Nope"],
        ["--sampler", "diffusers:EulerDiscreteScheduler", "--config", "[1]"],
        ["--claimed", "2", "--module", "ersde_order2"],
    ):
        done = _cli("verify", *bad)
        assert (
            done.returncode == 2
            and done.stderr.startswith("derive: error:")
            and "Traceback" not in done.stderr
        )


@pytest.mark.skipif(
    importlib.util.find_spec("k_diffusion") is None,
    reason="optional dependency: pip install --no-deps k-diffusion",
)
def test_kdiffusion_sampling_loads_on_its_own_and_matches_diffusers():
    """Optional-dependency test: k-diffusion's sample_dpmpp_2m and diffusers' DPM-Solver++(2M) are one method."""
    result = compare(
        parse_target("k_diffusion.sampling:sample_dpmpp_2m"),
        parse_target("diffusers:DPMSolverMultistepScheduler", {"solver_order": 2}),
        steps=10,
    )
    assert result["first_different"] is None


@pytest.mark.slow
def test_published_rows_keep_or_miss_their_claims_as_documented():
    results = published.measure(
        blackbox.settings(), {"dpmpp_3m", "unipc_bh2_2", "heun", "lms"}, with_edges=False
    )
    verdicts = {r["row"].key: r["report"].passed for r in results}
    assert verdicts == {"dpmpp_3m": False, "unipc_bh2_2": True, "heun": True, "lms": True}


#: the ancestral DPM-Solver-2 step (eta = 1)
_dpm_2_ancestral = _ancestral(_dpm_2_step)


def test_an_ancestral_sampler_is_judged_on_its_weak_order():
    """With the noise off an ancestral step follows its drift ODE to first order only (method about 1, which
    would wrongly fail a claim of 2); its weak order, exact on Gaussian data, carries the claim."""
    _dpm_2_ancestral.__name__ = "sample_dpm_2_ancestral"
    target = FunctionTarget(_dpm_2_ancestral, {}, spec="test:sample_dpm_2_ancestral")
    assert target.split_step() and not FunctionTarget(_euler, {}, spec="test:_euler").split_step()
    report = blackbox.verify_target(target, blackbox.settings(True, paths=8, reference_factor=2), claimed=2)
    assert report.order("method") < 1.3
    assert report.order("weak") > 1.8
    assert report.passed
    assert "weak order" in report.how["method"]


def test_a_partial_table_run_keeps_the_other_rows():
    old = "\n".join(["| h |", "| --- |", "| `dpmpp_1`: a | 1 |", "| `heun`: b | 2 |", "| `lms`: c | 3 |"])
    new = "\n".join(["| h2 |", "| --- |", "| `heun`: B | 20 |"])
    merged = published.merge_tables(old, new).splitlines()
    assert merged == ["| h2 |", "| --- |", "| `dpmpp_1`: a | 1 |", "| `heun`: B | 20 |", "| `lms`: c | 3 |"]


def test_a_discretization_error_is_not_flagged_as_residual_noise():
    """DPM-Solver++(2M) on its own schedule: a residual noise of 0.15 at 30 steps is a variance error below 1 %
    of the data's, so nothing is flagged; a sampler that leaves the noise of a last level of 0.5 in (its final
    step skipped) is flagged."""
    target = parse_target("diffusers:DPMSolverMultistepScheduler", {"solver_order": 2})
    sweep = edges.step_sweep(target, counts=[15, 30])
    rows = {row["steps"]: row for row in sweep["rows"]}
    assert rows[30]["residual"] > 0.1 and rows[30]["excess"] < edges.RESIDUAL_EXCESS
    assert not any("residual" in flag for flag in sweep["flags"])

    def stops_early(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return _euler(model, x, [*sigmas[:-2], sigmas[-2] * 0 + 0.5], extra_args, callback, disable)

    leaky = FunctionTarget(stops_early, {}, spec="test:stops_early")
    assert any("residual" in flag for flag in edges.step_sweep(leaky, counts=[15, 30])["flags"])

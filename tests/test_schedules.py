"""Derived step schedules: the interfaces of issue 15, the error kernels against measured local errors, and the
order-preserving start (as-used order = method order with the derived schedule, no extra model calls)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import sympy as sp
import torch

import derive
from derive.schedules.error_model import kernel, kernel_check, module_error_spec
from derive.verify.orders import fit_order
from derive.verify.problems import GaussianData

SIGMA_MAX, SIGMA_MIN = 80.0, 0.002


class Counted:
    """A Gaussian data denoiser that counts its calls (model(x, sigma) -> data prediction)."""

    def __init__(self, data):
        self.data, self.calls = data, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.data.denoiser_torch(x, sigma)


@pytest.mark.parametrize(
    "name", ["ersde_order2_phi_ode", "ersde_order3_phi_ode_pc", "ersde_order3_phi_ode_lambda"]
)
@pytest.mark.parametrize("nfe", [1, 3, 10])
def test_default_interface(name, nfe):
    mod = derive.load(name)
    s = derive.schedules.default(mod, nfe=nfe, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN)
    assert isinstance(s, torch.Tensor) and s.dtype == torch.float64 and s.ndim == 1
    assert len(s) == nfe + 1
    assert float(s[0]) == SIGMA_MAX and float(s[-1]) == SIGMA_MIN
    assert bool((s[1:] < s[:-1]).all())
    model = Counted(GaussianData(np.array([0.3, -0.2]), np.array([0.25, 0.01])))
    x = SIGMA_MAX * torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = mod.sample(model, x, s)
    assert model.calls == nfe and out.shape == x.shape and bool(torch.isfinite(out).all())


def test_tune_interface_and_cache(tmp_path):
    mod = derive.load("ersde_order3_phi_ode")
    data = GaussianData(np.array([0.5, -1.0, 0.0]), np.array([0.04, 0.5, 1.0]))
    model = Counted(data)
    x_pilot = SIGMA_MAX * torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cache = tmp_path / "schedule.json"
    report: dict = {}

    def tune(nfe, evaluations):
        return derive.schedules.tune(
            mod,
            model,
            x_pilot,
            nfe=nfe,
            sigma_max=SIGMA_MAX,
            sigma_min=SIGMA_MIN,
            cache=cache,
            report=report,
            evaluations=evaluations,
        )

    s = tune(8, 20)
    assert s.dtype == torch.float64 and len(s) == 9 and float(s[0]) == SIGMA_MAX and float(s[-1]) == SIGMA_MIN
    assert bool((s[1:] < s[:-1]).all())
    pilot, searched = report["pilot"], report["search"]
    assert report["cached"] is False and pilot["model_calls"] > 0
    # every model call is reported: the pilot's (two runs) and the search's (nfe per evaluated schedule)
    assert pilot["model_calls"] + searched["model_calls"] == model.calls
    assert searched["model_calls"] == 8 * searched["evaluations"] and 4 <= searched["evaluations"] <= 20
    assert pilot["reference_error"] < 1e-4
    stored = json.loads(cache.read_text())
    assert stored["pilot"]["model_calls"] == pilot["model_calls"] and "8/20" in stored["schedules"]
    assert cache.stat().st_size < 200_000  # a small file next to the user's
    calls = model.calls
    again = tune(8, 20)
    assert model.calls == calls and report["cached"] is True and torch.equal(again, s)
    # a new budget reuses the cached reference: only the search calls the model
    other = tune(5, 10)
    assert len(other) == 6 and report["cached"] is True
    assert model.calls - calls == report["search"]["model_calls"] == 5 * report["search"]["evaluations"]
    model.calls = 0
    mod.sample(model, x_pilot, s)
    assert model.calls == 8


def test_tune_is_never_worse_than_its_candidates_on_the_pilot():
    """The refined schedule's measured pilot error is at most the best candidate's (log-SNR, Karras, derived),
    and on narrow-component data with few calls the search improves it (measured against an exact flow)."""
    mod = derive.load("ersde_order3_phi_ode_lambda_pc")
    data = GaussianData(np.array([0.3, -0.5]), np.array([0.02**2, 0.6**2]))
    x_pilot = SIGMA_MAX * torch.randn(16, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    report: dict = {}
    s = derive.schedules.tune(
        mod,
        data.denoiser_torch,
        x_pilot,
        nfe=8,
        sigma_max=SIGMA_MAX,
        sigma_min=SIGMA_MIN,
        report=report,
        evaluations=60,
    )
    exact = torch.tensor(data.exact_flow(x_pilot.numpy(), SIGMA_MAX, SIGMA_MIN))
    rms, median = derive.schedules.search.errors(mod.sample(data.denoiser_torch, x_pilot, s), exact)
    value = derive.schedules.search.objective_value(rms, median)
    starts = report["search"]["starts"]
    best_start = min(derive.schedules.search.objective_value(v["rms"], v["median"]) for v in starts.values())
    assert value < best_start - math.log(1.5), (rms, median, starts)


def test_pilot_reference_meets_its_tolerance_against_the_exact_flow():
    """The pilot doubles its levels until its estimated error is below REFERENCE_TOLERANCE of the states' RMS;
    the estimate is checked against the closed-form flow of Gaussian data with one narrow coordinate."""
    from derive.schedules import MAX_PILOT_STEPS, REFERENCE_TOLERANCE, pilot_profile

    mod = derive.load("ersde_order3_phi_ode_am")
    data = GaussianData(np.array([0.3, -0.5]), np.array([0.01**2, 0.6**2]))
    x = SIGMA_MAX * torch.randn(8, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    model = Counted(data)
    _, cost, reference = pilot_profile(mod, model, x, SIGMA_MAX, SIGMA_MIN)
    exact = torch.tensor(data.exact_flow(x.numpy(), SIGMA_MAX, SIGMA_MIN))
    actual = float((reference - exact).pow(2).mean().sqrt())
    scale = float(exact.pow(2).mean().sqrt())
    assert cost["pilot_steps"] > 200 and cost["pilot_steps"] <= MAX_PILOT_STEPS  # 200 levels are not enough
    assert cost["reference_error"] <= REFERENCE_TOLERANCE * scale
    assert actual <= 3 * cost["reference_error"], (actual, cost)
    steps = cost["pilot_steps"]
    # the first estimate on 100 levels, then 200, 400, ... up to the final count, then one final prediction
    runs = [n for n in (200, 400, 800, 1600) if n <= steps]
    assert cost["model_calls"] == model.calls == 100 + sum(runs) + 1


def test_warp_keeps_endpoints_and_order():
    from derive.schedules.search import KNOTS, warp

    start = np.exp(np.linspace(math.log(80.0), math.log(0.002), 11))
    assert np.allclose(warp(start, np.zeros(KNOTS + 1), 3), start, rtol=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = warp(start, rng.normal(0, 1.5, KNOTS + 1), 3)
        assert out[0] == start[0] and out[-1] == start[-1] and np.all(np.diff(out) < 0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: derive.schedules.default(m, nfe=0, sigma_max=80.0, sigma_min=0.002), "nfe"),
        (lambda m: derive.schedules.default(m, nfe=2.5, sigma_max=80.0, sigma_min=0.002), "nfe"),
        (lambda m: derive.schedules.default(m, nfe=4, sigma_max=0.001, sigma_min=0.002), "sigma_min"),
        (lambda m: derive.schedules.default(object(), nfe=4, sigma_max=80.0, sigma_min=0.002), "module"),
        (
            lambda m: derive.schedules.tune(m, "x", torch.zeros(2, 2), nfe=4, sigma_max=8.0, sigma_min=0.1),
            "model",
        ),
        (lambda m: derive.recommend(nfe=0), "nfe"),
        (lambda m: derive.recommend(nfe=10, family="nope"), "family"),
        (lambda m: derive.recommend(nfe=10, dynamics="nope"), "dynamics"),
        (lambda m: derive.recommend(nfe=10, schedule="karras"), "schedule"),
        (
            lambda m: derive.schedules.tune(
                m, lambda x, s: x, torch.zeros(2, 2), nfe=4, sigma_max=8.0, sigma_min=0.1, evaluations=-1
            ),
            "evaluations",
        ),
    ],
)
def test_bad_input_names_the_argument(call, message):
    mod = derive.load("ersde_order2_phi_ode")
    with pytest.raises((ValueError, TypeError), match=message):
        call(mod)


@pytest.mark.parametrize("nfe", [3, 10, 40])
@pytest.mark.parametrize("dynamics", ["ode", "sde", "er"])
@pytest.mark.parametrize("schedule", ["tune", "default"])
def test_recommend_names_a_loadable_module(nfe, dynamics, schedule):
    name = derive.recommend(nfe=nfe, family="ersde", dynamics=dynamics, schedule=schedule)
    assert isinstance(name, str)
    mod = derive.load(name)
    assert mod.FAMILY == "ersde" and mod.SPEC["phi"] == {"ode": "s", "sde": "s**2"}.get(
        dynamics, mod.SPEC["phi"]
    )


# --------------------------------------------------------------------------------------------------
# the kernels: the derived weights' own error
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phi, variable, k, corrector, offsets",
    [
        ("s", "s", 1, False, []),
        ("s", "s", 3, False, [0.1, 0.25]),
        ("s", "lambda", 3, False, [0.07, 0.2]),
        ("s", "s", 2, True, [0.12]),
        ("s**2", "s", 2, False, [0.1]),
    ],
)
def test_kernel_is_the_order_condition_residual(phi, variable, k, corrector, offsets):
    got, want = kernel_check(phi, "data", variable, k, corrector, offsets, h=0.05)
    assert got == pytest.approx(want, rel=1e-12) and want != 0


_s, _tau = sp.symbols("s tau", positive=True)


def _exact_derivative(variable: str, k: int, tau: float, s_value: float) -> float:
    """d^k/du^k of tau^2 / sqrt(tau^2 + s^2) (x0 - mu per unit of the trajectory's noise), SymPy, at s."""
    expr = _tau**2 / sp.sqrt(_tau**2 + _s**2)
    for _ in range(k):
        expr = sp.diff(expr, _s) if variable == "s" else -_s * sp.diff(expr, _s)
    return float(expr.subs({_tau: tau, _s: s_value}))


def _local_error(mod, k: int, h: float, tau: float = 0.5, mu: float = 0.2):
    """(measured, predicted) local error of one step with k exact stored outputs on N(mu, tau^2) data.

    The step goes from s_i = 1 to e^{-h}; the earlier levels lie at log-steps 0.8 h, 1.3 h, 0.9 h, ... above it
    (unequal on purpose). The module runs from the exact state with the exact history (``history=``)."""
    data = GaussianData(np.array([mu]), np.array([tau**2]))
    ratios = [0.8, 1.3, 0.9, 1.1, 0.7]
    log_levels = [0.0]
    for j in range(k - 1):
        log_levels.insert(0, log_levels[0] + ratios[j] * h)
    levels = [math.exp(u) for u in log_levels] + [math.exp(-h)]
    c = 1.3  # (y - mu) / sqrt(tau^2 + s^2), constant along the exact flow
    y_at = [mu + c * math.sqrt(tau**2 + s**2) for s in levels]
    x0_at = [mu + c * tau**2 / math.sqrt(tau**2 + s**2) for s in levels]
    history = [torch.tensor([[v]], dtype=torch.float64) for v in x0_at[: k - 1]]
    x = torch.tensor([[y_at[k - 1]]], dtype=torch.float64)
    out = mod.sample(
        data.denoiser_torch, x, torch.tensor(levels, dtype=torch.float64), history=history or None
    )
    measured = y_at[-1] - float(out)
    phi, form, variable, _ = module_error_spec(mod)
    s_i = torch.tensor([levels[k - 1]], dtype=torch.float64)
    s_next = torch.tensor([levels[k]], dtype=torch.float64)
    offsets = []
    for j in range(1, k):
        other = levels[k - 1 - j]
        offsets.append(
            torch.tensor([other - levels[k - 1] if variable == "s" else -math.log(other / levels[k - 1])])
        )
    kappa = float(kernel(phi, form, variable, k)(s_i, s_next, offsets))
    predicted = c * _exact_derivative(variable, k, tau, levels[k - 1]) / math.factorial(k) * kappa
    return measured, predicted


@pytest.mark.parametrize(
    "name, k",
    [
        ("ersde_order1_phi_ode", 1),
        ("ersde_order2_phi_ode", 2),
        ("ersde_order3_phi_ode", 3),
        ("ersde_order4_phi_ode", 4),
        ("ersde_order3_phi_ode_lambda", 3),
        ("ersde_order2_phi_ode_lambda", 2),
    ],
)
def test_kernel_predicts_measured_local_errors(name, k):
    mod = derive.load(name)
    for h in (0.1, 0.05, 0.025):
        measured, predicted = _local_error(mod, k, h)
        # the leading term: the relative misfit is O(h) (the next term of the expansion); measured about
        # 0.2 h - 1.5 h for these modules
        assert abs(measured / predicted - 1) <= 2.0 * h, (h, measured, predicted)


# --------------------------------------------------------------------------------------------------
# the order-preserving start: as-used order with the derived schedule, at no extra model call
# --------------------------------------------------------------------------------------------------


def _offsets(variable, s, i, count):
    """u_{i-j} - u_i for j = 1 .. count - 1 (the module's node offsets), as 1-element tensors."""
    if variable == "s":
        return [s[i - j : i - j + 1] - s[i : i + 1] for j in range(1, count)]
    return [-torch.log(s[i - j : i - j + 1] / s[i : i + 1]) for j in range(1, count)]


@pytest.mark.parametrize(
    "name",
    [
        "ersde_order4_phi_ode",
        "ersde_order6_phi_ode",
        "ersde_order3_phi_ode_lambda_pc",
        "ersde_order3_phi_ode_am",
    ],
)
def test_kernel_weights_are_the_modules_weights(name):
    """The weights the optimiser guards (pre * integral of rho times each node's Lagrange basis polynomial)
    against the module's own coefficient and correction tables, on a schedule with unequal steps."""
    from derive.methods import METHODS

    mod = derive.load(name)
    phi, form, variable, method = module_error_spec(mod)
    s = torch.tensor([80.0, 31.0, 9.0, 4.1, 1.3, 0.5, 0.21, 0.07, 0.02, 0.002], dtype=torch.float64)
    _, _, weights, _ = mod.coefficient_table(s)
    corrections = (
        mod.correction_table(s, weights) if hasattr(mod, "correction_table") else [None] * len(weights)
    )
    drop = METHODS[method].corrector_drop
    for i, (w, c) in enumerate(zip(weights, corrections)):
        ours = kernel(phi, form, variable, len(w)).weights(
            s[i : i + 1], s[i + 1 : i + 2], _offsets(variable, s, i, len(w))
        )
        np.testing.assert_allclose(ours[0].numpy(), mod.WEIGHT_SIGN * np.array(w), rtol=1e-12, atol=1e-14)
        if c is None:
            continue
        full = [c[0], *(c[j + 1] + w[j] for j in range(len(w)))]
        kc = max(len(w) - drop, 1)
        new = (
            s[i + 1 : i + 2] - s[i : i + 1]
            if variable == "s"
            else -torch.log(s[i + 1 : i + 2] / s[i : i + 1])
        )
        nodes = [new, *_offsets(variable, s, i, kc)]
        ours = kernel(phi, form, variable, kc, True).weights(s[i : i + 1], s[i + 1 : i + 2], nodes)
        np.testing.assert_allclose(
            ours[0].numpy(), mod.WEIGHT_SIGN * np.array(full[: kc + 1]), rtol=1e-12, atol=1e-14
        )
        assert max(map(abs, full[kc + 1 :]), default=0.0) < 1e-15


@pytest.mark.parametrize(
    "name",
    [
        *(f"ersde_order{k}_phi_ode" for k in (2, 3, 4, 5, 6)),
        "ersde_order3_phi_ode_am",
        "ersde_order3_phi_ode_lambda_pc",
    ],
)
@pytest.mark.parametrize("nfe, sigma_max, sigma_min", [(12, 80.0, 0.002), (64, 5.0, 0.1)])
def test_derived_schedule_keeps_every_stored_output(name, nfe, sigma_max, sigma_min):
    """After the start, no step of the derived schedule grows so abruptly that the module drops a stored
    output (which would lower that step's order below the one the error model assumed)."""
    from derive.schedules import _lengths

    mod = derive.load(name)
    s = derive.schedules.default(mod, nfe=nfe, sigma_max=sigma_max, sigma_min=sigma_min)
    assert _lengths(mod, s) == [min(i + 1, mod.ORDER) for i in range(nfe)]


#: (problem, order) pairs measured outside method order +-0.2 (docs/schedules.md): order 6, where the float64
#: floor leaves no point above it beyond N = 256, so that the fit reaches back to N = 32, before the graded
#: start's ramp is asymptotic (local orders at 128 -> 256: 6.02 and 6.06); kept as strict expected failures
_OFF_ORDER = {("gaussian", 6), ("gmm", 6)}
_ORDER_CASES = [
    pytest.param(
        problem,
        order,
        marks=[
            *([] if (problem, order) == ("gaussian", 3) else [pytest.mark.slow]),
            *(
                [pytest.mark.xfail(strict=True, reason="fit reaches the pre-asymptotic N = 32: 5.59 / 6.51")]
                if (problem, order) in _OFF_ORDER
                else []
            ),
        ],
    )
    for problem in ("gaussian", "gmm")
    for order in range(1, 7)
]


@pytest.mark.parametrize("problem_name, order", _ORDER_CASES)
def test_as_used_order_with_derived_schedule(problem_name, order):
    """verify's problems (Gaussian 5 -> 0.1, mixture 5 -> 0.3), the sampler's own start, four halvings
    (verify's least-squares fit: its finest four points above the float64 floor, coarser ones if they agree).

    In CI: order 3 on the Gaussian problem (the coarse setting); the rest with -m slow."""
    from derive.verify import harness
    from derive.verify.problems import reference_flow

    problem = harness.make_problem(problem_name, harness.Settings())
    mod = derive.load(f"ersde_order{order}_phi_ode")
    y0 = problem.initial_states(16, 0)
    if problem_name == "gaussian":
        ref = problem.data.exact_flow(y0, problem.sigma_max, problem.sigma_min)
    else:
        ref = reference_flow(problem.data.denoiser_np, y0, problem.sigma_max, problem.sigma_min)
    steps = (32, 64, 128, 256, 512)
    errors = []
    for n in steps:
        model = Counted(problem.data)
        s = derive.schedules.default(mod, nfe=n, sigma_max=problem.sigma_max, sigma_min=problem.sigma_min)
        y = mod.sample(model, torch.tensor(y0), s).numpy()
        assert model.calls == n
        errors.append(float(np.sqrt(np.mean((y - ref) ** 2))))
    fit = fit_order([1.0 / n for n in steps], errors)
    assert abs(fit.order - order) <= 0.2, (fit.order, errors)


# --------------------------------------------------------------------------------------------------
# handing a schedule to the integrations and the CLI
# --------------------------------------------------------------------------------------------------


def test_diffusers_scheduler_runs_exactly_the_given_levels():
    from derive.integrations.diffusers import DeriveScheduler

    mod = derive.load("ersde_order3_phi_ode")
    s = derive.schedules.default(mod, nfe=6, sigma_max=14.0, sigma_min=0.03)
    sched = DeriveScheduler(module="ersde_order3_phi_ode", prediction_type="sample")
    sched.set_sigmas(s)
    assert len(sched.timesteps) == 6
    data = GaussianData(np.array([0.4, -0.3]), np.array([0.09, 0.5]))
    y0 = 14.0 * torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = y0 / math.sqrt(1 + 14.0**2)  # VP coordinates
    calls = 0
    for i, t in enumerate(sched.timesteps):
        level = float(s[i])
        x0 = data.denoiser_torch(x * math.sqrt(1 + level**2), level)
        calls += 1
        x = sched.step(x0, t, x).prev_sample
    y = x * math.sqrt(1 + 0.03**2)
    want = mod.sample(data.denoiser_torch, y0, s)
    assert calls == 6
    torch.testing.assert_close(y, want, rtol=1e-9, atol=1e-9)


def test_wrap_sampler_default_schedule_keeps_range_and_calls():
    from derive.integrations.kdiffusion import wrap_sampler

    sampler = wrap_sampler("ersde_order2_phi_ode", schedule="default")
    model = Counted(GaussianData(np.array([0.1]), np.array([0.04])))
    x = 10.0 * torch.randn(3, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sigmas = torch.tensor([10.0, 3.0, 1.0, 0.3, 0.05, 0.0], dtype=torch.float64)
    out = sampler(model, x, sigmas)
    assert model.calls == 5 and bool(torch.isfinite(out).all())
    mod = derive.load("ersde_order2_phi_ode")
    s = derive.schedules.default(mod, nfe=4, sigma_max=10.0, sigma_min=0.05)
    want = mod.sample(model, x, torch.cat([s, s.new_zeros(1)]))
    torch.testing.assert_close(out, want)
    with pytest.raises(ValueError, match="schedule"):
        wrap_sampler("ersde_order2_phi_ode", schedule="karras")


def test_cli_schedule_json():
    from click.testing import CliRunner

    from derive.cli import main

    result = CliRunner().invoke(main, ["schedule", "--module", "ersde_order2_phi_ode", "--nfe", "4"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["module"] == "ersde_order2_phi_ode" and len(out["sigmas"]) == 5
    assert out["sigmas"][0] == 80.0 and out["sigmas"][-1] == 0.002
    bad = CliRunner().invoke(main, ["schedule", "--module", "ersde_order2_phi_ode", "--nfe", "0"])
    assert bad.exit_code == 2 and "nfe" in bad.output and "Traceback" not in bad.output


def test_recommendation_is_the_selection_files():
    """derive.recommend's tables are the NFE ranges benchmarks/schedules.py --select wrote for each mode."""
    import pathlib

    from derive.recommend import RECOMMENDED, RECOMMENDED_DATA_FREE

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "schedules_select.json"
    stored = json.loads(path.read_text())
    assert [tuple(r) for r in stored["tune"]["ranges"]] == RECOMMENDED[("ersde", "ode")]
    assert [tuple(r) for r in stored["default"]["ranges"]] == RECOMMENDED_DATA_FREE[("ersde", "ode")]
    for mode in ("tune", "default"):
        assert stored[mode]["chosen"] == min(stored[mode]["score"], key=stored[mode]["score"].get)

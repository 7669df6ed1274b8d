"""``derive verify``: the convergence harness, its building blocks and the command.

The coarse verification of every checked-in module (parametrised from generated/MANIFEST.json, so a new module
is covered the moment it is checked in) runs in CI; the full sweep with more halvings, both problems and the
warm-up is marked ``slow`` (deselect with ``-m "not slow"``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from derive.errors import SpecError
from derive.verify import harness, tolerances
from derive.verify.command import verify
from derive.verify.problems import GaussianData

MODULE_NAMES = sorted(harness.manifest())


def _describe(report: harness.ModuleReport) -> str:
    lines = [f"{report.name} (K={report.order}, {report.dynamics}):"]
    for s in report.studies:
        order = "exact" if s.exact else ("n/a" if s.order is None else f"{s.order:.3f}")
        local = " ".join(f"{q:.2f}" for q in s.fit.local_orders) if s.fit else s.fit_error
        lines.append(f"  {s.label}: {order} claim {s.claim} passed {s.passed}; local orders {local}")
    return "\n".join(lines)


def _fresh(name: str):
    """A private copy of a checked-in module (patching it cannot leak into other tests)."""
    return harness.load_module_file(harness.GENERATED_DIR / f"{name}.py", f"{name}_private")


def _drop_highest_taylor_term(module):
    """Break a module the way a derivation bug would: the highest Taylor weight c_{K-1} becomes 0."""
    original = module.taylor_weights
    module.taylor_weights = lambda sigma, sigma_next: [
        *original(sigma, sigma_next)[:-1],
        torch.zeros_like(sigma),
    ]
    return module


def _fold_oldest_weight(module):
    """Perturb the history weights: the oldest output's weight is moved onto the newest (sum unchanged)."""
    original = module.coefficient_table

    def table(sigmas):
        ratios, stds, weights, finals = original(sigmas)
        folded = [(w[0] + w[-1], *w[1:-1], 0.0) if len(w) > 1 else w for w in weights]
        return ratios, stds, folded, finals

    module.coefficient_table = table
    return module


# --------------------------------------------------------------------------------------------------
# every checked-in module meets its claims (coarse)
# --------------------------------------------------------------------------------------------------


def test_manifest_is_not_empty():
    assert MODULE_NAMES, "generated/MANIFEST.json lists no modules"


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_coarse_verification(name):
    module = harness.load_checked_in(name)
    report = harness.verify_module(module, harness.Settings.coarse(), name=name)
    assert report.passed, _describe(report)
    # the derived weights' order is always measured somewhere (never only "exact" on a degenerate problem)
    method = [s for s in report.find("method") if not s.exact]
    assert method, _describe(report)
    assert all(s.order >= module.METHOD_ORDER - tolerances.ODE_ORDER_TOL for s in method), _describe(report)
    if report.dynamics == "sde":
        assert report.find("strong") and report.find("weak"), _describe(report)


# --------------------------------------------------------------------------------------------------
# the harness detects wrong orders
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ersde_order3_phi_ode", "ersde_order3"])
def test_dropped_taylor_term_lowers_the_method_order_and_fails(name):
    module = _drop_highest_taylor_term(_fresh(name))
    report = harness.verify_module(module, harness.Settings.coarse(), name=f"{name}_broken")
    (method,) = report.find("method")
    assert method.order == pytest.approx(2.0, abs=0.2), _describe(report)  # K - 1
    assert method.passed is False
    assert not report.passed
    assert method in report.failures()


def test_perturbed_history_weights_fail_method_and_weak_order():
    module = _fold_oldest_weight(_fresh("ersde_order2"))
    report = harness.verify_module(module, harness.Settings.coarse(), name="ersde_order2_broken")
    (method,) = report.find("method")
    (weak,) = report.find("weak")
    assert method.order < 1.3 and method.passed is False, _describe(report)
    assert weak.order < 1.3 and weak.passed is False, _describe(report)
    assert not report.passed


# --------------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------------


def test_substep_warmup_restores_the_order_the_plain_start_loses():
    module = harness.load_checked_in("ersde_order3_phi_ode")
    report = harness.verify_module(module, harness.Settings.coarse(warmup="substep"))
    (plain,) = report.find("as-used")
    (warm,) = report.find("as-used+warmup")
    (method,) = report.find("method")
    assert plain.order < 2.5, _describe(report)  # the one- and two-output start limits it to 2
    assert warm.order >= 3 - tolerances.ODE_ORDER_TOL, _describe(report)
    # same order as with exact starting values, and a start error of the same order: errors within 15%
    assert warm.errors == pytest.approx(method.errors, rel=0.15)


def test_substep_count_grows_so_that_the_start_is_accurate_to_order_k():
    assert harness.substep_count(1, 512) == 2
    assert harness.substep_count(2, 512) == 4
    assert harness.substep_count(3, 8) == 8
    assert harness.substep_count(3, 32) == 16  # 8 * (32/8)^(1/2)
    assert harness.substep_count(4, 32) == 64  # 16 * (32/8)^1
    assert harness.warmup_levels(1, 64) == ()
    for order in (2, 3, 4, 6, 8):
        for n in (8, 64, 512):
            levels = harness.warmup_levels(order, n)
            total = math.prod(levels)
            # recursive: every outer level has more sub-steps than K - 1; the product is the refinement needed
            assert all(s == max(8, order) for s in levels[:-1])
            assert harness.substep_count(order, n) <= total < harness.substep_count(order, n) * max(8, order)
    assert harness.warmup_levels(6, 512) == (8, 8, 8, 8, 8, 8)  # 8^6 = 262144 = 64 * 64^2


@pytest.mark.parametrize("name", ["ersde_order2", "vpsde_order2_sde"])  # data form and noise form
def test_brownian_path_gives_each_grid_its_exact_unit_variance_noise(name):
    module = harness.load_checked_in(name)
    settings = harness.Settings()
    fine = harness.schedule(settings, harness.make_problem("gaussian", settings), 64)
    path = harness.BrownianPath(module, fine, (4, 3), seed=0)
    _, fine_stds, _, _ = module.coefficient_table(fine)
    for n in (8, 16, 64):
        sigmas, sampler = path.noise_sampler(n)
        assert torch.equal(sigmas, fine[:: 64 // n])
        _, stds, _, _ = module.coefficient_table(sigmas)
        q = 64 // n
        for i in range(n):
            block = range(i * q, (i + 1) * q)
            variance = sum(
                (path.prefix[(i + 1) * q] / path.prefix[k + 1]) ** 2 * fine_stds[k] ** 2 for k in block
            )
            assert float(variance) == pytest.approx(stds[i] ** 2, rel=1e-10)
            z = sampler(sigmas[i], sigmas[i + 1])
            assert z.shape == (4, 3)
    # on the fine grid itself the sampler returns the stored unit normals
    sigmas, sampler = path.noise_sampler(64)
    assert torch.allclose(sampler(sigmas[3], sigmas[4]) * fine_stds[3], path.noise[3], rtol=1e-12, atol=0)


@pytest.mark.parametrize(("name", "warmup"), [("ersde_order2", "none"), ("vpsde_order3_sde", "substep")])
def test_exact_moments_match_one_run_per_noise(name, warmup):
    """The batched linear-response computation equals separate runs, one per unit noise."""
    module = harness.load_checked_in(name)
    settings = harness.Settings()
    data = GaussianData(np.array(settings.gaussian_mean), np.array(settings.gaussian_var))
    centred = GaussianData(np.zeros(data.d), data.var)
    sigmas = harness.schedule(settings, harness.make_problem("gaussian", settings), 6)
    mean, var = harness.exact_moments(module, data, sigmas, settings.sigma_max, warmup)

    keys = harness._step_keys(module, sigmas, warmup)

    def run(x, hit):
        def sampler(sigma, sigma_next):
            key = (float(sigma), float(sigma_next))
            return torch.ones_like(x) if key == hit else torch.zeros_like(x)

        return harness.run_sampler(
            module, centred.denoiser_torch, x, sigmas, warmup=warmup, noise_sampler=sampler
        )

    zero = torch.zeros(1, data.d, dtype=torch.float64)
    a = run(torch.ones(1, data.d, dtype=torch.float64), None)[0].numpy()
    b = np.stack([run(zero, key)[0].numpy() for key in keys])
    expected = a**2 * (data.var + settings.sigma_max**2) + (b**2).sum(0)
    assert var == pytest.approx(expected, rel=1e-12)
    assert mean == pytest.approx(data.mean, abs=1e-12)  # the schemes reproduce constants


def test_weak_error_vanishes_as_the_step_shrinks():
    module = harness.load_checked_in("ersde_order2_phi_sde")
    settings = harness.Settings()
    data = GaussianData(np.array(settings.gaussian_mean), np.array(settings.gaussian_var))
    target = data.var + settings.sigma_min**2
    errors = []
    problem = harness.make_problem("gaussian", settings)
    for n in (16, 64, 256):
        _, var = harness.exact_moments(
            module, data, harness.schedule(settings, problem, n), settings.sigma_max
        )
        errors.append(float(np.max(np.abs(var - target))))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3 * float(np.max(target))


def test_drift_reference_closed_form_matches_dop853():
    settings = harness.Settings()
    problem = harness.make_problem("gaussian", settings)
    y0 = problem.initial_states(4, seed=3)
    for name in ("ersde_order2", "ersde_order2_phi_sde"):  # phi = s (exp(s^0.3) + 10) and s^2
        module = harness.load_checked_in(name)
        closed = harness.Reference(problem, module, "sde").flow(y0, settings.sigma_max, settings.sigma_min)
        kappa = harness.kappa_function(module)
        numeric = harness.drift_flow(
            problem.data.denoiser_np, kappa, y0, settings.sigma_max, settings.sigma_min
        )
        assert closed == pytest.approx(numeric, rel=1e-10, abs=1e-10)
    # kappa = 1: the drift ODE is the probability-flow ODE
    ode = harness.load_checked_in("ersde_order2_phi_ode")
    assert harness.kappa_function(ode)(np.array([0.1, 1.0, 7.0])) == pytest.approx([1.0, 1.0, 1.0])
    exact = problem.data.exact_flow(y0, settings.sigma_max, settings.sigma_min)
    drift = harness._gauss_legendre_log(
        lambda s: np.ones_like(s), problem.data.var, settings.sigma_max, settings.sigma_min
    )
    assert problem.data.mean + (y0 - problem.data.mean) * np.exp(drift) == pytest.approx(exact, rel=1e-13)


def test_history_quantity_follows_the_update_form():
    y = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    d = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    assert torch.equal(harness.history_quantity(harness.load_checked_in("ersde_order2"), y, d, 2.0), d)
    noise = harness.history_quantity(harness.load_checked_in("vpsde_order2_ode"), y, d, 2.0)
    assert torch.allclose(noise, (y - d) / 2.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8,16,32,64", (8, 16, 32, 64)),
        (" 64, 16,32 ,128", (16, 32, 64, 128)),
        ("3,6,12,24,48", (3, 6, 12, 24, 48)),
    ],
)
def test_parse_steps_accepts(text, expected):
    assert harness.parse_steps(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "8,16,32",
        "8,16,x,64",
        "8,16,32,64,",
        "8,16,16,64",
        "8,16,24,64",
        "0,8,16,32",
        "-8,16,32,64",
        "8.5,16,32,64",
    ],
)
def test_parse_steps_rejects(text):
    with pytest.raises(SpecError):
        harness.parse_steps(text)


def test_settings_and_loading_reject_bad_input():
    with pytest.raises(SpecError):
        harness.Settings(problems=("nope",))
    with pytest.raises(SpecError):
        harness.Settings(warmup="sometimes")
    with pytest.raises(SpecError, match="unknown module"):
        harness.load_checked_in("ersde_order99")
    with pytest.raises(SpecError, match="at least the order"):
        harness.verify_module(harness.load_checked_in("ersde_order4"), harness.Settings(steps=(2, 4, 8, 16)))


def test_verification_leaves_torch_threads_alone():
    before = torch.get_num_threads()
    harness.verify_module(harness.load_checked_in("ersde_order1_phi_ode"), harness.Settings.coarse())
    assert torch.get_num_threads() == before


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------


def test_cli_writes_json_and_plot_and_prints_a_table(tmp_path):
    out, plot = tmp_path / "out.json", tmp_path / "out.png"
    result = CliRunner().invoke(
        verify, ["--module", "ersde_order2_phi_ode", "--coarse", "--json", str(out), "--plot", str(plot)]
    )
    assert result.exit_code == 0, result.output
    assert (
        "derive verify" in result.stdout
        and "ersde_order2_phi_ode" in result.stdout
        and "pass" in result.stdout
    )
    data = json.loads(out.read_text())
    assert data["passed"] is True
    assert data["settings"]["steps"] == list(harness.COARSE_STEPS)
    assert set(data["problems"]) == {"gaussian", "gmm"}
    assert data["tolerances"]["method_order"]["tolerance"] == tolerances.ODE_ORDER_TOL
    (module,) = data["modules"]
    assert module["module"] == "ersde_order2_phi_ode" and module["claimed_order"] == 2
    method = next(s for s in module["studies"] if s["kind"] == "method")
    assert math.isclose(method["fit"]["order"], 2.0, abs_tol=0.2)
    assert len(method["errors"]) == len(harness.COARSE_STEPS) and method["passed"] is True
    assert set(method["errors_by_steps"]) == {str(n) for n in harness.COARSE_STEPS}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--module", "ersde_order2_phi_ode", "--steps", "8,16,x"], "--steps"),
        (["--module", "ersde_order2_phi_ode", "--steps", "8,16,32"], "at least 4"),
        (["--module", "no_such_module"], "unknown module"),
        (["--module", "ersde_order2_phi_ode", "--plot", "out.gif"], "--plot"),
        ([], "say what to verify"),
        (["--all", "--module", "ersde_order2_phi_ode"], "not both"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, message):
    result = CliRunner().invoke(verify, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("derive: error:") and message in lines[0]


def test_cli_renders_and_verifies_a_spec(tmp_path):
    out = tmp_path / "spec.json"
    result = CliRunner().invoke(verify, ["--order", "2", "--phi", "ode", "--coarse", "--json", str(out)])
    assert result.exit_code == 0, result.output
    (module,) = json.loads(out.read_text())["modules"]
    assert module["module"] == "ersde_order2_phi_ode" and module["source"] == "rendered"
    assert module["spec"]["phi"] == "s" and module["passed"] is True


def test_cli_exits_1_when_a_claim_fails(monkeypatch):
    broken = _drop_highest_taylor_term(_fresh("ersde_order3_phi_ode"))
    monkeypatch.setattr(harness, "load_checked_in", lambda name, folder=None: broken)
    result = CliRunner().invoke(verify, ["--module", "ersde_order3_phi_ode", "--coarse"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.stdout and "fall short" in result.stdout


# --------------------------------------------------------------------------------------------------
# full sweep (slow)
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", MODULE_NAMES)
def test_full_verification(name):
    """Default step counts (five halvings), Gaussian data and the mixture, with the warm-up studies."""
    module = harness.load_checked_in(name)
    settings = harness.Settings(problems=("gaussian", "gmm"), warmup="substep")
    report = harness.verify_module(module, settings, name=name)
    assert report.passed, _describe(report)
    for s in report.find("as-used+warmup"):
        if not s.exact:
            assert s.order >= module.ORDER - tolerances.ODE_ORDER_TOL, _describe(report)

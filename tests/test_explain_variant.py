"""``derive explain --variant``: published samplers as special cases of the derivation or stated departures."""

from __future__ import annotations

import pytest
import sympy as sp
from click.testing import CliRunner

from derive import variants
from derive.explain.variant import build_variant_explanation

H = sp.Symbol("h", real=True)


def _formulas(explanation, key):
    step = next(step for step in explanation.steps if step.key == key)
    return {str(f.lhs): f.rhs for f in step.formulas}, step


def _shown(expr):
    return expr.xreplace({variants.step: H})


def test_dpmpp_3m_shows_the_factor_of_two():
    explanation = build_variant_explanation("dpmpp_3m")
    assert explanation.passed
    formulas, step = _formulas(explanation, "stage3")
    c0, c1, c2, _ = variants.taylor_symbols("data")
    assert formulas["d_0"] == 0 and formulas["d_1"] == 0
    defects = [f for f in step.formulas if str(f.lhs) == "d_2"]
    assert sp.simplify(defects[0].rhs + c2) == 0  # the p = 2 condition misses exactly c_2, half of 2! c_2
    assert sp.simplify(defects[1].rhs + variants.step**3 / 6) == 0  # ~ -h^3/6 at equal steps (phi = s)
    assert any("carries 1/2 of the p = 2 Taylor term" in text for text in step.prose)
    assert step.notes == ("order 2",)


def test_dpmpp_2m_midpoint_against_heun():
    midpoint = build_variant_explanation("dpmpp_2m")
    _, step = _formulas(midpoint, "stage2")
    d1 = [f.rhs for f in step.formulas if str(f.lhs) == "d_1"]
    assert sp.simplify(d1[-1] + variants.step**3 / 12) == 0  # the -h^3/12 term
    assert step.notes == ("order 2",)
    heun = build_variant_explanation("dpmpp_2m_heun")
    _, step = _formulas(heun, "stage2")
    assert step.title.endswith("the derived update")


@pytest.mark.parametrize(
    ("key", "titles", "order"),
    [
        ("ersde_solver_1", ["the derived update"], 1),
        ("ersde_solver_2", ["the derived update", "the derived update"], 2),
        ("ersde_solver_3", ["the derived update", "the derived update", "a departure"], 2),
        ("mrs_ode_2_data", ["the derived update", "the derived update"], 2),
        ("mrs_ode_3_data", ["the derived update", "the derived update", "a departure"], 2),
        ("ddim", ["the derived update"], 1),
    ],
)
def test_special_case_or_departure(key, titles, order):
    explanation = build_variant_explanation(key)
    assert explanation.passed
    stages = [step for step in explanation.steps if step.key.startswith("stage")]
    assert [step.title.split(": ", 1)[1] for step in stages] == titles
    assert stages[-1].notes == (f"order {order}",)


def test_ersde_solver_3_misses_p2_by_c1_delta1():
    explanation = build_variant_explanation("ersde_solver_3")
    _, step = _formulas(explanation, "stage3")
    c0, c1, c2, _ = variants.taylor_symbols("data")
    d2 = next(f.rhs for f in step.formulas if str(f.lhs) == "d_2")
    assert sp.simplify(d2 - c1 * variants.delta1) == 0


def test_ddpm_betatilde_is_v_and_beta_is_a_departure():
    explanation = build_variant_explanation("ddpm")
    checks = {check.name: check for check in explanation.checks}
    assert checks["betatilde is v"].passed and checks["beta is not v"].passed


def test_cli_variant_and_its_errors():
    from derive.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["explain", "--variant", "dpmpp_3m"])
    assert result.exit_code == 0, result.output
    assert "carries 1/2 of the p = 2 Taylor term" in result.output and "order 2, not 3" in result.output
    for args, message in (
        (["--variant", "nope"], "unknown variant 'nope'"),
        (["--variant", "dpmpp_3m", "--order", "2"], "--variant takes no derivation options"),
    ):
        result = runner.invoke(main, ["explain", *args])
        assert result.exit_code == 2 and message in result.output


def test_ersde_solver_3_names_the_estimate_that_misreads_the_quadratic():
    explanation = build_variant_explanation("ersde_solver_3")
    _, step = _formulas(explanation, "stage3")
    shown = [f for f in step.formulas if f.note == "on (u - u_i)^2"]
    assert [str(f.lhs) for f in shown] == ["D1"]  # D2 is exact on the quadratic, D1 is not
    assert sp.simplify(shown[0].rhs - variants.delta1) == 0
    assert not [
        f
        for f in _formulas(build_variant_explanation("dpmpp_3m"), "stage3")[1].formulas
        if f.note.startswith("on (u")
    ]

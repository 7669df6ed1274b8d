"""Tests of derive.symbolic.admissibility.check_phi: which noise-scale functions the ER SDE accepts."""

from __future__ import annotations

import re
import time

import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from derive.errors import AdmissibilityError, DeriveError
from derive.symbolic import admissibility
from derive.symbolic.admissibility import check_phi
from derive.symbolic.expression import PRESETS, parse_expression, resolve_phi, variable_symbol

s = variable_symbol("s")

ADMISSIBLE = [
    "s",  # probability-flow ODE: phi/s constant, h = 0 exactly
    "s**2",  # reverse SDE
    "s**1.5",
    PRESETS["default"],
    "s*(1+s)",
    "s*exp(s)",
    "s*log(1+s)+s",
    "s * (1 + s^2)",
    "s*(10+atan(s))",
    "s*(2+tanh(s-3))",  # not proved symbolically: passes on the grid
    "s*erf(s)",
    "s*cosh(s)",
    "s**1000",
]


def _phi(text: str) -> sympy.Expr:
    return parse_expression(text)


@pytest.mark.parametrize("text", ADMISSIBLE)
def test_admissible_phi_passes(text):
    assert check_phi(_phi(text), s) is None


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_are_admissible(preset):
    _, phi = resolve_phi(preset)
    check_phi(phi, s)


def test_grid_path_is_used_when_no_symbolic_proof():
    phi = _phi("s*(2+tanh(s-3))")
    numerator = s * sympy.diff(phi, s) - phi
    assert not admissibility._proves_nonnegative(numerator)
    assert admissibility._proves_nonnegative(s * sympy.diff(s**2, s) - s**2)
    check_phi(phi, s)


# (phi text, substrings the message must contain)
INADMISSIBLE = [
    ("sqrt(s)", ["phi(s)/s must be non-decreasing (h^2 >= 0)", "d/ds(phi/s) = -500000.0 < 0 at s = 0.0001"]),
    ("s*exp(-s)", ["phi(s)/s must be non-decreasing", "< 0 at s = 0.0001"]),
    ("-s", ["phi must be positive and finite, but phi(0.0001) = -0.0001"]),
    ("s - 1", ["phi must be positive and finite, but phi(0.0001) = -0.9999"]),
    ("1/(s-1)", ["phi is singular at s = 1 (phi = zoo)"]),
    ("s + 1/(s-1)**2", ["phi is singular at s = 1 (phi = zoo)"]),
    ("s + 1/(s**2-2)", ["phi is singular at s = sqrt(2)"]),
    ("s + 1/(s**3-3*s-1)", ["phi is singular at s = 1.87939"]),
    ("s*log(s-1)", ["phi is singular at s = 1"]),
    ("s/log(s)", ["phi is singular at s = 1 (phi = zoo)"]),
    ("s*tan(s)", ["phi is singular at s = pi/2 (phi = zoo)"]),
    ("s*(1 + 1/sin(s)**2)", ["phi is singular at s = pi"]),
    ("log(s)", ["phi must be positive and finite, but phi(0.0001) = -9.21034"]),
    ("s*(2+sin(s))", ["phi(s)/s must be non-decreasing"]),  # (phi/s)' = cos(s) < 0 on (pi/2, 3pi/2)
    ("s*(1+0.001*sin(s))", ["phi(s)/s must be non-decreasing"]),
    # a constant is reported as "must depend on s" (it would also make phi/s = 3/s decreasing)
    ("3", ["phi must depend on s", "constant"]),
    ("sqrt(s-1)", ["phi must be real, but phi(0.0001)"]),
    ("exp(exp(s))", ["phi must be positive and finite", "overflows"]),
    ("s + abs(s-1)", ["phi(s)/s must be non-decreasing"]),
    ("s**s", ["phi(s)/s must be non-decreasing"]),
    ("s + s/(s-1) - 1/(s-1)", ["phi is singular at s = 1 (phi = nan)"]),
]


def _witness(message: str, name: str) -> float:
    match = re.search(name + r" = (-?[0-9.e+\-]+)", message)
    assert match, message
    return float(match.group(1).rstrip("."))


@pytest.mark.parametrize(("text", "needles"), INADMISSIBLE, ids=[t for t, _ in INADMISSIBLE])
def test_inadmissible_phi_is_rejected_naming_the_condition(text, needles):
    phi = _phi(text)
    with pytest.raises(AdmissibilityError) as info:
        check_phi(phi, s)
    message = str(info.value)
    assert message.startswith("phi is not admissible: ")
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    if "non-decreasing" in message:
        # the witness is a real violation: d/ds(phi/s) at the reported s is negative and matches
        x = _witness(message, "at s")
        slope = float(sympy.diff(phi / s, s).subs(s, sympy.Float(x, 30)).evalf(30))
        assert slope < 0
        assert _witness(message, r"d/ds\(phi/s\)") == pytest.approx(slope, rel=1e-3)


def test_sin_witness_lies_where_cos_is_negative():
    with pytest.raises(AdmissibilityError) as info:
        check_phi(_phi("s*(2+sin(s))"), s)
    x = _witness(str(info.value), "at s")
    assert sympy.cos(x) < 0


def test_other_symbols_are_named():
    t = sympy.Symbol("t")
    with pytest.raises(AdmissibilityError, match=r"phi must depend only on s, but it also contains t$"):
        check_phi(s * t, s)
    alpha, beta = sympy.symbols("alpha beta")
    with pytest.raises(AdmissibilityError, match="contains alpha, beta"):
        check_phi(s * (alpha + beta), s)


def test_symbol_with_other_assumptions_gets_a_hint():
    plain = sympy.Symbol("s")
    with pytest.raises(AdmissibilityError, match=r"variable_symbol\('s'\)"):
        check_phi(plain**2, s)
    check_phi(plain**2, plain)  # fine when the caller passes the matching symbol


def test_undefined_function_is_rejected():
    with pytest.raises(AdmissibilityError, match="differentiable"):
        check_phi(sympy.Function("f")(s), s)


def test_narrow_dip_between_grid_points_is_found_by_refinement(monkeypatch):
    # (phi/s)' = 1 - 10 sech^2(100 (s - 1)) < 0 only for |s - 1| < 0.018; s = 1 lies midway between two grid
    # points, so only the refinement of local minima finds it.
    phi = _phi("s*(2 + s - 0.1*tanh(100*(s-1)))")
    with pytest.raises(AdmissibilityError) as info:
        check_phi(phi, s)
    x = _witness(str(info.value), "at s")
    assert abs(x - 1) < 0.02
    monkeypatch.setattr(admissibility, "REFINED_MINIMA", 0)
    check_phi(phi, s)  # the grid alone misses it


def test_interval_bounds_are_respected():
    check_phi(_phi("s - 1"), s, s_lo=2, s_hi=100)  # positive and phi/s = 1 - 1/s increasing there
    with pytest.raises(AdmissibilityError, match=r"phi\(0.5\) = -0.5"):
        check_phi(_phi("s - 1"), s, s_lo=0.5, s_hi=100)
    check_phi(_phi("1/(s-1) + s**3"), s, s_lo=2, s_hi=10)  # the pole at 1 is outside
    with pytest.raises(AdmissibilityError, match="singular at s = 1"):
        check_phi(_phi("1/(s-1) + s**3"), s, s_lo=0.5, s_hi=10)


@pytest.mark.parametrize(("s_lo", "s_hi"), [(0, 1), (-1, 1), (2, 1), (1, 1), (1, float("inf")), ("a", 1)])
def test_bad_interval_is_a_value_error(s_lo, s_hi):
    with pytest.raises(ValueError):
        check_phi(s**2, s, s_lo=s_lo, s_hi=s_hi)


def test_bad_argument_types():
    with pytest.raises(TypeError):
        check_phi("s**2", s)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        check_phi(s**2, "s")  # type: ignore[arg-type]


def test_admissibility_error_is_a_derive_error():
    with pytest.raises(DeriveError):
        check_phi(-s, s)


@settings(max_examples=25, deadline=None)
@given(st.fractions(min_value=sympy.Rational(1, 10), max_value=3, max_denominator=20))
def test_power_laws_are_admissible_iff_exponent_at_least_one(p):
    phi = s ** sympy.Rational(p.numerator, p.denominator)
    if p >= 1:
        check_phi(phi, s)
    else:
        with pytest.raises(AdmissibilityError, match="non-decreasing"):
            check_phi(phi, s)


@settings(max_examples=20, deadline=None)
@given(
    st.sampled_from(["1", "1.5", "2", "0.9", "0.5"]),
    st.sampled_from(["0", "0.001", "1", "-0.001", "-1"]),
)
def test_power_times_exponential(p, c):
    # r = s phi'/phi - 1 = p - 1 + c s, which must be >= 0 on [1e-4, 1e4]
    phi = _phi(f"s**{p}*exp({c}*s)")
    p_value, c_value = float(p), float(c)
    admissible = p_value - 1 + c_value * 1e-4 >= 0 and p_value - 1 + c_value * 1e4 >= 0
    if admissible:
        check_phi(phi, s)
    else:
        with pytest.raises(AdmissibilityError, match="non-decreasing"):
            check_phi(phi, s)


def test_typical_phi_is_fast():
    check_phi(s**2, s)  # warm up caches
    for text in [*PRESETS.values(), "s*(1+s)", "s*exp(s)", "s*log(1+s)+s", "s*(2+tanh(s-3))"]:
        phi = _phi(text)
        start = time.perf_counter()
        check_phi(phi, s)
        assert time.perf_counter() - start < 0.5, text
    for text in ["sqrt(s)", "s*(2+sin(s))", "1/(s-1)"]:
        phi = _phi(text)
        start = time.perf_counter()
        with pytest.raises(AdmissibilityError):
            check_phi(phi, s)
        assert time.perf_counter() - start < 0.5, text

"""The derivation itself: identities, special cases, and the derivative weights, checked exactly."""

from __future__ import annotations

import mpmath
import pytest
import sympy as sp

from derive.checks import generic_checks, interpolation_check
from derive.coefficients import _mp_quad_weight
from derive.errors import DerivationError
from derive.symbolic.ersde import closed_form_weight, derive_step, s, sigma, sigma_next
from derive.symbolic.expression import parse_expression
from derive.symbolic.interpolation import derivative_weights, offset_symbols


def test_generic_identities_hold_for_every_phi():
    """The four identities proved for a generic phi, each an exact symbolic zero."""
    checks = {check.name: check for check in generic_checks()}
    assert set(checks) == {"drift", "exact mean", "variance", "integration by parts"}
    for check in checks.values():
        assert (check.method, check.residual) == ("symbolic", "0"), check


@pytest.mark.parametrize("phi_text", ["s", "s**2", "s*(exp(s**0.3) + 10)", "s*exp(s/4)", "s**3 + s"])
def test_step_ratio_and_variance_match_an_mpmath_ode_solution(phi_text):
    """Independent of the closed forms: integrate the homogeneous drift dr/ds = phi'/phi r and the variance
    equation dV/ds = 2 phi'/phi V - h^2 (h^2 = 2 s (s phi'/phi - 1)) backwards from s = sigma (r = 1, V = 0)
    with mpmath's Taylor-series ODE solver at 25 digits, and compare with the step's r and V."""
    phi = parse_expression(phi_text)
    step = derive_step(phi)
    kappa = sp.lambdify(s, sp.diff(phi, s) / phi, "mpmath")
    for a, b in ((2.0, 0.5), (0.3, 0.1)):
        with mpmath.workdps(25):
            a_, b_ = mpmath.mpf(a), mpmath.mpf(b)

            def rhs(t, y):  # in t = -s, so that the solver runs forward
                sv = -t
                k = kappa(sv)
                return [-k * y[0], -(2 * k * y[1] - 2 * sv * (sv * k - 1))]

            r, v = mpmath.odefun(rhs, -a_, [mpmath.mpf(1), mpmath.mpf(0)])(-b_)
            subs = {sigma: sp.Float(a, 30), sigma_next: sp.Float(b, 30)}
            want_r = mpmath.mpf(str(sp.N(step.ratio.subs(subs), 30)))
            want_v = mpmath.mpf(str(sp.N(step.noise_variance.subs(subs), 30)))
            assert abs(r - want_r) <= mpmath.mpf("1e-20") * abs(want_r), (phi_text, r, want_r)
            assert abs(v - want_v) <= mpmath.mpf("1e-20") * max(abs(want_v), b**2), (phi_text, v, want_v)


def test_phi_s_is_ddim():
    """phi = s: r = s'/s, no noise, c_0 = 1 - r: y' = x0 + (s'/s)(y - x0), the DDIM update in VE form."""
    step = derive_step(s)
    assert sp.simplify(step.ratio - sigma_next / sigma) == 0
    assert step.noise_variance == 0
    assert sp.simplify(step.noise_fraction) == 0  # h = 0: the probability-flow ODE
    y, x0 = sp.symbols("y x0")
    update = step.ratio * y + closed_form_weight(step, 0) * x0
    assert sp.simplify(update - (x0 + sigma_next / sigma * (y - x0))) == 0


def test_phi_s_squared_is_ddpm_ancestral():
    """phi = s^2: the posterior q(y_{s'} | y_s, x0) of the VE process, i.e. DDPM ancestral sampling.

    Posterior of y_{s'} = x0 + s' e1 given y_s = y_{s'} + sqrt(s^2 - s'^2) e2 (Gaussian conditioning):
    mean x0 + (s'^2/s^2)(y - x0), variance s'^2 (s^2 - s'^2) / s^2.
    """
    step = derive_step(s**2)
    y, x0 = sp.symbols("y x0")
    mean = step.ratio * y + closed_form_weight(step, 0) * x0
    posterior_mean = x0 + sigma_next**2 / sigma**2 * (y - x0)
    posterior_var = sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2
    assert sp.simplify(mean - posterior_mean) == 0
    assert sp.simplify(step.noise_variance - posterior_var) == 0
    assert sp.simplify(step.noise_fraction - 1) == 0  # h = g: the reverse SDE


@pytest.mark.parametrize("text", ["s", "s**2", "s**1.5", "s*(exp(s**0.3) + 10)", "s*(1 + s)"])
def test_weights_agree_with_independent_quadrature(text):
    """c_n from the closed form (where SymPy finds one) equals mpmath's quadrature of its definition."""
    phi = parse_expression(text)
    step = derive_step(phi)
    for n in range(3):
        closed = closed_form_weight(step, n)
        a, b = 1.5, 0.625
        with mpmath.workdps(40):
            # the definition, integrated directly in s with mpmath's adaptive Gauss-Legendre
            f = sp.lambdify(s, sp.diff(phi, s) / phi**2 * (s - a) ** n / sp.factorial(n), "mpmath")
            definition = sp.lambdify(s, phi, "mpmath")(mpmath.mpf(b)) * mpmath.quad(
                f, [b, a], method="gauss-legendre"
            )
            assert abs(_mp_quad_weight(step, n, a, b) - definition) < 1e-28 * abs(definition)
            if closed is not None:
                value = sp.N(closed.subs({sigma: sp.Rational(3, 2), sigma_next: sp.Rational(5, 8)}), 40)
                assert abs(mpmath.mpf(str(value)) - definition) < 1e-28 * abs(definition)


def test_closed_forms_found_for_power_laws_and_not_for_default():
    assert closed_form_weight(derive_step(s), 2) is not None
    assert closed_form_weight(derive_step(s ** sp.Rational(3, 2)), 1) is not None
    assert closed_form_weight(derive_step(parse_expression("s*(exp(s**0.3) + 10)")), 1) is None


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_derivative_weights_exact_on_polynomials(k):
    interpolation_check(k)
    D = derivative_weights(k)
    deltas = offset_symbols(k)
    # and wrong on degree k: the monomial x^k is not reproduced by the (k-1)-th derivative unless k == 1
    if k > 1:
        subs = {d: sp.Integer(j + 1) for j, d in enumerate(deltas)}
        nodes = [0, *range(1, k)]
        got = sum(D[k - 1][j].subs(subs) * nodes[j] ** k for j in range(k))
        assert got != 0


def test_derivative_weights_are_not_backward_differences():
    """Second derivative from three unequally spaced points differs from the plain second difference."""
    D = derivative_weights(3)
    d1, d2 = offset_symbols(3)
    plain = 2 / ((d2 - d1) * d1)  # weight of x_{i-1}'s neighbour in a naive divided difference
    assert sp.simplify(D[2][0] - plain) != 0


def test_check_failure_is_a_derivation_error(monkeypatch):
    """A broken identity stops emission with DerivationError (exit code 3)."""
    import derive.checks as checks

    monkeypatch.setattr(checks, "_is_zero", lambda expr: False)
    with pytest.raises(DerivationError) as info:
        checks.step_checks(derive_step(s), {}, lambda n, a, b: 1)
    assert info.value.exit_code == 3


def test_definition_weight_against_hand_solved_cases():
    """phi = s: c_0 = 1 - s'/sigma and c_1 = (s' - sigma) - s' log(s'/sigma) by hand, at 50 digits."""
    from derive.checks import definition_weight

    a, b = mpmath.mpf("1.5"), mpmath.mpf("0.4")
    with mpmath.workdps(50):
        assert abs(definition_weight(s, 0, a, b) - (1 - b / a)) < mpmath.mpf(10) ** -45
        expected = (b - a) - b * mpmath.log(b / a)
        assert abs(definition_weight(s, 1, a, b) - expected) < mpmath.mpf(10) ** -45


def test_step_checks_catch_a_wrong_ratio_variance_or_weight():
    """The checks solve the equations the step comes from: a perturbed ratio, variance or closed weight fails."""
    import dataclasses

    from derive import checks
    from derive.symbolic.ersde import closed_form_weight

    step = derive_step(s**2)
    closed = {n: closed_form_weight(step, n) for n in range(3)}
    names = {check.name for check in checks.step_checks(step, closed)}
    assert names == {"ratio and variance", "c_0 closed form", "c_1 closed form", "c_2 closed form"}
    for field, wrong in [
        ("ratio", step.ratio * (1 + (sigma - sigma_next) ** 2)),
        ("noise_variance", step.noise_variance * sp.Rational(101, 100)),
    ]:
        with pytest.raises(DerivationError):
            checks.step_checks(dataclasses.replace(step, **{field: wrong}), {})
    with pytest.raises(DerivationError, match="closed form of c_1"):
        checks.step_checks(step, {**closed, 1: closed[1] * (1 + sp.Rational(1, 10**20))})

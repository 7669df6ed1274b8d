"""Long steps: every coefficient accurate up to the longest step a module accepts, and longer steps refused.

A module accepts steps with sigma_next / sigma >= MIN_STEP_RATIO (a log-step h = log(sigma / sigma_next) of up
to 20.7), the range over which the generator verified each coefficient in mpmath. Here the modules' float64
coefficients are compared with integrals of their definitions computed in mpmath by this file (tanh-sinh
quadrature in log s, split at every unit of log s, scaled to the integrand's size; nothing from derive's own planner or quadrature):

    data form:   c_n = phi(s') int_{s'}^{s} phi'/phi^2 (u - u_i)^n / n! dx,   v = phi(s')^2 int h^2 / phi^2 dx
    noise form:  e_n = int_{s'}^{s} x phi'/phi (u - u_i)^n / n! dx,           w = int h^2 dx
    h^2 = 2 x (x phi'/phi - 1);  whole-step weights: the same densities against the Lagrange basis of the nodes.

Before this range was enforced, single steps with h of 25-50 lost up to 7 digits (phi = s^2 closed forms,
the lambda variable) and order 7-8 weights became NaN at h = 50.
"""

from __future__ import annotations

import json
import math

import mpmath
import pytest
import sympy as sp
import torch

from derive.coefficients import MIN_STEP_RATIO, TARGET

from .conftest import GENERATED, load_module

LONGEST = -math.log(MIN_STEP_RATIO) * (1 - 1e-12)
ALL_NAMES = sorted(json.loads((GENERATED / "MANIFEST.json").read_text()))
#: one module per evaluation path: quadrature (default phi), closed forms with series (phi = s^2), closed forms
#: in s and in lambda at the highest orders, Adams, the noise form, the families, a published variant
REPRESENTATIVE = [
    "ersde_order3",
    "ersde_order3_phi_sde",
    "ersde_order6_phi_ode",
    "ersde_order4_phi_ode_lambda",
    "ersde_order3_phi_ode_lambda_adams",
    "vpsde_order3_sde",
    "mrsde_order3_sde",
    "flow_order3_sde",
    "variant_dpmpp_3m",
]
S = sp.Symbol("s", positive=True)


class Reference:
    """The module's coefficients from their definitions, in mpmath (30 digits)."""

    def __init__(self, module):
        phi = sp.nsimplify(sp.sympify(module.SPEC["phi"], locals={"s": S}), rational=True)
        self.phi = sp.lambdify(S, phi, "mpmath")
        self.dphi = sp.lambdify(S, sp.diff(phi, S), "mpmath")
        self.form = module.FORM
        self.lam = module.SPEC.get("variable", "s") == "lambda"

    def u(self, x):
        return -mpmath.log(x) if self.lam else x

    def _integral(self, f, s0, s1):
        """int_{s1}^{s0} f(x) dx, in v = log(x / s0), split at every unit of v."""
        h = mpmath.log(s0 / s1)
        points = [-h, *[-mpmath.mpf(k) for k in range(int(h), 0, -1) if k < h], mpmath.mpf(0)]

        def g(v):
            return f(s0 * mpmath.exp(v)) * s0 * mpmath.exp(v)

        # mpmath's tolerance is absolute: integrate relative to the integrand's size at mid-step
        scale = abs(g(-h / 2)) or 1
        return scale * mpmath.quad(lambda v: g(v) / scale, points)

    def density(self, x, s1):
        if self.form == "data":
            return self.phi(s1) * self.dphi(x) / self.phi(x) ** 2
        return x * self.dphi(x) / self.phi(x)

    def taylor(self, sigma, sigma_next, count):
        s0, s1 = mpmath.mpf(sigma), mpmath.mpf(sigma_next)
        return [
            self._integral(
                lambda x: self.density(x, s1) * (self.u(x) - self.u(s0)) ** n / mpmath.factorial(n), s0, s1
            )
            for n in range(count)
        ]

    def variance(self, sigma, sigma_next):
        s0, s1 = mpmath.mpf(sigma), mpmath.mpf(sigma_next)

        def h2(x):
            return 2 * x * (x * self.dphi(x) / self.phi(x) - 1)

        if self.form == "data":
            return self.phi(s1) ** 2 * self._integral(lambda x: h2(x) / self.phi(x) ** 2, s0, s1)
        return self._integral(h2, s0, s1)

    def weights(self, nodes, sigma_next, sign):
        """sign * int density * l_j(u) over the step from nodes[0] (the newest) for each stored output j."""
        s0, s1 = mpmath.mpf(nodes[0]), mpmath.mpf(sigma_next)
        us = [self.u(mpmath.mpf(n)) for n in nodes]

        def basis(j, value):
            return mpmath.fprod((value - us[m]) / (us[j] - us[m]) for m in range(len(us)) if m != j)

        return [
            sign * self._integral(lambda x: self.density(x, s1) * basis(j, self.u(x)), s0, s1)
            for j in range(len(us))
        ]


def _relative(got, exact):
    return float(abs(mpmath.mpf(got) - exact) / abs(exact)) if exact != 0 else abs(got)


def _single_step(name, sigmas, log_steps):
    module = load_module(name)
    reference = Reference(module)
    worst = {}
    with mpmath.workdps(30):
        for sigma in sigmas:
            for h in log_steps:
                sigma_next = sigma * math.exp(-h)
                a = torch.tensor([sigma], dtype=torch.float64)
                b = torch.tensor([sigma_next], dtype=torch.float64)
                got = [float(value) for value in module.taylor_weights(a, b)]
                exact = reference.taylor(sigma, sigma_next, len(got))
                errors = [_relative(g, e) for g, e in zip(got, exact)]
                errors.append(
                    _relative(float(module.noise_variance(a, b)), reference.variance(sigma, sigma_next))
                )
                worst[(sigma, h)] = max(errors)
    return worst


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_single_step_coefficients_up_to_the_longest_step(name):
    """Measured worst relative error: 1.6e-15 over these points, and over the slow sweep below (four sigmas
    from 1e-3 to 1e4, seven log-steps from 0.01 to the longest)."""
    worst = _single_step(name, [80.0], [5.0, LONGEST])
    assert max(worst.values()) <= TARGET, worst


@pytest.mark.slow
@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_single_step_coefficients_over_the_whole_range(name):
    worst = _single_step(name, [1e-3, 1.0, 80.0, 1e4], [0.01, 0.5, 2.0, 5.0, 10.0, 15.0, LONGEST])
    assert max(worst.values()) <= TARGET, worst


@pytest.mark.parametrize("h", [5.0, LONGEST])
@pytest.mark.parametrize(
    "name",
    [
        "ersde_order3",
        "ersde_order6_phi_ode",
        "ersde_order4_phi_ode_lambda",
        "ersde_order3_phi_ode_lambda_adams",
        "vpsde_order3_sde",
    ],
)
def test_multistep_weights_with_long_history_steps(name, h):
    """Every step of the schedule as long as h: the last step's weights on all ORDER outputs against the
    Lagrange-basis integrals, relative to sum |w| (what an error in the weights does to the state)."""
    module = load_module(name)
    sigmas = [80.0 * math.exp(-h * j) for j in range(module.ORDER + 1)]
    _, _, weights, _ = module.coefficient_table(torch.tensor(sigmas, dtype=torch.float64))
    got = weights[-1]
    nodes = list(reversed(sigmas[:-1]))[: len(got)]
    with mpmath.workdps(30):
        exact = Reference(module).weights(nodes, sigmas[-1], module.WEIGHT_SIGN)
        scale = mpmath.fsum(abs(w) for w in exact)
        errors = [float(abs(mpmath.mpf(g) - e) / scale) for g, e in zip(got, exact)]
    assert max(errors) <= 1e-13, (len(got), errors)


@pytest.mark.parametrize("h", [21.0, 25.0, 50.0, 100.0])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_longer_steps_are_refused_before_the_first_model_call(name, h):
    module = load_module(name)
    calls = []

    def model(x, sigma, **kwargs):
        calls.append(sigma)
        return x

    sigmas = [80.0, 80.0 * math.exp(-h), 0.0]
    with pytest.raises(
        ValueError, match=r"step 0 \(sigma 80 -> .*\) is longer than this module's coefficients"
    ):
        module.sample(model, torch.zeros(1, 2, dtype=torch.float64), sigmas)
    assert calls == []
    # the same long step into sigma = 0 is a final step: it returns the prediction and is accepted
    module.sample(model, torch.zeros(1, 2, dtype=torch.float64), [80.0, 0.0])


@pytest.mark.slow
@pytest.mark.parametrize("variable", ["s", "lambda"])
def test_order_8_weights_with_long_history_steps(variable, tmp_path):
    """Before the range was enforced, order 7-8 weights became NaN / Inf with log-steps of 50 in the history.
    Measured: at most 2.7e-16 of sum |w| for log-steps of 5, 15 and the longest."""
    from derive.api import generate

    path = tmp_path / f"order8_{variable}.py"
    path.write_text(generate(family="ersde", order=8, phi="s", variable=variable))
    module = load_module(path.stem, tmp_path)
    for h in (5.0, 15.0, LONGEST):
        sigmas = [80.0 * math.exp(-h * j) for j in range(module.ORDER + 1)]
        _, _, weights, _ = module.coefficient_table(torch.tensor(sigmas, dtype=torch.float64))
        got = weights[-1]
        assert len(got) == 8
        nodes = list(reversed(sigmas[:-1]))
        with mpmath.workdps(30):
            exact = Reference(module).weights(nodes, sigmas[-1], module.WEIGHT_SIGN)
            scale = mpmath.fsum(abs(w) for w in exact)
            assert max(float(abs(mpmath.mpf(g) - e) / scale) for g, e in zip(got, exact)) <= 1e-13, h

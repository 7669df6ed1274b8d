"""The answers on docs/exercises.md, each derived again here with SymPy from its definition.

Every ``answer: NAME = EXPR`` line of the page must have a derivation below and agree with it; every
derivation below must have its answer on the page.
"""

import pathlib
import re

import sympy as sp

from derive import variants

PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "exercises.md"
s, s_i, s_n, p = sp.symbols("s s_i s_n p", positive=True)
d1, c0, c1, c2 = sp.symbols("d1 c0 c1 c2", real=True)
NAMES = {"s": s, "s_i": s_i, "s_n": s_n, "p": p, "d1": d1, "c0": c0, "c1": c1, "c2": c2}


def _weight(phi, n, a=s_i, b=s_n):
    """c_n = phi(b) int_b^a phi'/phi^2 (s - a)^n / n! ds, by SymPy's integrate."""
    density = sp.diff(phi, s) / phi**2 * (s - a) ** n / sp.factorial(n)
    return sp.simplify(phi.subs(s, b) * sp.integrate(density, (s, b, a)))


def _order2_weights():
    """Collect the weights of P_i, P_i-1 in c0 P_i + c1 (P_i-1 - P_i)/d1 (the line through both)."""
    P0, P1 = sp.symbols("P0 P1")
    term = sp.expand(c0 * P0 + c1 * (P1 - P0) / d1)
    return term.coeff(P0), term.coeff(P1)


def _three_m_terms():
    """DPM-Solver++(3M)'s D2 term (weight c2/h^2) on the prediction (u - u_i)^2, from derive.variants' D2."""
    estimate = variants.DPM_D2_3M
    nodes = (0, variants.delta1, variants.delta2)
    outputs = {variants.outputs[j]: nodes[j] ** 2 for j in range(3)}
    term = sp.cancel(c2 / variants.step**2 * estimate.expr.subs(outputs))
    return term, 2 * c2


def _expected():
    w0, w1 = _order2_weights()
    sample = {s_i: 1, s_n: sp.Rational(1, 2), d1: sp.Rational(1, 2)}
    weights_sde = {c0: _weight(s**2, 0).subs(sample), c1: _weight(s**2, 1).subs(sample)}
    term, needed = _three_m_terms()
    return {
        "r_sde": (s**2).subs(s, s_n) / (s**2).subs(s, s_i),
        "v_sde": s_n**2 - s_i**2 * (s_n**2 / s_i**2) ** 2,
        "c0_sde": _weight(s**2, 0),
        "fraction_power": sp.simplify(s * sp.diff(s**p, s) / s**p - 1),
        "c1_ode": _weight(s, 1),
        "c1_sde": _weight(s**2, 1),
        "w0_order2": w0,
        "w1_order2": w1,
        "w0_sample_sde": w0.subs(sample).subs(weights_sde),
        "w1_sample_sde": w1.subs(sample).subs(weights_sde),
        "d2_term_3m": term,
        "d2_needed": needed,
    }


def _answers():
    text = PAGE.read_text(encoding="utf-8")
    found = re.findall(r"`answer: (\w+) = ([^`]+)`", text)
    return {name: sp.sympify(expr, locals=NAMES) for name, expr in found}


def test_every_answer_is_derived_and_every_derivation_answered():
    assert set(_answers()) == set(_expected())


def test_answers_agree_with_the_derivations():
    expected = _expected()
    for name, answer in _answers().items():
        assert sp.simplify(answer - expected[name]) == 0, (name, answer, expected[name])


def test_a_wrong_answer_would_fail():
    expected = _expected()
    assert sp.simplify(sp.sympify("c0 + c1/d1", locals=NAMES) - expected["w0_order2"]) != 0
    assert sp.simplify(sp.sympify("2*c2", locals=NAMES) - expected["d2_term_3m"]) != 0


def test_start_page_sample_step_numbers():
    """The numbers of docs/start.md's worked step (s_i = 1, s_i+1 = 0.5, s_i-1 = 1.5), derived again."""
    text = (PAGE.parent / "start.md").read_text(encoding="utf-8")
    sample = {s_i: 1, s_n: sp.Rational(1, 2)}
    c1_ode = _weight(s, 1).subs(sample)
    w0, w1 = _order2_weights()
    numbers = {c0: sp.Rational(1, 2), c1: c1_ode, d1: sp.Rational(1, 2)}
    for value in (c1_ode, w0.subs(numbers), w1.subs(numbers)):
        assert f"{float(value):.5f}" in text, value
    assert "0.1875" in text and f"{float(sp.sqrt(sp.Rational(3, 16))):.4f}" in text

"""The methods beyond Taylor: the predictor-corrector's weights and the float32 path, against mpmath.

* Corrector weights of every pc module (as emitted: corrections relative to the predictor) against an
  independent mpmath evaluation (c_n by a 48-point Gauss-Legendre rule at 30 digits, D' from SymPy), for
  step ratios 0.05-20; the history guard may legitimately use fewer outputs, and only where the full set would
  exceed the documented amplification limit.
* The float32 path: every module's coefficient table cast to float32 agrees with mpmath within 1e-6
  (relative to the step's scale), for log-steps h = log(s_i / s_{i+1}) from 1e-10 to 50 and history step
  ratios 0.05-20.
* The pc corrector is applied only where the model is called anyway, and bad method/variable input is a
  one-line error.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import mpmath
import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from derive.coefficients import MIN_STEP_RATIO, _mp_quad_weight, mp_noise_variance
from derive.methods import METHODS
from derive.symbolic.ersde import derive_step
from derive.symbolic.ersde import sigma as sigma_symbol
from derive.symbolic.ersde import sigma_next as sigma_next_symbol
from derive.symbolic.expression import parse_expression
from derive.symbolic.interpolation import (
    corrector_derivative_weights,
    derivative_weights,
    next_offset,
    offset_symbols,
)

from .conftest import load_module, manifest

NAMES = sorted(manifest())
#: the modules with a corrector (pc, am: every registered method that has one)
PC = [n for n in NAMES if METHODS[manifest()[n]["method"]].corrector]
STEPS = {}


def _step(name):
    if name not in STEPS:
        STEPS[name] = derive_step(parse_expression(manifest()[name]["phi"]))
    return STEPS[name]


def _offset(name, a, b):
    """u(b) - u(a) at 34 digits in the module's expansion variable."""
    a, b = mpmath.mpf(a), mpmath.mpf(b)
    return b - a if manifest()[name].get("variable", "s") == "s" else -mpmath.log(b / a)


def _history(sigma, h, ratios, k):
    """s_{i-k+1} > ... > s_i = sigma: each earlier step ``ratio`` times the current step h (not compounded)."""
    history = [sigma]
    for r in ratios[: k - 1]:
        history.insert(0, history[0] + h * r)
    return history


def _exact(name, history, sigma_next, size, corrector):
    """Exact weights (34 digits): sum_n c_n D_nj, or the corrector's sum_n c_n D'_nj, on ``size`` old outputs."""
    module, step = load_module(name), _step(name)
    sigma = history[-1]
    offsets = [_offset(name, sigma, history[-1 - j]) for j in range(1, size)]
    variable = manifest()[name].get("variable", "s")
    if corrector:
        D, symbols, values, count = (
            corrector_derivative_weights(size),
            (next_offset, *offset_symbols(size)),
            [_offset(name, sigma, sigma_next), *offsets],
            size + 1,
        )
    else:
        D, symbols, values, count = derivative_weights(size), offset_symbols(size), offsets, size
    c = [
        module.WEIGHT_SIGN * _mp_quad_weight(step, n, sigma, sigma_next, module.FORM, variable)
        for n in range(count)
    ]
    return [
        mpmath.fsum(c[n] * sp.lambdify(symbols, D[n][j], "mpmath")(*values) for n in range(count))
        for j in range(count)
    ], c


def _amplification(w):
    return mpmath.fsum(abs(v) for v in w) / abs(mpmath.fsum(w))


@pytest.mark.parametrize("name", PC)
@settings(max_examples=8, deadline=None)
@given(
    sigma=st.floats(min_value=-3, max_value=3).map(lambda e: 10.0**e),
    t=st.floats(min_value=1e-6, max_value=0.9),
    ratios=st.lists(st.floats(min_value=0.05, max_value=20), min_size=4, max_size=4),
)
def test_corrector_weights_match_mpmath(name, sigma, t, ratios):
    module = load_module(name)
    k = module.ORDER
    h = sigma * t
    history = _history(sigma, h, ratios, k)
    # one more step after s_{i+1}, not final: the model is called at s_{i+1} and step i is corrected
    sched = torch.tensor([*history, sigma - h, (sigma - h) / 2], dtype=torch.float64)
    _, _, weights, _ = module.coefficient_table(sched)
    corrections = module.correction_table(sched, weights)
    assert corrections[-1] is None  # the last step: no model call after it
    i = len(history) - 1
    w, d = weights[i], corrections[i]
    assert d is not None and len(d) == len(w) + 1
    # the corrector's own weights on [P_{i+1}, P_i, ...]: the correction plus the predictor's (shifted by one)
    wc = [d[0], *(d[j + 1] + w[j] for j in range(len(w)))]
    # the corrector's own stored outputs: the predictor's less the ones its method drops, at least one
    full = max(len(w) - module.CORRECTOR_DROP, 1)
    assert all(wc[j + 1] == 0.0 for j in range(full, len(w)))
    used = full
    while used > 1 and wc[used] == 0.0:  # outputs the corrector's guard dropped
        used -= 1
    with mpmath.workdps(34):
        exact, c = _exact(name, history, sigma - h, used, corrector=True)
        for j in range(used + 1):
            assert abs(wc[j] - exact[j]) <= 1e-12 * max(abs(exact[j]), abs(c[0])), (j, wc[j], exact[j])
        assert mpmath.fsum(exact) == pytest.approx(float(c[0]), rel=1e-25)  # exact for constants
        if used < full:
            longer, _ = _exact(name, history, sigma - h, used + 1, corrector=True)
            assert _amplification(longer) > module.AMPLIFICATION_LIMIT[used + 2] * (1 - 1e-9)


@pytest.mark.parametrize("name", PC)
def test_corrector_is_skipped_where_no_model_call_follows(name):
    """No correction on the last step, on or before a final step to 0, or on or before a repeated sigma."""
    module = load_module(name)
    sched = [20.0, 10.0, 5.0, 5.0, 2.0, 1.0, 0.5, 0.0]
    _, _, weights, finals = module.coefficient_table(torch.tensor(sched, dtype=torch.float64))
    corrections = module.correction_table(torch.tensor(sched, dtype=torch.float64), weights)
    assert [d is not None for d in corrections] == [True, False, False, True, True, False, False]
    assert finals[-1] and all(math.isfinite(v) for d in corrections if d for v in d)


#: below float32's normal range (1.2e-38: a ratio phi(s')/phi(s) after a log-step of ~45 with phi = s^2) only
#: the subnormal spacing 2^-149 is available; such a coefficient is negligible next to the weights (~1)
FLOAT32_SUBNORMAL = 2.0**-149
#: the longest step the modules accept (longer ones are refused: tests/test_long_steps.py)
LONGEST_LOG_STEP = -math.log(MIN_STEP_RATIO) * (1 - 1e-12)


def _float32_case(name, sigma, log_step, ratios):
    module = load_module(name)
    k = module.ORDER
    sigma_next = sigma * math.exp(-log_step)
    h = sigma - sigma_next
    if not 0 < sigma_next < sigma or h <= 0:
        return
    history = _history(sigma, h, ratios, k)
    sched = torch.tensor([*history, sigma_next], dtype=torch.float64)
    ratio, std, weights, _ = module.coefficient_table(sched)
    got = torch.tensor(weights[-1], dtype=torch.float32).tolist()
    used = len(got)
    step = _step(name)
    with mpmath.workdps(34):
        exact, c = _exact(name, history, sigma_next, used, corrector=False)
        scale = max(abs(v) for v in exact)
        for j in range(used):
            assert abs(got[j] - exact[j]) <= 1e-6 * scale, (j, got[j], exact[j], scale)
        if used < k:
            longer, _ = _exact(name, history, sigma_next, used + 1, corrector=False)
            assert _amplification(longer) > module.AMPLIFICATION_LIMIT[used + 1] * (1 - 1e-9)
        if module.FORM == "data":
            r = sp.lambdify((sigma_symbol, sigma_next_symbol), step.ratio, "mpmath")(
                mpmath.mpf(sigma), mpmath.mpf(sigma_next)
            )
            assert (
                abs(float(torch.tensor(ratio[-1], dtype=torch.float32)) - r)
                <= 1e-6 * abs(r) + FLOAT32_SUBNORMAL
            )
        variance = mp_noise_variance(step, sigma, sigma_next, module.FORM)
        exact_std = mpmath.sqrt(variance)
        got_std = float(torch.tensor(std[-1], dtype=torch.float32))
        assert abs(got_std - exact_std) <= 1e-6 * exact_std + FLOAT32_SUBNORMAL, (got_std, exact_std)


@pytest.mark.parametrize("name", [n for n in NAMES if manifest()[n]["family"] == "ersde"])
@settings(max_examples=6, deadline=None)
@given(
    sigma=st.floats(min_value=-4, max_value=4).map(lambda e: 10.0**e),
    log_step=st.floats(min_value=-10, max_value=math.log10(LONGEST_LOG_STEP)).map(lambda e: 10.0**e),
    ratios=st.lists(st.floats(min_value=0.05, max_value=20), min_size=7, max_size=7),
)
def test_float32_coefficient_tables_match_mpmath(name, sigma, log_step, ratios):
    """Weights, ratio and noise std cast to float32 within 1e-6 of mpmath (relative to the largest weight)."""
    _float32_case(name, sigma, log_step, ratios)


@pytest.mark.parametrize("log_step", [1e-10, 1e-3, 1.0, 20.0, LONGEST_LOG_STEP])
@pytest.mark.parametrize(
    "name", ["ersde_order3_phi_ode", "ersde_order3_pc", "ersde_order3_phi_ode_lambda_adams"]
)
def test_float32_coefficient_tables_at_the_ends_of_the_range(name, log_step):
    _float32_case(name, 1.0, log_step, [0.05, 20.0, 1.0, 1.0, 1.0, 1.0, 1.0])


DERIVE = [sys.executable, "-m", "derive.cli"]


@pytest.mark.parametrize(
    "args, keyword",
    [
        (["--order", "2", "--variable", "t"], "no time of its own"),
        (["--family", "edm", "--order", "2", "--variable", "t"], "--variable s"),
        (["--family", "vesde", "--order", "2", "--variable", "t"], "--variable lambda"),
        (["--family", "vpsde", "--order", "2", "--variable", "t"], "inverse of its schedule"),
    ],
)
def test_refused_method_and_variable_are_one_line_errors(args, keyword, tmp_path):
    result = subprocess.run(
        DERIVE + ["gen", *args], cwd=tmp_path, capture_output=True, text=True, env={**os.environ}, timeout=120
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("derive: error: ") and keyword in lines[0], result.stderr
    assert not list(tmp_path.iterdir())


#: classical error constants on equal steps: Adams-Bashforth (K steps) and Adams-Moulton (K + 1 nodes)
ADAMS_BASHFORTH_ERROR = {
    1: sp.Rational(1, 2),
    2: sp.Rational(5, 12),
    3: sp.Rational(3, 8),
    4: sp.Rational(251, 720),
}
ADAMS_MOULTON_ERROR = {
    1: sp.Rational(1, 12),
    2: sp.Rational(1, 24),
    3: sp.Rational(19, 720),
    4: sp.Rational(3, 160),
}


@pytest.mark.parametrize("variable", ["s", "lambda"])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_leading_error_constants_tend_to_the_adams_constants(order, variable):
    """For phi = s and short equal steps the weight density is nearly constant over the step, so the leading
    local error constants of the predictor and the corrector tend to the textbook Adams-Bashforth and
    Adams-Moulton ones (times p! for the monomial u^p): an independent check of both order-condition sets."""
    from derive.checks import order_conditions

    step = derive_step(parse_expression("s"))
    h = 1e-4
    offsets = [h * j for j in range(1, order)]
    if variable == "lambda":
        offsets = [-math.log1p(o) for o in offsets]
    predictor = order_conditions(step, order, "data", offsets, h, variable=variable)
    corrector = order_conditions(step, order, "data", offsets, h, variable=variable, corrector=True)
    assert abs(predictor.leading_constant) == pytest.approx(
        float(ADAMS_BASHFORTH_ERROR[order] * math.factorial(order)), rel=1e-3
    )
    assert abs(corrector.leading_constant) == pytest.approx(
        float(ADAMS_MOULTON_ERROR[order] * math.factorial(order + 1)), rel=1e-3
    )


# ---- the order of the method where float64 cannot resolve it: the same update in mpmath ----------------------

MP_MEAN, MP_VAR, MP_SMAX, MP_SMIN = mpmath.mpf("0.5"), mpmath.mpf("0.05"), mpmath.mpf(20), mpmath.mpf("0.05")


def _mp_flow(y0, s0, s1):
    """Exact probability-flow ODE of 1-D Gaussian data N(MP_MEAN, MP_VAR) from s0 to s1."""
    return MP_MEAN + mpmath.sqrt((MP_VAR + s1**2) / (MP_VAR + s0**2)) * (y0 - MP_MEAN)


def _mp_denoiser(y, s):
    return MP_MEAN + MP_VAR / (MP_VAR + s**2) * (y - MP_MEAN)


def _mp_sample(order: int, n: int, corrector: bool, drop: int = 0) -> mpmath.mpf:
    """The phi = s update (r = s'/s, weights sum_n c_n D_nj, optionally the corrector's sum_n c_n D'_nj through
    the new output and the ``order - drop`` newest stored ones) at 30 digits from exact starting values, written
    from the formulas, not from a generated module; returns the error at MP_SMIN."""
    step = _step("ersde_order1_phi_ode")
    ratio = mpmath.exp(mpmath.log(MP_SMIN / MP_SMAX) / n)
    sigmas = [MP_SMAX * ratio**i for i in range(n + 1)]
    y0 = MP_MEAN + 3
    outputs = [_mp_denoiser(_mp_flow(y0, MP_SMAX, sigmas[j]), sigmas[j]) for j in range(order - 1)]
    y = _mp_flow(y0, MP_SMAX, sigmas[order - 1])
    D = [sp.lambdify(offset_symbols(order), row, "mpmath") for row in derivative_weights(order)]
    kc = order - drop
    Dc = [
        sp.lambdify((next_offset, *offset_symbols(kc)), row, "mpmath")
        for row in corrector_derivative_weights(kc)
    ]
    # phi = s is scale-free: c_m(a, a q) = a^m c_m(1, q), so one quadrature per m serves every step
    unit = [_mp_quad_weight(step, m, mpmath.mpf(1), ratio) for m in range(order + 1)]
    for i in range(order - 1, n):
        a, b = sigmas[i], sigmas[i + 1]
        outputs.append(_mp_denoiser(y, a))
        offsets = [sigmas[i - j] - a for j in range(1, order)]
        c = [unit[m] * a**m for m in range(order + 1)]
        stored = outputs[::-1][:order]
        y_next = b / a * y + mpmath.fsum(
            c[m] * mpmath.fsum(w * p for w, p in zip(D[m](*offsets), stored)) for m in range(order)
        )
        if corrector and i + 1 < n:
            new = _mp_denoiser(y_next, b)
            values = [new, *stored[:kc]]
            y_next = b / a * y + mpmath.fsum(
                c[m] * mpmath.fsum(w * p for w, p in zip(Dc[m](b - a, *offsets[: kc - 1]), values))
                for m in range(kc + 1)
            )
        y = y_next
    return abs(y - _mp_flow(y0, MP_SMAX, MP_SMIN))


def _mp_order(order, corrector, steps, drop=0):
    from derive.verify.orders import fit_order

    with mpmath.workdps(30):
        errors = [float(_mp_sample(order, n, corrector, drop)) for n in steps]
    return fit_order([1 / n for n in steps], errors, floor=1e-26)


@pytest.mark.parametrize("order", [8])
def test_method_order_8_in_mpmath(order):
    """Order 8 needs errors below float64's reach over four step halvings: the same update at 30 digits.
    Measured: 7.98 (N = 24 ... 384, errors 1.7e-6 ... 6.2e-16)."""
    fit = _mp_order(order, False, (24, 48, 96, 192, 384))
    assert abs(fit.order - order) <= 0.2, str(fit)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_same_order_corrector_in_mpmath(order):
    """The am corrector (new output and the K - 1 newest stored ones) keeps order K, from the formulas at 30
    digits, on steps short enough for its small leading constant to dominate (N = 96 ... 1536). Measured,
    K = 2, 3, 4: 2.01 3.05 4.09 (the Taylor update on the same steps: 2.01 3.01 4.01)."""
    fit = _mp_order(order, True, (96, 192, 384, 768, 1536), drop=1)
    assert abs(fit.order - order) <= 0.2, str(fit)


@pytest.mark.slow
@pytest.mark.parametrize("corrector", [False, True], ids=["taylor", "pc"])
@pytest.mark.parametrize("order", [1, 2, 3, 4, 5, 6, 7, 8])
def test_method_orders_in_mpmath(order, corrector):
    """Every order 1-8, and the corrector's K + 1, from the formulas at 30 digits (see _mp_sample). Measured,
    K = 1 ... 8: 0.99 2.03 3.04 4.03 5.01 5.97 7.00 7.98; pc: 2.02 2.94 4.01 4.94 5.94 6.94 7.95 8.92."""
    fit = _mp_order(order, corrector, (24, 48, 96, 192, 384))
    assert abs(fit.order - (order + corrector)) <= 0.2, str(fit)


def test_integrations_run_predictor_corrector_modules():
    """The integrations apply a pc module's corrector once the next model output is known (as diffusers'
    UniPC does); tests/test_integrations.py checks the scheduler and flow paths against the module's own
    sample()."""
    from derive.integrations import correction_table, has_corrector
    from derive.integrations import load_module as load_integration_module

    module = load_integration_module("ersde_order2_phi_ode_pc")
    assert has_corrector(module)
    rows = correction_table(module, [1.0] * 5, [4.0, 2.0, 1.0, 0.5, 0.0])
    assert rows[0] is not None and rows[-1] is None and rows[-2] is None  # none on or before a final step
    assert not has_corrector(load_integration_module("ersde_order2_phi_ode_adams"))

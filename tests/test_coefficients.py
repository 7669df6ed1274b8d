"""float64 coefficient tables of the generated modules against mpmath (independent quadrature, 34 digits)."""

from __future__ import annotations

import math

import mpmath
import pytest
import sympy as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from derive.coefficients import _mp_quad_weight, mp_noise_variance
from derive.symbolic.ersde import derive_step
from derive.symbolic.expression import parse_expression
from derive.symbolic.interpolation import derivative_weights, offset_symbols

from .conftest import load_module, manifest

TOLERANCE = 1e-14
NAMES = sorted(manifest())
STEPS = {}


def _step(name):
    if name not in STEPS:
        STEPS[name] = derive_step(parse_expression(manifest()[name]["phi"]))
    return STEPS[name]


def _variable(name):
    return manifest()[name].get("variable", "s")


sigmas = st.floats(min_value=-4, max_value=4).map(lambda e: 10.0**e)
relative_steps = st.floats(min_value=-10, max_value=math.log10(0.9999)).map(lambda e: 10.0**e)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sigma=sigmas, t=relative_steps)
def test_taylor_weights_match_mpmath(name, sigma, t):
    """Every c_n to 1e-14 relative for sigma in [1e-4, 1e4] and h/sigma in [1e-10, 1 - 1e-4]."""
    module = load_module(name)
    sigma_next = sigma * (1 - t)
    if not 0 < sigma_next < sigma:
        return
    values = module.taylor_weights(
        torch.tensor([sigma], dtype=torch.float64), torch.tensor([sigma_next], dtype=torch.float64)
    )
    step = _step(name)
    for n, value in enumerate(values):
        exact = _mp_quad_weight(step, n, sigma, sigma_next, module.FORM, _variable(name))
        assert abs(float(value[0]) - exact) <= TOLERANCE * abs(exact), (n, sigma, sigma_next)
    variance = float(
        module.noise_variance(
            torch.tensor([sigma], dtype=torch.float64), torch.tensor([sigma_next], dtype=torch.float64)
        )[0]
    )
    exact = mp_noise_variance(step, sigma, sigma_next, module.FORM)
    if exact == 0:
        assert variance == 0
    else:
        assert abs(variance - exact) <= TOLERANCE * abs(exact), ("variance", sigma, sigma_next)


@pytest.mark.parametrize("name", [n for n in NAMES if manifest()[n]["order"] >= 2])
@settings(max_examples=10, deadline=None)
@given(
    sigma=sigmas,
    t=st.floats(min_value=1e-6, max_value=0.95),
    ratios=st.lists(st.floats(min_value=0.05, max_value=20), min_size=7, max_size=7),
)
def test_combined_weights_match_mpmath(name, sigma, t, ratios):
    """Step weights w_j = sum_n c_n D_nj on non-uniform histories (step ratios 0.05-20) vs mpmath."""
    module = load_module(name)
    k = module.ORDER
    # build a decreasing history s_{i-k+1} > ... > s_i = sigma, previous steps scaled by the ratios
    h = sigma * t
    history = [sigma]
    for r in ratios[: k - 1]:
        # each earlier step is r times the current one (ratios 0.05-20, not compounded, so that no history
        # step falls below the modules' HISTORY_STEP_RATIO and the full history is used)
        history.insert(0, history[0] + h * r)
    sched = [*history, sigma - h]
    ratio, std, weights, final = module.coefficient_table(torch.tensor(sched, dtype=torch.float64))
    got = weights[-1]
    step = _step(name)

    def exact_weights(m):
        D = derivative_weights(m)
        if _variable(name) == "lambda":
            offsets = [-mpmath.log(mpmath.mpf(history[-1 - j]) / mpmath.mpf(sigma)) for j in range(1, m)]
        else:
            offsets = [mpmath.mpf(history[-1 - j]) - mpmath.mpf(sigma) for j in range(1, m)]
        c = [
            module.WEIGHT_SIGN * _mp_quad_weight(step, n, sigma, sigma - h, module.FORM, _variable(name))
            for n in range(m)
        ]
        return c, [
            mpmath.fsum(c[n] * sp.lambdify(offset_symbols(m), D[n][j], "mpmath")(*offsets) for n in range(m))
            for j in range(m)
        ]

    def amplification(w):
        return mpmath.fsum(abs(v) for v in w) / abs(mpmath.fsum(w))

    used = len(got)
    assert 1 <= used <= k
    with mpmath.workdps(34):
        c, exact = exact_weights(used)
        for j in range(used):
            scale = max(abs(exact[j]), abs(c[0]))
            assert abs(got[j] - exact[j]) <= 1e-12 * scale, (j, got[j], exact[j])
        # fewer outputs only where the longer history would amplify perturbations beyond the documented limit
        if used < k:
            assert amplification(exact_weights(used + 1)[1]) > module.AMPLIFICATION_LIMIT[used + 1] * (
                1 - 1e-9
            )
        if used > 1:
            assert amplification(exact) <= module.AMPLIFICATION_LIMIT[used] * (1 + 1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_zero_length_steps_are_finite(name):
    """Repeated sigmas (zero-length steps) give finite coefficients and an identity step, never NaN."""
    module = load_module(name)
    sched = torch.tensor([10.0, 5.0, 5.0, 5.0, 2.0, 1.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    ratio, std, weights, final = module.coefficient_table(sched)
    for i in (1, 2, 5):
        assert ratio[i] == 1.0 and std[i] == 0.0 and all(w == 0.0 for w in weights[i])  # identity step
    assert all(math.isfinite(v) for row in weights for v in row)
    assert final == [False] * 7 + [True]
    x = torch.randn(3, 4, dtype=torch.float64)
    out = module.sample(
        lambda x, s: 0.5 * x / (1 + s[:, None] ** 2), x, sched, generator=torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(out).all()


# textbook Adams-Bashforth weights on equal steps (newest output first)
ADAMS_BASHFORTH = {
    1: (1,),
    2: (sp.Rational(3, 2), sp.Rational(-1, 2)),
    3: (sp.Rational(23, 12), sp.Rational(-16, 12), sp.Rational(5, 12)),
    4: (sp.Rational(55, 24), sp.Rational(-59, 24), sp.Rational(37, 24), sp.Rational(-9, 24)),
}


def test_adams_bashforth_lebesgue_constants():
    from derive.symbolic.interpolation import adams_bashforth_lebesgue

    for k, weights in ADAMS_BASHFORTH.items():
        assert sum(weights) == 1
        assert adams_bashforth_lebesgue(k) == sum(abs(w) for w in weights)
    assert adams_bashforth_lebesgue(5) > adams_bashforth_lebesgue(4)


@pytest.mark.parametrize("name", [n for n in NAMES if manifest()[n]["order"] >= 2])
def test_amplification_limits_and_standard_schedules_keep_the_full_history(name):
    """The history guard is 10 x the Adams-Bashforth constant and leaves Karras / log-uniform schedules alone."""
    from derive.coefficients import HISTORY_AMPLIFICATION_FACTOR
    from derive.symbolic.interpolation import adams_bashforth_lebesgue

    module = load_module(name)
    for k in range(2, module.ORDER + 1):
        assert module.AMPLIFICATION_LIMIT[k] == pytest.approx(
            HISTORY_AMPLIFICATION_FACTOR * float(adams_bashforth_lebesgue(k)), rel=1e-15
        )
    ramp = lambda n: torch.linspace(0, 1, n + 1, dtype=torch.float64)  # noqa: E731
    for n in (5, 10, 20, 100):
        karras = (80 ** (1 / 7) + ramp(n) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        log_uniform = torch.exp(math.log(80) + ramp(n) * (math.log(0.002) - math.log(80)))
        for sched in (karras, log_uniform):
            _, _, weights, _ = module.coefficient_table(sched)
            assert [len(w) for w in weights] == [min(i + 1, module.ORDER) for i in range(n)], (n, sched)


@pytest.mark.parametrize("name", ["ersde_order3", "vesde_order3_sde"])
def test_abrupt_step_growth_drops_history(name):
    """Three short steps then one 15 x longer: the full order-3 weights would amplify the stored outputs ~175-450
    times (noise, for an SDE); the guard falls back to fewer outputs and the sample stays bounded."""
    module = load_module(name)
    sched = torch.tensor(
        [54.598150033144236, 51.290215346585704, 48.182698291098816, 1.0], dtype=torch.float64
    )
    _, _, weights, _ = module.coefficient_table(sched)
    assert [len(w) for w in weights[:2]] == [1, 2] and len(weights[2]) < 3
    w = weights[2]
    assert len(w) == 1 or sum(abs(v) for v in w) / abs(sum(w)) <= module.AMPLIFICATION_LIMIT[len(w)]

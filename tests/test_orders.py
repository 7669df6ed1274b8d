"""Tests for derive.verify.orders.fit_order."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from derive.verify.orders import OrderFit, fit_order

EPS = float(np.finfo(np.float64).eps)
DEFAULT_FLOOR = 1e3 * EPS


def synthetic(p, C=0.8, noise=0.03, floor=1e-14, seed=0, h_min_error=1e-17, ratio=2.0):
    """Step sizes h = ratio^-k and errors C h^p (1 + noise) + floor*(noisy), down to ~h_min_error."""
    rng = np.random.default_rng(seed)
    k_max = math.ceil(math.log(C / h_min_error) / (p * math.log(ratio)))
    h = ratio ** -np.arange(0, k_max + 1, dtype=float)
    clean = C * h**p
    err = clean * np.exp(noise * rng.standard_normal(h.size)) + floor * (1 + 0.5 * rng.random(h.size))
    return h, err, clean


@pytest.mark.parametrize("p", [1, 2, 3, 4])
@pytest.mark.parametrize("given_floor", [None, 1e-14])
def test_recovers_order_and_excludes_floor(p, given_floor):
    h, err, clean = synthetic(p, seed=p)
    fit = fit_order(h, err, floor=given_floor)
    assert isinstance(fit, OrderFit)
    assert abs(fit.order - p) < 0.05, str(fit)
    floor = DEFAULT_FLOOR if given_floor is None else given_floor
    assert fit.floor == floor
    used_err = np.array(fit.errors)[list(fit.used)]
    assert np.all(used_err > 20 * floor)
    # every floor-dominated point (true error below the added floor) is excluded ...
    assert not any(clean[i] < 1e-13 for i in fit.used)
    # ... and the fit reaches down to the floor region rather than stopping early
    assert min(used_err) < 1e3 * 20 * floor
    assert len(fit.used) >= 4
    assert list(fit.used) == list(range(fit.used[0], fit.used[-1] + 1))
    assert fit.residual < 0.1
    assert abs(math.exp(fit.intercept) / 0.8 - 1) < 0.5
    assert len(fit.local_orders) == len(h) - 1


def test_input_order_irrelevant_and_sorted_output():
    h, err, _ = synthetic(2, seed=7)
    perm = np.random.default_rng(1).permutation(h.size)
    a, b = fit_order(h, err), fit_order(h[perm], err[perm])
    assert a == b
    assert list(a.step_sizes) == sorted(a.step_sizes, reverse=True)


def test_local_orders_are_log2_ratios():
    h = np.array([1.0, 0.5, 0.25, 0.125, 0.0625])
    err = 3.0 * h**2
    fit = fit_order(h, err)
    np.testing.assert_allclose(fit.local_orders, 2.0, atol=1e-12)
    assert fit.used == (0, 1, 2, 3, 4)
    assert abs(fit.order - 2) < 1e-12 and fit.residual < 1e-12


def test_pre_asymptotic_points_with_other_slope_are_dropped():
    # coarse points fall with slope ~6, then the asymptotic regime has slope 2
    h = 2.0 ** -np.arange(0, 14)
    err = 1e-2 * h**2
    err[:3] = err[3] * (h[:3] / h[3]) ** 6
    fit = fit_order(h, err)
    assert abs(fit.order - 2) < 0.02, str(fit)
    assert fit.used[0] == 3


def test_coarse_divergence_is_skipped():
    # unstable at large steps (error grows as h shrinks), then order 3
    h = 2.0 ** -np.arange(0, 12)
    err = 0.5 * h**3
    err[:3] = [1e1, 3e1, 5e0]
    fit = fit_order(h, err)
    assert abs(fit.order - 3) < 1e-9
    assert fit.used[0] >= 2


def test_unknown_plateau_above_floor_is_excluded():
    # floor at 1e-8 (e.g. a float32 or tolerance-limited reference), not told to fit_order
    h = 2.0 ** -np.arange(0, 16)
    err = h**2 + 1e-8
    fit = fit_order(h, err)
    assert abs(fit.order - 2) < 0.02, str(fit)
    assert all(err[i] > 5e-8 for i in fit.used)  # at most ~25% plateau contamination
    assert fit.used[-1] >= 11  # but the fit does not stop needlessly early


def test_nan_and_zero_errors_are_never_used():
    h = 2.0 ** -np.arange(0, 10)
    err = 0.3 * h**4
    err[0] = np.nan
    err[-1] = 0.0
    fit = fit_order(h, err)
    assert 0 not in fit.used and 9 not in fit.used
    assert abs(fit.order - 4) < 1e-9
    assert math.isnan(fit.local_orders[0]) and math.isnan(fit.local_orders[-1])


def test_raises_when_too_few_usable_points():
    h = 2.0 ** -np.arange(0, 8)
    err = 1e-9 * h**4 + 1e-14  # only the first ~2 points are above 20 x floor
    with pytest.raises(ValueError, match="cannot fit an order"):
        fit_order(h, err)
    with pytest.raises(ValueError, match="cannot fit an order"):
        fit_order(h[:3], 1e-2 * h[:3] ** 2)  # 3 points < min_points=4
    fit = fit_order(h[:3], 1e-2 * h[:3] ** 2, min_points=3)
    assert abs(fit.order - 2) < 1e-12
    with pytest.raises(ValueError, match="cannot fit an order"):
        fit_order(h, np.full(h.size, 1e-3))  # no convergence at all
    with pytest.raises(ValueError, match="cannot fit an order"):
        fit_order(h, 1e-15 * np.ones(h.size))  # everything at round-off


def test_rejects_malformed_input():
    with pytest.raises(ValueError):
        fit_order([1.0, 0.5], [1.0])
    with pytest.raises(ValueError):
        fit_order([1.0, 1.0, 0.5, 0.25], [1.0, 1.0, 0.25, 0.0625])
    with pytest.raises(ValueError):
        fit_order([1.0, -0.5, 0.25, 0.125], [1.0, 0.25, 0.0625, 0.01])
    with pytest.raises(ValueError):
        fit_order([1.0, 0.5, 0.25], [1.0, 0.25, 0.0625], min_points=1)


def test_str_is_compact_summary():
    h, err, _ = synthetic(3, seed=3)
    text = str(fit_order(h, err))
    assert text.startswith("order ") and abs(float(text.split()[1]) - 3) < 0.05
    assert "points" in text and "floor" in text
    assert "\n" not in text and "[" in text


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    p=st.integers(1, 5),
    log10_C=st.floats(-3, 2),
    ratio=st.sampled_from([1.5, 2.0, 3.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_order_recovery_property(p, log10_C, ratio, seed):
    h, err, clean = synthetic(p, C=10.0**log10_C, noise=0.02, seed=seed, ratio=ratio)
    fit = fit_order(h, err)
    assert abs(fit.order - p) < 0.1, str(fit)
    assert not any(clean[i] < 1e-13 for i in fit.used)

"""Tests for derive.verify.problems: exact denoisers, reference flows and schedules."""

from __future__ import annotations

import math
import time

import mpmath
import numpy as np
import pytest
import torch

from derive.verify.problems import (
    GaussianData,
    GaussianMixture,
    append_zero,
    karras_sigmas,
    log_uniform_sigmas,
    reference_flow,
    reference_flow_mpmath,
)


@pytest.fixture
def gauss3():
    return GaussianData(mean=[0.5, -1.0, 2.0], var=[0.3, 1.0, 2.5])


@pytest.fixture
def mix3():
    return GaussianMixture.standard(3, seed=0)


def grad_fd(f, y, h=1e-5):
    """Central finite-difference gradient of a scalar function of each row of y (shape (n, d))."""
    g = np.zeros_like(y)
    for j in range(y.shape[-1]):
        e = np.zeros(y.shape[-1])
        e[j] = h
        g[..., j] = (f(y + e) - f(y - e)) / (2 * h)
    return g


# -------------------------------------------------------------------------------------------------
# Gaussian data
# -------------------------------------------------------------------------------------------------


def test_gaussian_broadcasting_and_validation():
    g = GaussianData(0.0, [1.0, 2.0, 3.0])
    assert g.d == 3 and g.mean.tolist() == [0, 0, 0]
    assert GaussianData(1.0, 2.0).d == 1
    np.testing.assert_allclose(g.marginal_var(2.0), [5.0, 6.0, 7.0])
    np.testing.assert_allclose(g.marginal_mean(2.0), 0.0)
    with pytest.raises(ValueError):
        GaussianData([0.0, 1.0], [1.0, 0.0])
    with pytest.raises(ValueError):
        GaussianData([0.0, 1.0], [1.0, 1.0, 1.0])


def test_gaussian_exact_flow_matches_dop853(gauss3):
    rng = np.random.default_rng(1)
    y0 = gauss3.mean + np.sqrt(gauss3.marginal_var(80.0)) * rng.standard_normal((8, 3))
    ref = reference_flow(gauss3.denoiser_np, y0, 80.0, 0.02)
    exact = gauss3.exact_flow(y0, 80.0, 0.02)
    assert ref.shape == y0.shape
    np.testing.assert_allclose(ref, exact, rtol=0, atol=1e-10)
    # and the flow really moved the points (the comparison is not vacuous)
    assert np.abs(exact - y0).max() > 10
    # forward in s as well (0.02 -> 80), and round trip of the closed form
    np.testing.assert_allclose(
        reference_flow(gauss3.denoiser_np, exact, 0.02, 80.0), y0, rtol=1e-10, atol=1e-9
    )
    np.testing.assert_allclose(gauss3.exact_flow(exact, 0.02, 80.0), y0, rtol=1e-13)


def test_gaussian_exact_flow_solves_the_ode(gauss3):
    # d/ds exact_flow(y, s0, s) == (y(s) - D(y(s), s)) / s, by central differences in s
    y0 = np.array([[1.0, 2.0, -3.0], [0.1, 0.2, 0.3]])
    for s in [0.05, 0.7, 5.0]:
        h = 1e-5 * s
        dyds = (gauss3.exact_flow(y0, 3.0, s + h) - gauss3.exact_flow(y0, 3.0, s - h)) / (2 * h)
        ys = gauss3.exact_flow(y0, 3.0, s)
        np.testing.assert_allclose(dyds, (ys - gauss3.denoiser_np(ys, s)) / s, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("s", [0.1, 1.0, 4.0])
def test_gaussian_denoiser_is_tweedie(gauss3, s):
    y = np.random.default_rng(2).standard_normal((5, 3)) * 2
    grad = grad_fd(lambda z: gauss3.log_density_np(z, s), y)
    np.testing.assert_allclose(gauss3.denoiser_np(y, s), y + s**2 * grad, atol=1e-6)


def test_gaussian_log_density_matches_scipy(gauss3):
    from scipy.stats import multivariate_normal

    y = np.random.default_rng(3).standard_normal((4, 3))
    expect = multivariate_normal(gauss3.mean, np.diag(gauss3.marginal_var(0.7))).logpdf(y)
    np.testing.assert_allclose(gauss3.log_density_np(y, 0.7), expect, rtol=1e-12)


# -------------------------------------------------------------------------------------------------
# Gaussian mixture
# -------------------------------------------------------------------------------------------------


def test_standard_mixture_is_deterministic_and_has_narrow_component():
    a, b, c = GaussianMixture.standard(4), GaussianMixture.standard(4), GaussianMixture.standard(4, seed=1)
    np.testing.assert_array_equal(a.means, b.means)
    assert not np.array_equal(a.means, c.means)
    assert a.means.shape == (3, 4) and a.K == 3 and a.d == 4
    assert min(a.stds) <= 0.05 and sum(sd >= 0.3 for sd in a.stds) >= 2
    assert math.isclose(a.weights.sum(), 1.0)


def test_mixture_validation():
    with pytest.raises(ValueError):
        GaussianMixture([0.5, 0.5], [[0.0], [1.0]], [0.1, 0.0])
    with pytest.raises(ValueError):
        GaussianMixture([0.5, -0.5], [[0.0], [1.0]], [0.1, 0.1])
    with pytest.raises(ValueError):
        GaussianMixture([0.5, 0.5], [[0.0, 1.0]], [0.1, 0.1])
    m = GaussianMixture([2.0, 6.0], [0.0, 1.0], [0.1, 0.2])  # 1-D means, weights normalized
    assert m.d == 1 and m.weights.tolist() == [0.25, 0.75]


@pytest.mark.parametrize("s", [0.03, 0.3, 2.0])
def test_mixture_denoiser_is_tweedie(mix3, s):
    rng = np.random.default_rng(4)
    y = mix3.sample_np(6, rng) + s * rng.standard_normal((6, 3))
    h = 1e-5 * min(1.0, s)
    grad = grad_fd(lambda z: mix3.log_density_np(z, s), y, h=h)
    np.testing.assert_allclose(mix3.denoiser_np(y, s), y + s**2 * grad, atol=1e-6)


def test_mixture_log_density_normalized_1d():
    from scipy.integrate import quad

    m = GaussianMixture([0.2, 0.8], [[-1.0], [2.0]], [0.05, 0.7])
    for s in [0.0, 0.5]:
        total, _ = quad(
            lambda x, s=s: math.exp(m.log_density_np(np.array([x]), s)), -8, 10, points=[-1, 2], limit=200
        )
        assert abs(total - 1) < 1e-8


def test_mixture_single_component_reduces_to_gaussian():
    m = GaussianMixture([1.0], [[0.5, -1.0]], [0.8])
    g = GaussianData([0.5, -1.0], 0.64)
    y = np.random.default_rng(5).standard_normal((7, 2)) * 3
    for s in [0.01, 1.0, 30.0]:
        np.testing.assert_allclose(m.denoiser_np(y, s), g.denoiser_np(y, s), rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(m.log_density_np(y, s), g.log_density_np(y, s), rtol=1e-13)


def test_mixture_sampling_moments():
    m = GaussianMixture.standard(2, seed=3)
    x = m.sample_np(200_000, np.random.default_rng(6))
    mean = m.weights @ m.means
    np.testing.assert_allclose(x.mean(0), mean, atol=0.02)
    var = m.weights @ (m.stds[:, None] ** 2 + m.means**2) - mean**2
    np.testing.assert_allclose(x.var(0), var, rtol=0.02)


def test_mixture_denoiser_stable_far_away_and_at_tiny_sigma(mix3):
    y = np.array([[1e3, -1e3, 5e2], [1e-3, 2.0, -4.0]])
    for s in [1e-4, 1e-2, 1e4]:
        d64 = mix3.denoiser_np(y, s)
        assert np.all(np.isfinite(d64))
        d32 = mix3.denoiser_torch(torch.tensor(y, dtype=torch.float32), s)
        assert d32.dtype == torch.float32 and torch.isfinite(d32).all()
        np.testing.assert_allclose(d32.numpy(), d64, rtol=1e-5, atol=1e-4 * max(1.0, s))
    # at huge s the denoiser returns (almost) the data mean; at tiny s it returns (almost) y
    np.testing.assert_allclose(
        mix3.denoiser_np(y, 1e8), (mix3.weights @ mix3.means)[None].repeat(2, 0), atol=1e-6
    )
    np.testing.assert_allclose(mix3.denoiser_np(y, 1e-8), y, rtol=1e-9)


# -------------------------------------------------------------------------------------------------
# torch vs numpy
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", ["gauss", "mix"])
def test_torch_matches_numpy_float64(problem, gauss3, mix3):
    p = gauss3 if problem == "gauss" else mix3
    rng = np.random.default_rng(7)
    y = rng.standard_normal((5, 3)) * 3
    sig = np.array([0.02, 0.3, 1.0, 7.0, 80.0])
    yt = torch.tensor(y, dtype=torch.float64)
    # batch sigma tensor, k-diffusion style: one sigma per sample
    out = p.denoiser_torch(yt, torch.tensor(sig))
    assert out.dtype == torch.float64 and out.shape == yt.shape
    expect = np.stack([p.denoiser_np(y[i], sig[i]) for i in range(5)])
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-13, atol=1e-13)
    # numpy also accepts a per-sample sigma array
    np.testing.assert_allclose(p.denoiser_np(y, sig), expect, rtol=1e-13, atol=1e-13)
    # python float sigma, and the k-diffusion call `sigma * x.new_ones([x.shape[0]])`
    out_f = p.denoiser_torch(yt, 0.3)
    out_b = p.denoiser_torch(yt, 0.3 * yt.new_ones([yt.shape[0]]))
    np.testing.assert_allclose(out_f.numpy(), p.denoiser_np(y, 0.3), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(out_b.numpy(), out_f.numpy(), rtol=0, atol=0)
    # extra trailing/middle dims are broadcast over: (batch, 2, d) with a (batch,) sigma
    y3 = rng.standard_normal((5, 2, 3))
    out3 = p.denoiser_torch(torch.tensor(y3), torch.tensor(sig))
    expect3 = np.stack([p.denoiser_np(y3[i], sig[i]) for i in range(5)])
    np.testing.assert_allclose(out3.numpy(), expect3, rtol=1e-13, atol=1e-13)


def test_torch_rejects_mismatched_sigma(gauss3):
    with pytest.raises(ValueError):
        gauss3.denoiser_torch(torch.zeros(4, 3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))


# -------------------------------------------------------------------------------------------------
# reference flows
# -------------------------------------------------------------------------------------------------


def test_mpmath_reference_confirms_dop853_on_1d_mixture():
    m = GaussianMixture([0.6, 0.4], [[-1.0], [1.5]], [0.05, 0.5])
    y0, s_from, s_to = 2.0, 10.0, 0.1
    t0 = time.perf_counter()
    hi = reference_flow_mpmath(m.denoiser_mp, [y0], s_from, s_to, dps=20, return_mpf=True)
    assert time.perf_counter() - t0 < 20
    lo = reference_flow(m.denoiser_np, np.array([[y0]]), s_from, s_to)
    assert isinstance(hi[0], mpmath.mpf)
    assert abs(float(hi[0]) - lo[0, 0]) < 1e-10
    # the point moved from the wide component's side into the narrow one (non-trivial flow)
    assert abs(float(hi[0]) - (-1.0)) < 0.3


def test_denoiser_mp_matches_numpy(mix3, gauss3):
    y = [0.3, -1.2, 2.5]
    with mpmath.workdps(30):
        for p in (mix3, gauss3):
            for s in (0.02, 1.0, 20.0):
                got = [float(v) for v in p.denoiser_mp([mpmath.mpf(v) for v in y], mpmath.mpf(s))]
                np.testing.assert_allclose(got, p.denoiser_np(np.array(y), s), rtol=1e-12, atol=1e-13)


def test_reference_flow_mixture_converges_and_raises():
    m = GaussianMixture.standard(2, seed=1)
    y0 = m.sample_np(4, 0) + 20.0 * np.random.default_rng(1).standard_normal((4, 2))
    a = reference_flow(m.denoiser_np, y0, 20.0, 0.01)
    b = reference_flow(m.denoiser_np, y0, 20.0, 0.01, rtol=1e-10, atol=1e-11)
    assert np.abs(a - b).max() < 1e-8
    assert np.array_equal(reference_flow(m.denoiser_np, y0, 1.0, 1.0), y0)
    with pytest.raises(ValueError):
        reference_flow(m.denoiser_np, y0, 1.0, 0.0)

    def bad(y, s):
        return np.full_like(y, np.nan) if s < 1 else y

    with pytest.raises(RuntimeError):
        reference_flow(bad, y0, 2.0, 0.5)


# -------------------------------------------------------------------------------------------------
# schedules
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 10, 50])
def test_schedules(n):
    for sig in (
        karras_sigmas(n, 0.002, 80.0),
        karras_sigmas(n, 0.002, 80.0, rho=3.0),
        log_uniform_sigmas(n, 0.002, 80.0),
    ):
        assert sig.dtype == np.float64 and sig.shape == (n + 1,)
        assert sig[0] == 80.0 and sig[-1] == 0.002
        assert np.all(np.diff(sig) < 0)
    lu = log_uniform_sigmas(n, 0.002, 80.0)
    np.testing.assert_allclose(np.diff(np.log(lu)), math.log(0.002 / 80.0) / n, rtol=1e-12)
    k = karras_sigmas(n, 0.002, 80.0)
    np.testing.assert_allclose(np.diff(k ** (1 / 7)), (0.002 ** (1 / 7) - 80.0 ** (1 / 7)) / n, rtol=1e-9)


def test_karras_matches_k_diffusion_formula():
    # k-diffusion: get_sigmas_karras(n, ...) = append_zero(n values incl. both ends) -> our n-1 steps
    n = 10
    ramp = np.linspace(0, 1, n)
    kd = (80.0 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    np.testing.assert_allclose(karras_sigmas(n - 1, 0.002, 80.0), kd, rtol=1e-13)


def test_append_zero_and_schedule_validation():
    sig = karras_sigmas(4, 0.1, 10.0)
    z = append_zero(sig)
    assert z.shape == (6,) and z[-1] == 0.0 and np.array_equal(z[:-1], sig)
    zt = append_zero(torch.tensor(sig, dtype=torch.float32))
    assert zt.dtype == torch.float32 and zt.shape == (6,) and zt[-1].item() == 0.0
    for bad in [(0, 0.1, 10.0), (3, 0.0, 10.0), (3, 10.0, 0.1), (3, 1.0, 1.0)]:
        with pytest.raises(ValueError):
            karras_sigmas(*bad)
        with pytest.raises(ValueError):
            log_uniform_sigmas(*bad)

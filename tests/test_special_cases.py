"""Special cases with published closed forms, checked against references written here from the papers.

* phi = s, order 1 is DDIM with eta = 0 (Song, Meng & Ermon 2021, eq. 12 with sigma_t = 0);
* phi = s^2, order 1 (data-prediction form) is DDPM ancestral sampling (Ho, Jain & Abbeel 2020), with the
  two-timestep posterior q(x_t' | x_t, x0) used when timesteps are skipped;
* one step with a constant prediction is an exact Gaussian transition whose mean and variance follow
  from phi alone (computed here with mpmath from the phi text in SPEC).

The DDIM / DDPM references run in the *VP* coordinates x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps of a
discrete schedule (a_t = alphas_cumprod[t]) with an epsilon-prediction model; the generated modules run
in normalized coordinates y = x / sqrt(a), s = sqrt((1 - a) / a) with a denoiser built from the same
epsilon model. Nothing below reuses code or coefficients of the generated modules.
"""

from __future__ import annotations

import functools
import math

import mpmath
import numpy as np
import pytest
import sympy
import torch

from derive.methods import METHODS
from derive.symbolic.expression import parse_expression

from .conftest import load_module, manifest

MANIFEST = manifest()


def _form(name):
    """'data' (the update expands the data prediction) or 'noise' (it expands eps); older modules: data."""
    return getattr(load_module(name), "FORM", "data")


# first-order modules without a corrector (a pc module of order 1 corrects every step: DDIM is only its
# predictor)
ODE_ORDER1 = sorted(
    n
    for n, e in MANIFEST.items()
    if e["phi"] == "s" and e["order"] == 1 and not METHODS[e["method"]].corrector
)
# DDPM is the *data-prediction* first-order solver of the reverse SDE. The noise-prediction form
# (eps held constant over the step) is a different first-order scheme: y' = y - 2(s - s') eps +
# sqrt(s^2 - s'^2) z instead of DDPM's y' = r y + (1 - r) x0 + sqrt(s'^2 (1 - r)) z, r = s'^2/s^2.
SDE_ORDER1_DATA = sorted(
    n for n, e in MANIFEST.items() if e["phi"] == "s**2" and e["order"] == 1 and _form(n) == "data"
)
NOISY = sorted(n for n, e in MANIFEST.items() if e["phi"] != "s")


def test_catalogue_has_the_special_cases():
    assert "ersde_order1_phi_ode" in ODE_ORDER1
    assert "ersde_order1_phi_sde" in SDE_ORDER1_DATA
    assert {"ersde_order1", "ersde_order1_phi_sde"} <= set(NOISY)


# ------------------------------------------------------------------------------------------------
# the discrete VP schedule and epsilon models
# ------------------------------------------------------------------------------------------------

BETAS = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
ALPHAS_CUMPROD = np.cumprod(1.0 - BETAS)
TIMESTEPS = [int(t) for t in np.linspace(999, 0, 50).round()]  # 999, 979, ..., 20, 0 (50 steps, distinct)
D = 3
BATCH = 8


def _eps_nonlinear(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Some smooth, nonlinear, time-dependent epsilon model (the equivalences hold for any model)."""
    W = torch.tensor([[0.8, -0.3, 0.1], [0.2, 0.5, -0.7], [-0.4, 0.6, 0.9]], dtype=x.dtype)
    tt = (t.to(x.dtype) / 1000.0)[:, None]
    return torch.tanh((x @ W) * (0.5 + tt)) + 0.3 * torch.sin(x + 3 * tt) - 0.2 * tt


_GAUSS_MEAN = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
_GAUSS_VAR = torch.tensor([0.3, 1.5, 0.05], dtype=torch.float64)


def _eps_gaussian(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact E[eps | x_t] for data x0 ~ N(mean, diag(var)): x_t ~ N(sqrt(a) mean, a var + 1 - a) and
    E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mean) / (a var + 1 - a)."""
    a = torch.from_numpy(ALPHAS_CUMPROD)[t][:, None]
    return torch.sqrt(1 - a) * (x - torch.sqrt(a) * _GAUSS_MEAN) / (a * _GAUSS_VAR + 1 - a)


EPS_MODELS = {"nonlinear": _eps_nonlinear, "gaussian": _eps_gaussian}


def _schedule_sigmas():
    """Normalized sigmas s_t = sqrt((1 - a_t) / a_t) of the timestep subsequence, then 0 (a = 1)."""
    s = [math.sqrt((1.0 - ALPHAS_CUMPROD[t]) / ALPHAS_CUMPROD[t]) for t in TIMESTEPS]
    return torch.tensor(s + [0.0], dtype=torch.float64)


def _normalized_denoiser(eps_model, sigmas):
    """D(y, s) = x0_hat = (x - sqrt(1 - a) eps(x, t)) / sqrt(a) at x = sqrt(a) y, t the timestep of s."""
    t_of_sigma = {float(s): t for s, t in zip(sigmas[:-1].tolist(), TIMESTEPS)}

    def model(y, sigma):
        assert sigma.shape == (y.shape[0],) and bool((sigma == sigma[0]).all())
        t = t_of_sigma[float(sigma[0])]
        a = float(ALPHAS_CUMPROD[t])
        x = math.sqrt(a) * y
        eps = eps_model(x, torch.full((y.shape[0],), t, dtype=torch.long))
        return (x - math.sqrt(1.0 - a) * eps) / math.sqrt(a)

    return model


def _x_T(seed=0):
    return torch.randn(BATCH, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


# ------------------------------------------------------------------------------------------------
# 6. DDIM (eta = 0)
# ------------------------------------------------------------------------------------------------


def ddim_reference(eps_model, x_T):
    """DDIM, eta = 0 (Song et al. 2021, eq. 12):
        x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t),   x_t' = sqrt(a_t') x0_hat + sqrt(1 - a_t') eps,
    and the last step (after t = 0, "a_prev = 1") returns x0_hat. Returns the states after each step."""
    x, states = x_T, []
    for k, t in enumerate(TIMESTEPS):
        a = float(ALPHAS_CUMPROD[t])
        eps = eps_model(x, torch.full((x.shape[0],), t, dtype=torch.long))
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        if k + 1 < len(TIMESTEPS):
            a_next = float(ALPHAS_CUMPROD[TIMESTEPS[k + 1]])
            x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
        else:
            x = x0
        states.append(x)
    return states


@pytest.mark.parametrize("eps_name", sorted(EPS_MODELS))
@pytest.mark.parametrize("name", ODE_ORDER1)
def test_phi_ode_order1_is_ddim(name, eps_name):
    eps_model = EPS_MODELS[eps_name]
    module = load_module(name)
    sigmas = _schedule_sigmas()
    x_T = _x_T()
    reference = ddim_reference(eps_model, x_T)
    visited = []
    y_T = x_T / math.sqrt(ALPHAS_CUMPROD[TIMESTEPS[0]])
    out = module.sample(
        _normalized_denoiser(eps_model, sigmas), y_T, sigmas, callback=lambda info: visited.append(info["x"])
    )
    # the final sample (a = 1, so the same in both coordinates)
    assert _rel(out, reference[-1]) < 1e-12
    # and every intermediate state, converted back: x_t = sqrt(a_t) y_t
    assert len(visited) == len(TIMESTEPS)
    for k in range(1, len(TIMESTEPS)):
        x_k = math.sqrt(ALPHAS_CUMPROD[TIMESTEPS[k]]) * visited[k]
        assert _rel(x_k, reference[k - 1]) < 1e-12, f"step {k} (t = {TIMESTEPS[k]})"


# ------------------------------------------------------------------------------------------------
# 7. DDPM ancestral sampling
# ------------------------------------------------------------------------------------------------


def ddpm_reference(eps_model, x_T, noises):
    """Ancestral sampling with the posterior q(x_t' | x_t, x0 = x0_hat) for a skip t -> t' (Ho et al. 2020,
    eqs. 6-7, with a_t / a_t' in place of alpha_t when steps are skipped):
        beta = 1 - a_t / a_t',
        mean = sqrt(a_t') beta / (1 - a_t) x0 + sqrt(a_t / a_t') (1 - a_t') / (1 - a_t) x_t,
        var  = (1 - a_t') / (1 - a_t) beta,
    x_t' = mean + sqrt(var) z. The last step goes to a = 1 (beta = 1 - a_0, mean = x0_hat, var = 0)."""
    x, states, used = x_T, [], 0
    for k, t in enumerate(TIMESTEPS):
        a = float(ALPHAS_CUMPROD[t])
        eps = eps_model(x, torch.full((x.shape[0],), t, dtype=torch.long))
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        a_next = float(ALPHAS_CUMPROD[TIMESTEPS[k + 1]]) if k + 1 < len(TIMESTEPS) else 1.0
        beta = 1 - a / a_next
        mean = math.sqrt(a_next) * beta / (1 - a) * x0 + math.sqrt(a / a_next) * (1 - a_next) / (1 - a) * x
        var = (1 - a_next) / (1 - a) * beta
        if var > 0:
            x = mean + math.sqrt(var) * noises[used]
            used += 1
        else:
            x = mean
        states.append(x)
    assert used == len(TIMESTEPS) - 1
    return states


@pytest.mark.parametrize("eps_name", sorted(EPS_MODELS))
@pytest.mark.parametrize("name", SDE_ORDER1_DATA)
def test_phi_sde_order1_is_ddpm(name, eps_name):
    """Same standard normal draws z in both: the module's noise is unit variance in y = x / sqrt(a) and is
    multiplied by its std in y; converting back multiplies by sqrt(a'), which is exactly DDPM's sqrt(var)
    in x (sqrt(a') std_y = sqrt(var_x)), so the same z must be fed to both."""
    eps_model = EPS_MODELS[eps_name]
    module = load_module(name)
    sigmas = _schedule_sigmas()
    x_T = _x_T(1)
    gen = torch.Generator().manual_seed(2)
    noises = [torch.randn(BATCH, D, generator=gen, dtype=torch.float64) for _ in range(len(TIMESTEPS) - 1)]
    reference = ddpm_reference(eps_model, x_T, noises)

    calls = []

    def noise_sampler(sigma, sigma_next):
        k = len(calls)
        calls.append((float(sigma), float(sigma_next)))
        assert (float(sigma), float(sigma_next)) == (float(sigmas[k]), float(sigmas[k + 1]))
        return noises[k]

    visited = []
    y_T = x_T / math.sqrt(ALPHAS_CUMPROD[TIMESTEPS[0]])
    out = module.sample(
        _normalized_denoiser(eps_model, sigmas),
        y_T,
        sigmas,
        noise_sampler=noise_sampler,
        callback=lambda info: visited.append(info["x"]),
    )
    assert len(calls) == len(noises)
    assert _rel(out, reference[-1]) < 1e-12
    for k in range(1, len(TIMESTEPS)):
        x_k = math.sqrt(ALPHAS_CUMPROD[TIMESTEPS[k]]) * visited[k]
        assert _rel(x_k, reference[k - 1]) < 1e-12, f"step {k} (t = {TIMESTEPS[k]})"
    # the noise matters: with other draws the result differs
    other = module.sample(
        _normalized_denoiser(eps_model, sigmas), y_T, sigmas, noise_sampler=lambda s, t: -noises[0]
    )
    assert _rel(other, reference[-1]) > 1e-3


# ------------------------------------------------------------------------------------------------
# 8. one step with a constant prediction
# ------------------------------------------------------------------------------------------------

STEP_SIGMAS = [0.05, 0.8, 5.0, 40.0, 200.0]
STEP_RATIOS = [1 - 1e-6, 0.9, 0.5, 0.1, 1e-3]
DPS = 40


@functools.cache
def _phi_functions(spec_phi: str):
    """phi and phi' as mpmath functions, from the phi text alone (parsed, differentiated by SymPy)."""
    expr = parse_expression(spec_phi)
    (s,) = expr.free_symbols
    return sympy.lambdify(s, expr, "mpmath"), sympy.lambdify(s, sympy.diff(expr, s), "mpmath")


@functools.cache
def _exact_step(spec_phi: str, s: float, s_next: float, noise_form: bool):
    """Exact one-step quantities of dy = (phi'/phi)(y - x0) ds + h dw, h^2 = 2 s (s phi'/phi - 1), at DPS digits.

    Data form (x0 held constant over the step): y' ~ N(r y + (1 - r) x0, s'^2 - s^2 r^2), r = phi(s')/phi(s);
    returns (r, 1 - r, s'^2 - s^2 r^2) (1 - r in high precision: it cancels in float64 for short steps).
    Noise form (eps = (y - x0)/s held constant): y' ~ N(y - e0 eps, w); returns (1, e0, w) with
    e0 = int_{s'}^{s} u phi'/phi du and w = int_{s'}^{s} h^2 du.
    """
    phi, dphi = _phi_functions(spec_phi)
    with mpmath.workdps(DPS):
        s, s_next = mpmath.mpf(s), mpmath.mpf(s_next)
        if noise_form:
            e0 = mpmath.quad(lambda u: u * dphi(u) / phi(u), [s_next, s])
            w = mpmath.quad(lambda u: 2 * u * (u * dphi(u) / phi(u) - 1), [s_next, s])
            return 1.0, float(e0), float(w)
        r = phi(s_next) / phi(s)
        return float(r), float(1 - r), float(s_next**2 - s**2 * r**2)


@pytest.mark.parametrize("name", NOISY)
def test_one_step_with_constant_prediction(name):
    module = load_module(name)
    phi, _ = _phi_functions(module.SPEC["phi"])
    noise_form = getattr(module, "FORM", "data") == "noise"
    # noise_scale_fn is phi
    grid = torch.tensor(STEP_SIGMAS, dtype=torch.float64)
    with mpmath.workdps(DPS):
        expected_phi = [float(phi(mpmath.mpf(v))) for v in STEP_SIGMAS]
    np.testing.assert_allclose(module.noise_scale_fn(grid).numpy(), expected_phi, rtol=1e-13)

    for s in STEP_SIGMAS:
        for q in STEP_RATIOS:
            s_next = s * q
            r, weight, var = _exact_step(module.SPEC["phi"], s, s_next, noise_form)
            ratios, stds, weights, finals = module.coefficient_table(
                torch.tensor([s, s_next], dtype=torch.float64)
            )
            where = f"{name}: {s} -> {s_next}"
            assert finals == [False] and len(weights[0]) == 1, where
            # data form: y' = r y + (1 - r) x0 + sqrt(var) z;
            # noise form: y' = y - e0 eps + sqrt(w) z (ratio 1, weight -e0 on the stored eps)
            assert ratios[0] == pytest.approx(r, rel=1e-13, abs=0), where
            assert weights[0][0] == pytest.approx(-weight if noise_form else weight, rel=1e-12, abs=0), where
            assert stds[0] ** 2 == pytest.approx(var, rel=1e-12, abs=0), where


@pytest.mark.parametrize("name", NOISY)
def test_one_step_distribution_by_sampling(name):
    """One step s = 2 -> s' = 0.7 of sample() with a constant prediction: deterministic part exact,
    noise part by Monte Carlo with n = 200000 (mean within 5 standard errors std/sqrt(n); std within 5 of
    its standard errors std/sqrt(2n), i.e. 0.8 %)."""
    module = load_module(name)
    noise_form = getattr(module, "FORM", "data") == "noise"
    s, s_next, y_value, c = 2.0, 0.7, 1.25, -0.4
    r, weight, var = _exact_step(module.SPEC["phi"], s, s_next, noise_form)
    if noise_form:
        # the model's prediction has constant eps = c: D(y, s) = y - s c
        def model(y, sigma):
            return y - sigma[:, None] * c

        mean, std = y_value - weight * c, math.sqrt(var)
    else:
        # constant data prediction x0 = c
        def model(y, sigma):
            return torch.full_like(y, c)

        mean, std = r * y_value + weight * c, math.sqrt(var)
    sigmas = torch.tensor([s, s_next], dtype=torch.float64)
    n = 200_000
    y = torch.full((n, 1), y_value, dtype=torch.float64)
    det = module.sample(
        model, y[:4], sigmas, noise_sampler=lambda a, b: torch.zeros(4, 1, dtype=torch.float64)
    )
    np.testing.assert_allclose(det.numpy(), mean, rtol=1e-13, atol=1e-15)
    out = module.sample(model, y, sigmas, generator=torch.Generator().manual_seed(5))
    assert abs(float(out.mean()) - mean) < 5 * std / math.sqrt(n)
    assert abs(float(out.std()) - std) < 5 * std / math.sqrt(2 * n)

"""The process families' native entry points (``sample_native``) against exact and reference solutions.

Every family (VP, VE, EDM, rectified flow, mean-reverting) is the variance-exploding process in normalized
coordinates ``y = (x - mu)/alpha``, ``s = sigma/alpha``; the tests below drive ``sample_native`` in each
family's own time and parameterization with *exact* model outputs (closed-form Gaussian posterior means, or
the exact Gaussian-mixture denoiser) and check, with figures from the calibrating runs quoted per test:

1. exact Gaussian flows: the method order of every ODE module (exact starting values, via ``sample`` with
   ``history``) on a grid uniform in the half log-SNR, ``sample_native`` == ``sample`` to rounding, and the
   native end state against the closed-form flow;
2. Gaussian mixtures: convergence of ``sample_native`` to DOP853 mapped into the family's coordinates;
3. the data (DPM-Solver++) and noise (DPM-Solver) update forms of VP: same limit, both order 2, different
   at finite step;
4. velocity prediction: the conversion reproduces the data-form trajectory;
5. the mean-reverting family: one order-1 reverse-SDE step is IR-SDE's optimal posterior step, and the
   sampler is equivariant under shifting x, mu and the data together;
6. the same normalized problem solved in VP, EDM and flow coordinates agrees to rounding;
7. discrete (DDPM table) schedules with a final step to sigma = 0;
8. starting from pure noise (alpha = 0).
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from derive.verify.orders import fit_order
from derive.verify.problems import GaussianData, GaussianMixture, reference_flow

from .conftest import load_module, manifest

MANIFEST = manifest()
FAMILIES = ("vpsde", "vesde", "edm", "flow", "mrsde")
ODE_MODULES = sorted(
    n
    for n, e in MANIFEST.items()
    if e.get("family") in FAMILIES and e.get("dynamics") == "ode" and e.get("schedule") != "discrete"
)  # discrete tables are covered by the DDPM-table tests below
F64 = torch.float64

#: data N(M_DATA, V_DATA) per coordinate (d = 3); one narrow coordinate makes the flow bend at small s
M_DATA = np.array([0.3, -0.5, 1.0])
V_DATA = np.array([0.5, 1.2, 0.05])
#: the mean the MR process reverts to (a "degraded image")
MU = np.array([0.7, -0.2, 0.4])

#: half log-SNR lambda = log(alpha/sigma) from the noisy end to the clean end, per family (its usual range:
#: VP linear t = 1 -> ~1e-3; VE sigma 50 -> 0.01; EDM sigma 80 -> 0.002; flow t = 0.99 -> 0.005;
#: MR t 3 -> 1e-4)
LAMBDA_RANGE = {
    "vpsde": (-5.0, 4.5),
    "vesde": (-3.9, 4.6),
    "edm": (-4.38, 6.2),
    "flow": (-4.5, 5.2),
    "mrsde": (-3.0, 4.2),
}


def test_catalogue_has_every_family_and_order():
    """Guard: the parametrisations below must not silently become empty."""
    got = {(MANIFEST[n]["family"], MANIFEST[n]["order"]) for n in ODE_MODULES}
    assert got == {(f, k) for f in FAMILIES for k in (1, 2, 3)}


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


@functools.cache
def catalogue(name: str):
    return load_module(name)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """render(Spec(...)) into a temporary folder and load it (cached per spec)."""
    from derive.emit.render import render
    from derive.spec import Spec

    folder = tmp_path_factory.mktemp("rendered")
    cache = {}

    def get(**fields):
        spec = Spec(**fields)
        if spec.name not in cache:
            (folder / f"{spec.name}.py").write_text(render(spec))
            cache[spec.name] = load_module(spec.name, folder)
        return cache[spec.name]

    return get


def time_of_lambda(module, lam: float, **sched) -> float:
    """The family time t with log(alpha/sigma)(t) = lam, in closed form (continuous schedules)."""
    s = math.exp(-lam)
    family = module.FAMILY
    if family == "vpsde":
        bmin, bmax = sched.get("beta_min", 0.1), sched.get("beta_max", 20.0)
        big_b = math.log1p(s * s)  # int_0^t beta = -2 log alpha = log(1 + s^2)
        return (-bmin + math.sqrt(bmin * bmin + 2 * (bmax - bmin) * big_b)) / (bmax - bmin)
    if family == "vesde":
        smin, smax = sched.get("sigma_min", 0.01), sched.get("sigma_max", 50.0)
        return math.log(s / smin) / math.log(smax / smin)
    if family == "edm":
        return s
    if family == "flow":
        return s / (1 + s)
    if family == "mrsde":
        theta, lam_std = sched.get("theta", 1.0), sched.get("stationary_std", 1.0)
        return math.log1p((s / lam_std) ** 2) / (2 * theta)
    raise KeyError(family)


def time_of_sigma_brentq(module, s: float, lo: float, hi: float, **sched) -> float:
    """Invert s(t) = sigma/alpha numerically (independent of the closed forms above)."""

    def f(t):
        a, g = module.schedule(torch.tensor([t], dtype=F64), **sched)
        return math.log(float(g[0]) / float(a[0])) - math.log(s)

    return brentq(f, lo, hi, xtol=1e-16, rtol=4 * np.finfo(float).eps, maxiter=500)


def lambda_grid(module, n: int, **sched) -> torch.Tensor:
    lam0, lam1 = LAMBDA_RANGE[module.FAMILY]
    lams = np.linspace(lam0, lam1, n + 1)
    return torch.tensor([time_of_lambda(module, float(v), **sched) for v in lams], dtype=F64)


def family_output(module, x0, eps, a: float, g: float):
    """The module's own parameterization from x0 and eps."""
    kind = module.PREDICTION
    if kind == "data":
        return x0
    if kind == "noise":
        return eps
    if kind == "velocity":
        return a * eps - g * x0 if module.FAMILY == "vpsde" else eps - x0
    raise KeyError(kind)


def gaussian_native_model(module, mean, var, mu=None, calls=None, **sched):
    """Exact model of ``module``'s parameterization for data N(mean, var), at the family's time t.

    x = a x0 + (1 - a) mu + g eps; E[x0 | x] = mean + a var/(a^2 var + g^2) (x - (1 - a) mu - a mean) (also
    at a = 0, where it is the prior mean); eps = (x - (1 - a) mu - a x0)/g.
    """
    mean_t, var_t = torch.as_tensor(mean, dtype=F64), torch.as_tensor(var, dtype=F64)
    mu_t = 0.0 if mu is None else torch.as_tensor(mu, dtype=F64)

    def model(x, t):
        assert t.shape == (x.shape[0],)
        if calls is not None:
            calls.append(t.clone())
        a, g = (float(v[0]) for v in module.schedule(t[:1], **sched))
        z = x - (1 - a) * mu_t
        x0 = mean_t + a * var_t / (a * a * var_t + g * g) * (z - a * mean_t)
        eps = (z - a * x0) / g
        return family_output(module, x0, eps, a, g)

    return model


def mixture_native_model(module, mixture, mu=None, **sched):
    """The exact mixture denoiser, converted to ``module``'s parameterization (alpha > 0)."""
    mu_t = 0.0 if mu is None else torch.as_tensor(mu, dtype=F64)

    def model(x, t):
        a, g = (float(v[0]) for v in module.schedule(t[:1], **sched))
        z = x - (1 - a) * mu_t
        # numpy: torch.softmax on tiny tensors is slow when its thread pool competes for the cores
        x0 = torch.from_numpy(mixture.denoiser_np((z / a).numpy(), g / a))
        eps = (z - a * x0) / g
        return family_output(module, x0, eps, a, g)

    return model


def normalized_model(gaussian):
    def model(y, s):
        return gaussian.denoiser_torch(y, s)

    return model


def normalized_prediction(module, y, s, gaussian):
    """What ``sample`` stores in its history: the data prediction, or eps = (y - x0)/s (noise form)."""
    x0 = gaussian.denoiser_np(y, s)
    return torch.from_numpy(x0 if module.FORM == "data" else (y - x0) / s)


def native_kwargs(module, mu=None):
    return {"mu": torch.as_tensor(mu, dtype=F64)} if module.FAMILY == "mrsde" else {}


def start_points(gaussian, s0, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return gaussian.mean + np.sqrt(gaussian.var + s0**2) * rng.standard_normal((n, gaussian.d))


def rel_diff(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    return float((a - b).abs().max() / b.abs().max())


# ------------------------------------------------------------------------------------------------
# 1. exact Gaussian flows, every ODE module of every family
# ------------------------------------------------------------------------------------------------

#: method-order study: 5 halvings, fitted over >= 4 of them (min_points = 5; noise-form modules are
#: pre-asymptotic at N = 32 on these wide lambda ranges, local orders 2.64 -> 2.98 for VP order 3)
ORDER_STEPS = (32, 64, 128, 256, 512, 1024)
#: sample_native vs sample and vs the exact flow (the native run has the lower-order start)
NATIVE_STEPS = (16, 32, 64, 128, 256)


def _gaussian_problem(module):
    mu = MU if module.FAMILY == "mrsde" else np.zeros(3)
    # normalized data: y = (x - mu)/alpha = (x0 - mu) + s eps
    return mu, GaussianData(M_DATA - mu, V_DATA)


def _method_error(module, gauss, n):
    """Exact starting states and a full history of exact predictions: the error of the method itself."""
    K = module.ORDER
    ts = lambda_grid(module, n)
    a, g = module.schedule(ts)
    s = (g / a).numpy()
    y0 = start_points(gauss, s[0])
    exact = [gauss.exact_flow(y0, s[0], s[j]) for j in range(K)] + [gauss.exact_flow(y0, s[0], s[n])]
    history = [normalized_prediction(module, exact[j], s[j], gauss) for j in range(K - 1)]
    out = module.sample(
        normalized_model(gauss), torch.from_numpy(exact[K - 1]), torch.from_numpy(s), history=history or None
    )
    return float(np.abs(out.numpy() - exact[-1]).max())


def _native_run(module, mu, gauss, n):
    """(sample_native's end state mapped to normalized y, sample's end state, the exact end state)."""
    ts = lambda_grid(module, n)
    a, g = module.schedule(ts)
    s = (g / a).numpy()
    y0 = start_points(gauss, s[0])
    y_plain = module.sample(normalized_model(gauss), torch.from_numpy(y0), torch.from_numpy(s))
    x_start = torch.from_numpy(float(a[0]) * y0 + mu)
    model = gaussian_native_model(module, M_DATA, V_DATA, mu)
    x_native = module.sample_native(model, x_start, ts, **native_kwargs(module, mu))
    assert x_native.shape == x_start.shape and x_native.dtype == F64
    y_native = (x_native - torch.from_numpy(mu)) / float(a[-1])
    return y_native, y_plain, gauss.exact_flow(y0, s[0], s[-1])


def _step_sizes(module, steps):
    lam0, lam1 = LAMBDA_RANGE[module.FAMILY]
    return [(lam1 - lam0) / n for n in steps]


@pytest.mark.parametrize("name", ODE_MODULES)
def test_exact_gaussian_flow_method_order(name, record_property):
    """Method order on a grid uniform in lambda over the family's range, against the closed-form flow.

    Measured (N = 32..1024, fit over the finest >= 5 points): order 1: 0.98-0.99; order 2: data form
    (EDM, flow) 2.03, noise form (VP, VE, MR) 1.94-1.96; order 3: data form 3.03, noise form 2.92-2.94
    (local orders 2.64 2.82 2.91 2.95 2.98 for VP: the noise form reaches the asymptotic range later).
    """
    module = catalogue(name)
    _, gauss = _gaussian_problem(module)
    errors = [_method_error(module, gauss, n) for n in ORDER_STEPS]
    fit = fit_order(_step_sizes(module, ORDER_STEPS), errors, min_points=5, slope_tol=0.15)
    record_property("method_order", round(fit.order, 3))
    print(f"\n{name}: method {fit}")
    assert abs(fit.order - module.METHOD_ORDER) <= 0.2, str(fit)  # K, or K + 1 for a predictor-corrector


@pytest.mark.parametrize("name", ODE_MODULES)
def test_exact_gaussian_flow_native_matches_normalized_and_exact(name, record_property):
    """sample_native (family time, family parameterization) == sample (normalized) to rounding, and its end
    state approaches the closed-form flow at the as-used order (at least min(K, 2): the first steps have a
    shorter history) with errors within a small factor of the method's own.

    Measured (N = 16..256): relative agreement <= 9e-15; native/method error ratio 1.00-1.09 (the lower-order
    start costs little here); native orders 0.97-0.98 (K = 1), 1.86-2.05 (K = 2), 2.79-3.04 (K = 3).
    """
    module = catalogue(name)
    K = module.ORDER
    mu, gauss = _gaussian_problem(module)
    native_errors, method_errors, agreement = [], [], []
    for n in NATIVE_STEPS:
        y_native, y_plain, exact = _native_run(module, mu, gauss, n)
        agreement.append(rel_diff(y_native, y_plain))
        native_errors.append(float(np.abs(y_native.numpy() - exact).max()))
        method_errors.append(_method_error(module, gauss, n))
    fit = fit_order(_step_sizes(module, NATIVE_STEPS), native_errors)
    ratios = [e / m for e, m in zip(native_errors, method_errors)]
    record_property("native_order", round(fit.order, 3))
    print(f"\n{name}: native {fit}\n  agreement {max(agreement):.2e} ratios {np.round(ratios, 2).tolist()}")
    assert max(agreement) <= 1e-12, agreement
    assert fit.order >= min(K, 2) - 0.2, str(fit)
    assert max(ratios) <= 1.5, (native_errors, method_errors)


# ------------------------------------------------------------------------------------------------
# 2. Gaussian mixtures: sample_native converges to DOP853 in the family's coordinates
# ------------------------------------------------------------------------------------------------

MIXTURE = GaussianMixture.standard(d=2, seed=0)
MIXTURE_MU = np.array([0.4, -0.3])
MIXTURE_STEPS = (16, 32, 64, 128, 256)


@pytest.mark.parametrize("family", FAMILIES)
def test_gaussian_mixture_native_converges_to_reference_flow(family, record_property):
    """Order-3 ODE modules, model output = the exact mixture denoiser converted to the family's
    parameterization, 8 points y0 ~ p_{s_max}; reference = DOP853 (rtol 1e-13) in normalized coordinates
    mapped to x = alpha y + (1 - alpha) mu.

    Measured (N = 16..256, lambda over the family's range): as-used orders 2.82 (VP), 2.76 (VE), 3.11 (EDM),
    3.06 (flow), 2.84 (MR); errors at N = 256: 2.3e-5, 2.4e-5, 1.2e-5, 9.0e-6, 1.9e-5. (As used, the first
    two steps have a shorter history, so the asymptotic order is between 2 and 3; EDM and flow are still
    pre-asymptotic, local orders 3.2 -> 3.03.)
    """
    module = catalogue(f"{family}_order3_ode")
    mu = MIXTURE_MU if family == "mrsde" else np.zeros(2)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((8, 2))
    data = MIXTURE.sample_np(8, rng)
    errors = []
    reference = None
    for n in MIXTURE_STEPS:
        ts = lambda_grid(module, n)
        a, g = (v.tolist() for v in module.schedule(ts))
        s0, s1 = g[0] / a[0], g[-1] / a[-1]
        y0 = data + s0 * noise
        if reference is None:  # the grid's end points do not depend on n
            reference = reference_flow(MIXTURE.denoiser_np, y0, s0, s1)
        x = torch.from_numpy(a[0] * y0 + (1 - a[0]) * mu)
        out = module.sample_native(
            mixture_native_model(module, MIXTURE, mu), x, ts, **native_kwargs(module, mu)
        )
        exact = a[-1] * reference + (1 - a[-1]) * mu
        errors.append(float(np.abs(out.numpy() - exact).max()))
    fit = fit_order([1 / n for n in MIXTURE_STEPS], errors, floor=1e-12)
    record_property("order", round(fit.order, 3))
    print(f"\n{family}: {fit}; error at N = {MIXTURE_STEPS[-1]}: {errors[-1]:.2e}")
    assert all(e1 < e0 for e0, e1 in itertools.pairwise(errors)), errors
    assert 2.5 <= fit.order <= 3.4, str(fit)
    assert errors[-1] < 1e-4, errors


# ------------------------------------------------------------------------------------------------
# 3. the two update forms of VP: data (DPM-Solver++) and noise (DPM-Solver)
# ------------------------------------------------------------------------------------------------


def _native_end(module, n, mean=M_DATA, var=V_DATA, mu=None):
    """sample_native on the family's lambda grid with the exact Gaussian model; start y0 from a fixed seed."""
    ts = lambda_grid(module, n)
    a, g = (v.tolist() for v in module.schedule(ts))
    mu_np = np.zeros(len(mean)) if mu is None else np.asarray(mu)
    gauss = GaussianData(np.asarray(mean) - mu_np, var)
    y0 = start_points(gauss, g[0] / a[0])
    x = torch.from_numpy(a[0] * y0 + mu_np)
    model = gaussian_native_model(module, mean, var, None if mu is None else mu_np)
    out = module.sample_native(model, x, ts, **native_kwargs(module, mu_np))
    exact = a[-1] * gauss.exact_flow(y0, g[0] / a[0], g[-1] / a[-1]) + mu_np
    return out, torch.from_numpy(exact)


def test_vp_data_and_noise_forms_both_order_2_same_flow_different_steps(rendered, record_property):
    """Measured: method orders 2.03 (data) / 1.94 (noise) (N = 32..1024); |data - noise| = 3.9e-2 at 10
    steps; errors against the exact flow at 256 steps (as used) 1.5e-4 (data) / 4.3e-4 (noise)."""
    data = rendered(family="vpsde", order=2, dynamics="ode", prediction="data")
    noise = rendered(family="vpsde", order=2, dynamics="ode", prediction="noise")
    assert (data.FORM, noise.FORM) == ("data", "noise")
    _, gauss = _gaussian_problem(data)
    for module in (data, noise):
        errors = [_method_error(module, gauss, n) for n in ORDER_STEPS]
        fit = fit_order(_step_sizes(module, ORDER_STEPS), errors, min_points=5, slope_tol=0.15)
        record_property(f"{module.FORM}_order", round(fit.order, 3))
        print(f"\n{module.FORM}: {fit}")
        assert abs(fit.order - 2) <= 0.2, str(fit)
    # finite step: different methods
    out_data, exact = _native_end(data, 10)
    out_noise, _ = _native_end(noise, 10)
    difference = float((out_data - out_noise).abs().max())
    print(f"|data - noise| at 10 steps: {difference:.2e}")
    assert difference > 1e-8
    # the same limit: both converge to the one exact flow, and to each other
    out_data, exact = _native_end(data, 256)
    out_noise, _ = _native_end(noise, 256)
    e_data, e_noise = float((out_data - exact).abs().max()), float((out_noise - exact).abs().max())
    fine_difference = float((out_data - out_noise).abs().max())
    print(f"errors at 256 steps: data {e_data:.2e} noise {e_noise:.2e}, difference {fine_difference:.2e}")
    assert e_data < 1e-3 and e_noise < 1e-3
    assert fine_difference < difference / 30


# ------------------------------------------------------------------------------------------------
# 4. velocity prediction
# ------------------------------------------------------------------------------------------------


def _exact_velocity_case(module, seed=3):
    """Random x0, eps at a few times; the module's velocity output; expected x0."""
    rng = np.random.default_rng(seed)
    for t in (0.05, 0.3, 0.7, 0.95):
        a, g = (float(v[0]) for v in module.schedule(torch.tensor([t], dtype=F64)))
        x0 = torch.from_numpy(rng.standard_normal((2, 3)))
        eps = torch.from_numpy(rng.standard_normal((2, 3)))
        yield a, g, x0, eps, a * x0 + g * eps, family_output(module, x0, eps, a, g)


VELOCITY_FLOW = [f"flow_order{k}_ode" for k in (1, 2, 3)]


@pytest.mark.parametrize("name", VELOCITY_FLOW)
def test_velocity_to_prediction_recovers_x0(name):
    module = catalogue(name)
    assert (module.PREDICTION, module.FORM) == ("velocity", "data")
    for a, g, x0, eps, x, v in _exact_velocity_case(module):
        torch.testing.assert_close(v, eps - x0)
        data, stored = module.to_prediction(x, v, a, g, 0.0)
        torch.testing.assert_close(data, x0, rtol=0, atol=1e-14)
        torch.testing.assert_close(stored, x0, rtol=0, atol=1e-14)


def test_vp_velocity_conversion_gives_the_data_form_trajectory(rendered):
    """The velocity module converts v = alpha eps - sigma x0 to x0 and runs the data form: fed the equivalent
    velocity it reproduces the data-prediction module fed x0 (measured 6e-16 relative), not the noise-form
    module (3.5e-2 apart at 10 steps: a different method, see test 3)."""
    velocity = rendered(family="vpsde", order=2, dynamics="ode", prediction="velocity")
    data = rendered(family="vpsde", order=2, dynamics="ode", prediction="data")
    assert (velocity.PREDICTION, velocity.FORM) == ("velocity", "data")
    for a, g, x0, eps, x, v in _exact_velocity_case(velocity):
        torch.testing.assert_close(v, a * eps - g * x0)
        recovered, _ = velocity.to_prediction(x, v, a, g, 0.0)
        torch.testing.assert_close(recovered, x0, rtol=0, atol=1e-14)
    for n in (10, 40):
        out_velocity, exact = _native_end(velocity, n)
        out_data, _ = _native_end(data, n)
        assert rel_diff(out_velocity, out_data) <= 1e-10
    # and it is the flow (error at 40 steps measured 6.6e-3)
    assert float((out_velocity - exact).abs().max()) < 1e-2


@pytest.mark.parametrize("order", (1, 2, 3))
def test_flow_velocity_trajectory_equals_edm_data_trajectory(order):
    """Flow (velocity model, alpha = 1 - t) and EDM (data model, sigma = t) on the same normalized grid
    (t_edm = s = t/(1 - t)) are the same data-form method: y = x/alpha agrees to rounding (measured
    <= 1e-15)."""
    flow, edm = catalogue(f"flow_order{order}_ode"), catalogue(f"edm_order{order}_ode")
    ts = lambda_grid(flow, 20)
    a, g = flow.schedule(ts)
    s = g / a
    gauss = GaussianData(M_DATA, V_DATA)
    y0 = start_points(gauss, float(s[0]))
    out_flow = flow.sample_native(
        gaussian_native_model(flow, M_DATA, V_DATA), torch.from_numpy(float(a[0]) * y0), ts
    )
    out_edm = edm.sample_native(gaussian_native_model(edm, M_DATA, V_DATA), torch.from_numpy(y0), s)
    assert rel_diff(out_flow / float(a[-1]), out_edm) <= 1e-10


# ------------------------------------------------------------------------------------------------
# 5. the mean-reverting family
# ------------------------------------------------------------------------------------------------

MR_THETA, MR_LAMBDA = 1.3, 0.7


def mr_posterior(x_t, x0, mu, t, t_next, theta=MR_THETA, lam=MR_LAMBDA):
    """q(x_t' | x_t, x0) of the MR process, by Gaussian conditioning (IR-SDE's optimal reverse step).

    theta_bar = theta t. Prior: x_t' | x0 ~ N(mu + (x0 - mu) e^{-theta_bar'}, lam^2 (1 - e^{-2 theta_bar'}));
    transition: x_t | x_t' ~ N(mu + (x_t' - mu) r, lam^2 (1 - r^2)), r = e^{-(theta_bar - theta_bar')}.
    """
    a_next = math.exp(-theta * t_next)
    r = math.exp(-theta * (t - t_next))
    prior_var = lam**2 * (1 - a_next**2)
    trans_var = lam**2 * (1 - r**2)
    post_var = 1 / (1 / prior_var + r**2 / trans_var)
    post_mean = mu + post_var * ((x0 - mu) * a_next / prior_var + r * (x_t - mu) / trans_var)
    return post_mean, math.sqrt(post_var)


@pytest.mark.parametrize("t, t_next", [(0.8, 0.5), (3.0, 0.05), (0.02, 0.019)])
def test_mr_order1_sde_data_step_is_the_ir_sde_posterior(rendered, t, t_next):
    """theta = 1.3, stationary std 0.7. Measured: mean to 5e-16 relative, std to 1.7e-14 relative."""
    module = rendered(family="mrsde", order=1, dynamics="sde", prediction="data")
    rng = np.random.default_rng(7)
    x_t, x0, mu, z = (torch.from_numpy(rng.standard_normal((2, 4))) for _ in range(4))
    mean, std = mr_posterior(x_t, x0, mu, t, t_next)
    calls = []

    def model(x, tb):
        calls.append(tb.clone())
        return x0

    kwargs = {"mu": mu, "theta": MR_THETA, "stationary_std": MR_LAMBDA}
    ts = torch.tensor([t, t_next], dtype=F64)
    out_mean = module.sample_native(
        model, x_t, ts, noise_sampler=lambda a, b: torch.zeros_like(x_t), **kwargs
    )
    out = module.sample_native(model, x_t, ts, noise_sampler=lambda a, b: z, **kwargs)
    assert len(calls) == 2 and float(calls[0][0]) == t
    torch.testing.assert_close(out_mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((out - out_mean) / z, torch.full_like(z, std), rtol=1e-12, atol=1e-13)


def _fixed_noise(shape, n, seed=11):
    """A noise_sampler that replays the same sequence on every run (reset by calling .reset())."""
    noise = [torch.from_numpy(np.random.default_rng(seed + i).standard_normal(shape)) for i in range(n)]
    state = {"i": 0}

    def sampler(sigma, sigma_next):
        state["i"] += 1
        return noise[state["i"] - 1]

    sampler.reset = lambda: state.update(i=0)
    return sampler


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "mrsde_order2_ode"},
        {"name": "mrsde_order3_ode"},
        {"name": "mrsde_order3_sde"},
        {"family": "mrsde", "order": 1, "dynamics": "sde", "prediction": "data"},
    ],
    ids=lambda spec: spec.get("name", "mrsde_order1_sde_data"),
)
def test_mr_shift_equivariance(rendered, spec):
    """Shifting x, mu and the data by the same constant shifts the result by that constant (to rounding;
    measured <= 2.7e-15 absolute), for the ODE and the SDE with a fixed noise sequence."""
    module = catalogue(spec["name"]) if "name" in spec else rendered(**spec)
    ts = lambda_grid(module, 12)
    a = module.schedule(ts)[0].tolist()
    rng = np.random.default_rng(2)
    y0 = rng.standard_normal((4, 3))
    sampler = _fixed_noise((4, 3), len(ts))
    outs = []
    for shift in (0.0, 1.75):
        mu = MU + shift
        x = torch.from_numpy(a[0] * y0 + mu)
        model = gaussian_native_model(module, M_DATA + shift, V_DATA, mu)
        sampler.reset()
        outs.append(module.sample_native(model, x, ts, mu=torch.from_numpy(mu), noise_sampler=sampler))
    assert float(outs[0].abs().max()) > 0.1
    torch.testing.assert_close(outs[1], outs[0] + 1.75, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# 6. one normalized problem in VP, EDM and flow coordinates
# ------------------------------------------------------------------------------------------------


def test_same_normalized_problem_in_vp_edm_and_flow_coordinates(rendered):
    """A log-uniform normalized grid s 20 -> 0.02 (12 steps) mapped to each family's time (VP linear by
    brentq on its own schedule, flow t = s/(1 + s), EDM t = s); data-form order-2 modules with the exact
    Gaussian model in each parameterization (VP data, EDM data, flow velocity). The normalized end states
    y = x/alpha agree with each other and with sample() (measured <= 1.2e-15 relative; the brentq times
    reproduce s to 1.4e-14)."""
    vp = rendered(family="vpsde", order=2, dynamics="ode", prediction="data")
    edm, flow = catalogue("edm_order2_ode"), catalogue("flow_order2_ode")
    s = np.exp(np.linspace(math.log(20.0), math.log(0.02), 13))
    times = {
        vp: torch.tensor([time_of_sigma_brentq(vp, float(v), 1e-8, 1.0) for v in s], dtype=F64),
        edm: torch.tensor(s, dtype=F64),
        flow: torch.tensor(s / (1 + s), dtype=F64),
    }
    # the brentq inversion agrees with the closed form
    np.testing.assert_allclose(times[vp].numpy(), [time_of_lambda(vp, -math.log(v)) for v in s], rtol=1e-12)
    gauss = GaussianData(M_DATA, V_DATA)
    y0 = start_points(gauss, s[0])
    results = {}
    for module, ts in times.items():
        assert module.FORM == "data"
        a, g = module.schedule(ts)
        np.testing.assert_allclose((g / a).numpy(), s, rtol=1e-13)
        x = torch.from_numpy(float(a[0]) * y0)
        out = module.sample_native(gaussian_native_model(module, M_DATA, V_DATA), x, ts)
        results[module.FAMILY] = out / float(a[-1])
    reference = vp.sample(normalized_model(gauss), torch.from_numpy(y0), torch.from_numpy(s))
    exact = torch.from_numpy(gauss.exact_flow(y0, s[0], s[-1]))
    for family, y in results.items():
        assert rel_diff(y, reference) <= 1e-10, family
    assert float((reference - exact).abs().max()) < 0.05  # it is the flow, at 12 steps


# ------------------------------------------------------------------------------------------------
# 7. discrete (DDPM table) schedules
# ------------------------------------------------------------------------------------------------


def ddpm_alphas_cumprod():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    return torch.cumprod(1 - betas, 0)


def test_discrete_vp_schedule_final_to_zero(rendered):
    """vpsde order 2 ODE (noise prediction) on the DDPM linear table, integer timesteps 999, 999 - k, ...

    The end state with final_to_zero (the last step returns the data prediction at t_last) approaches the
    exact flow to s = 0 as the stride k shrinks: measured errors 3.3e-2, 1.1e-2, 3.8e-3, 1.3e-3 for
    k = 40, 20, 10, 5 (the last step's error ~ s(t_last)^2 ~ t_last: ratios ~2.9 per halving); without it,
    the state at t_last converges at order 2 (measured local orders 1.86 1.95 1.98).
    """
    module = rendered(family="vpsde", order=2, dynamics="ode", schedule="discrete")
    table = ddpm_alphas_cumprod()
    gauss = GaussianData(M_DATA, V_DATA)
    to_zero, to_last = [], []
    strides = (40, 20, 10, 5)
    for stride in strides:
        ts = torch.arange(999, 0, -stride)
        a, g = (v.tolist() for v in module.schedule(ts, alphas_cumprod=table))
        s = [gv / av for av, gv in zip(a, g)]
        y0 = start_points(gauss, s[0])
        x = torch.from_numpy(a[0] * y0)
        calls = []
        model = gaussian_native_model(module, M_DATA, V_DATA, calls=calls, alphas_cumprod=table)
        out = module.sample_native(model, x, ts, alphas_cumprod=table, final_to_zero=True)
        assert torch.isfinite(out).all()
        assert [int(c[0]) for c in calls] == ts.tolist()
        to_zero.append(float(np.abs(out.numpy() - gauss.exact_flow(y0, s[0], 0.0)).max()))
        out = module.sample_native(model, x, ts, alphas_cumprod=table)
        to_last.append(float(np.abs(out.numpy() / a[-1] - gauss.exact_flow(y0, s[0], s[-1])).max()))
    print(f"\nto zero {to_zero}\nto t_last {to_last}")
    assert all(e1 < e0 / 2 for e0, e1 in itertools.pairwise(to_zero)), to_zero
    assert to_zero[-1] < 2e-3
    fit = fit_order(strides, to_last)
    assert abs(fit.order - 2) <= 0.2, str(fit)


def test_discrete_vp_ddpm_timesteps_999_to_19_are_finite(rendered):
    table = ddpm_alphas_cumprod()
    ts = torch.arange(999, 0, -20)
    assert ts[-1] == 19 and len(ts) == 50
    for prediction in ("noise", "data"):
        module = rendered(family="vpsde", order=2, dynamics="ode", schedule="discrete", prediction=prediction)
        x = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 3)))
        model = gaussian_native_model(module, M_DATA, V_DATA, alphas_cumprod=table)
        out = module.sample_native(model, x, ts, alphas_cumprod=table, final_to_zero=True)
        assert torch.isfinite(out).all()
        # the flow to s = 0 maps N(0, I)-ish noise into the data range
        assert float((out - torch.from_numpy(M_DATA)).abs().max()) < 6 * math.sqrt(V_DATA.max())


# ------------------------------------------------------------------------------------------------
# 8. starting from pure noise (alpha = 0)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VELOCITY_FLOW)
def test_flow_data_form_starts_from_pure_noise(name):
    """t = 1 (alpha = 0, x = pure noise) vs t = 1 - 1e-9: the first step's limit is taken analytically."""
    module = catalogue(name)
    assert module.FORM == "data"
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((4, 3)))
    tail = lambda_grid(module, 10)  # t = 0.99 ... 0.005
    results = []
    for t0 in (1.0, 1.0 - 1e-9):
        ts = torch.cat([torch.tensor([t0], dtype=F64), tail])
        out = module.sample_native(gaussian_native_model(module, M_DATA, V_DATA), x, ts)
        assert torch.isfinite(out).all()
        results.append(out)
    assert rel_diff(results[0], results[1]) < 1e-6


def test_noise_form_refuses_pure_noise_start(rendered):
    module = rendered(family="vpsde", order=2, dynamics="ode", schedule="discrete")
    assert module.FORM == "noise"
    table = torch.tensor([0.99, 0.9, 0.5, 0.2, 0.0], dtype=F64)  # DDPM's order: pure noise at the last index
    a, _ = module.schedule(torch.tensor([4]), alphas_cumprod=table)
    assert float(a[0]) == 0.0
    x = torch.ones(2, 3, dtype=F64)
    with pytest.raises(ValueError, match="alpha = 0"):
        module.sample_native(
            lambda x, t: torch.zeros_like(x), x, torch.tensor([4, 3, 2, 1, 0]), alphas_cumprod=table
        )

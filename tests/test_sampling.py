"""Numerical behaviour of the checked-in generated sampler modules (generated/*.py).

What is measured here (figures from the runs that calibrated the tolerances are quoted next to each test):

* convergence order of the deterministic (phi = s, probability-flow ODE) modules against a DOP853
  reference on a Gaussian mixture and against the closed-form flow of Gaussian data, both for the
  method itself (exact starting values via ``history``) and as used (plain ``sample``, lower-order start);
* distributional correctness of the stochastic modules (phi = s^2 and the default phi) on Gaussian
  data, with tolerances derived from the sample size plus the measured discretisation bias;
* reproducibility / non-degeneracy of the noise, per-sample generators;
* the API contract: final step to sigma = 0, repeated sigmas, low-precision states, callback payloads,
  ``noise_sampler`` use, and input validation of ``sigmas``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from derive.methods import METHODS
from derive.verify.orders import fit_order
from derive.verify.problems import (
    GaussianData,
    GaussianMixture,
    append_zero,
    karras_sigmas,
    log_uniform_sigmas,
    reference_flow,
)

from .conftest import MODULE_NAMES, load_module, manifest

MANIFEST = manifest()
#: phi = s: the probability-flow ODE (no noise)
ODE_MODULES = sorted(name for name, entry in MANIFEST.items() if entry["phi"] == "s")
#: phi != s: a genuine SDE (phi = s^2 is the reverse SDE; the default phi is in between)
SDE_MODULES = sorted(name for name, entry in MANIFEST.items() if entry["phi"] != "s")


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """The tensors here are small (or elementwise): intra-op threads only add overhead, and on a loaded
    2-core machine they oversubscribe it (the torch mixture denoiser on a (16, 4) batch took 1.6-12 ms with
    2 threads, 0.5 ms with 1). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _np_model(denoiser_np):
    """A torch model around a float64 numpy denoiser (cheaper than the torch mixture for tiny batches)."""

    def model(x, sigma):
        assert sigma.shape == (x.shape[0],)
        return torch.from_numpy(np.asarray(denoiser_np(x.numpy(), sigma.numpy()), dtype=np.float64))

    return model


def test_catalogue_has_the_modules_these_tests_are_about():
    """Guard: the parametrisations below must not silently become empty."""
    assert {MANIFEST[n]["order"] for n in ODE_MODULES} >= {1, 2, 3}
    assert any(MANIFEST[n]["phi"] == "s**2" for n in SDE_MODULES)
    assert any(MANIFEST[n]["phi"] not in ("s", "s**2") for n in SDE_MODULES)


def _torch_model(denoiser_torch, calls=None):
    def model(x, sigma):
        assert sigma.shape == (x.shape[0],)
        if calls is not None:
            calls.append(sigma.clone())
        return denoiser_torch(x, sigma)

    return model


# ------------------------------------------------------------------------------------------------
# 1. convergence of the phi = s modules on a Gaussian mixture, against DOP853
# ------------------------------------------------------------------------------------------------

MIX = GaussianMixture.standard(d=2, seed=0)
MIX_SMAX, MIX_SMIN = 20.0, 0.05
CONV_STEPS = (16, 32, 64, 128, 256, 512)
N_POINTS = 16


@functools.cache
def _mixture_start():
    """16 points y ~ p_{s_max} (data + s_max * noise) and their exact flow to s_min (DOP853, rtol 1e-13)."""
    rng = np.random.default_rng(11)
    y0 = MIX.sample_np(N_POINTS, rng) + MIX_SMAX * rng.standard_normal((N_POINTS, MIX.d))
    return y0, reference_flow(MIX.denoiser_np, y0, MIX_SMAX, MIX_SMIN, rtol=1e-13)


@functools.cache
def _mixture_reference_state(n_steps: int, index: int):
    """The reference trajectory at sigmas[index] of the n_steps log-uniform schedule."""
    y0, _ = _mixture_start()
    sigmas = log_uniform_sigmas(n_steps, MIX_SMIN, MIX_SMAX)
    return reference_flow(MIX.denoiser_np, y0, MIX_SMAX, float(sigmas[index]), rtol=1e-13)


def _prediction(module, y: np.ndarray, denoised: np.ndarray, s: float) -> np.ndarray:
    """What the module stores in its history: the data prediction, or eps = (y - x0)/s in the noise form."""
    if getattr(module, "FORM", "data") == "noise":
        return (y - denoised) / s
    return denoised


def _convergence_errors(module, exact_state, denoiser_np, y0, smax, smin, steps):
    """Max-abs errors at s_min, (a) with exact starting values and a full history, (b) plain sample()."""
    order = module.ORDER
    model = _np_model(denoiser_np)
    method_errors, as_used_errors = [], []
    for n in steps:
        sigmas = log_uniform_sigmas(n, smin, smax)
        states = [y0] + [exact_state(n, j) for j in range(1, order)]
        history = [
            torch.from_numpy(
                _prediction(module, states[j], denoiser_np(states[j], float(sigmas[j])), sigmas[j])
            )
            for j in range(order - 1)
        ]
        out = module.sample(
            model, torch.from_numpy(states[order - 1]), torch.from_numpy(sigmas), history=history or None
        )
        method_errors.append(float(np.abs(out.numpy() - exact_state(n, n)).max()))
        out = module.sample(model, torch.from_numpy(y0), torch.from_numpy(sigmas))
        as_used_errors.append(float(np.abs(out.numpy() - exact_state(n, n)).max()))
    step_sizes = [math.log(smax / smin) / n for n in steps]
    return fit_order(step_sizes, method_errors), fit_order(step_sizes, as_used_errors)


def _check_orders(module, method_fit, as_used_fit, record_property):
    order = module.METHOD_ORDER  # K, or K + 1 for a predictor-corrector
    record_property("method_order", round(method_fit.order, 3))
    record_property("as_used_order", round(as_used_fit.order, 3))
    print(f"\norder {order}: method {method_fit}\n          as used {as_used_fit}")
    # the order of the method itself: exact starting values, full multistep history from the first step
    assert abs(method_fit.order - order) <= 0.2, str(method_fit)
    if order <= 2:
        assert as_used_fit.order >= order - 0.5, str(as_used_fit)
    else:
        # As used, the first step has only one model output (order-1 update, local error O(h^2)), the
        # second only two (local error O(h^3)), so the *global* error of plain sample() is
        # C1 h^2 + C h^3: asymptotically order 2, not 3. C1 is small (the first step is at s_max where the
        # denoiser barely varies), so the measured slope sits between 2 and 3 and drifts towards 2 as h
        # shrinks (Gaussian data, N = 32 ... 512, data form: local orders 2.89 2.75 2.57 2.39, fit 2.57;
        # orders 4-6: fits 2.13-2.24; mixture: 2.85-2.95). Only what is true is asserted: at least the
        # start-up order 2 (and not more than the method's order).
        assert as_used_fit.order >= 2 - 0.2, str(as_used_fit)
        assert as_used_fit.order <= order + 0.2, str(as_used_fit)


#: Orders 1-3 on the mixture. For orders >= 4 the mixture is still pre-asymptotic at N <= 512 while
#: N = 1024 already reaches the reference's accuracy (order 6: 1.5e-10 at N = 512), so no clean fit exists
#: (measured local orders, N = 16 ... 512: order 4 in lambda 6.55 4.07 3.12 3.73 3.89, order 6 3.81 6.23
#: 6.35 5.71 5.92 on this mixture, worse on others); they are checked against the closed form below.
MIXTURE_MODULES = [name for name in ODE_MODULES if MANIFEST[name]["order"] <= 3]


@pytest.mark.parametrize("name", MIXTURE_MODULES)
def test_ode_convergence_order_on_gaussian_mixture(name, record_property):
    """Max-abs error over 16 points at s_min = 0.05 after starting at s = 20, N = 16 ... 512 log-uniform steps,
    against DOP853 (rtol 1e-13) on the d = 2 standard mixture.

    Measured (method / as used): data form (ersde/edm/flow, identical in normalized coordinates)
    0.992 / 0.992, 2.021 / 2.022, 3.025 / 2.886, errors at N = 512 7.7e-3, 4.6e-5, 5.5e-7 (as used 9.7e-7);
    Taylor in lambda: 1.999 / 1.997, 3.040 / 2.954; noise form (vpsde/vesde/mrsde) 0.992, 1.923 / 1.924,
    2.892 / 2.853 (pre-asymptotic at coarse steps: order-3 local orders 2.52 2.76 2.88 2.94 2.97).
    """
    module = load_module(name)
    y0, exact_end = _mixture_start()

    def exact_state(n, j):
        return exact_end if j == n else _mixture_reference_state(n, j)

    method_fit, as_used_fit = _convergence_errors(
        module, exact_state, MIX.denoiser_np, y0, MIX_SMAX, MIX_SMIN, CONV_STEPS
    )
    _check_orders(module, method_fit, as_used_fit, record_property)


# ------------------------------------------------------------------------------------------------
# 2. the same against the closed-form flow of Gaussian data
# ------------------------------------------------------------------------------------------------

GAUSS = GaussianData(mean=[0.5, -1.0, 2.0], var=[0.3, 2.0, 0.05])
#: predictor-corrector modules: K = 2 is pre-asymptotic up to N = 128 on this problem (local orders 1.38 2.41
#: 2.78 2.90 2.96 from N = 32 to 1024), so its fit starts at N = 64. Measured method orders (N = 64 ... 1024):
#: K = 1: 2.004 (s), 2.012 (lambda); K = 2: 2.884 (s), 3.005 (lambda), 2.98 (vpsde, noise form);
#: K = 3: 3.933 (s), 3.956 (lambda)
PC_STEPS = (64, 128, 256, 512, 1024)


@pytest.mark.parametrize("name", ODE_MODULES)
def test_ode_convergence_order_on_gaussian_exact_flow(name, record_property):
    """Closed-form reference; s 20 -> 0.05, N = 32 ... 512 (coarser than that the noise form is far from
    asymptotic). Measured (method / as used): data form 0.992, 2.022 / 2.023, 3.022 / 2.571 (errors at
    N = 512: 6.6e-3, 3.2e-5, 3.2e-7); noise form 0.992, 1.952 / 1.953, 2.893 / 2.805; lambda variants
    2.012, 3.126 / 1.938, 3.989; orders 4, 5, 6: 4.004 / 2.242, 4.947 / 2.144, 5.976 / 2.131 (order 6
    reaches the float64 floor at N = 512, 1.5e-12, and that point is excluded by fit_order)."""
    module = load_module(name)
    smax, smin = 20.0, 0.05
    rng = np.random.default_rng(5)
    y0 = GAUSS.mean + np.sqrt(GAUSS.var + smax**2) * rng.standard_normal((N_POINTS, GAUSS.d))

    def exact_state(n, j):
        return GAUSS.exact_flow(y0, smax, float(log_uniform_sigmas(n, smin, smax)[j]))

    method_fit, as_used_fit = _convergence_errors(
        module,
        exact_state,
        GAUSS.denoiser_np,
        y0,
        smax,
        smin,
        PC_STEPS if METHODS[module.METHOD].corrector else CONV_STEPS[1:],
    )
    _check_orders(module, method_fit, as_used_fit, record_property)


@pytest.mark.parametrize(
    "name", [n for n in MODULE_NAMES if not METHODS[manifest()[n].get("method", "taylor")].corrector]
)
def test_history_restart_reproduces_the_plain_run(name):
    """Not for modules with a corrector: a corrected run's state at sigmas[m] is not where its stored output was evaluated
    (their corrector weights are checked against mpmath instead, tests/test_methods.py).

    ``history`` means exactly what the plain run has stored: restarting at sigmas[m] from the plain run's
    state there, with its first m predictions (oldest first; eps = (y - x0)/s in the noise form), gives
    a bitwise-identical result, for every m from 1 to ORDER + 1 (more than ORDER: only the last ORDER count).
    The noise is fixed per sigma, so SDE modules are compared on the same path."""
    module = load_module(name)
    sigmas = torch.from_numpy(append_zero(karras_sigmas(10, 0.1, 30.0)))
    gen = torch.Generator().manual_seed(5)
    noise_at = {float(s): torch.randn(6, 3, generator=gen, dtype=torch.float64) for s in sigmas[:-1]}

    def noise(sigma, sigma_next):
        return noise_at[float(sigma)]

    model = _torch_model(CONTRACT_DATA.denoiser_torch)
    infos = []
    plain = module.sample(model, _start(), sigmas, noise_sampler=noise, callback=infos.append)
    noise_form = getattr(module, "FORM", "data") == "noise"
    values = sigmas.tolist()

    def stored(j):
        info = infos[j]
        return (info["x"] - info["denoised"]) / values[j] if noise_form else info["denoised"]

    for m in range(1, module.ORDER + 2):
        calls = []
        restarted = module.sample(
            _torch_model(CONTRACT_DATA.denoiser_torch, calls),
            infos[m]["x"],
            sigmas,
            noise_sampler=noise,
            history=[stored(j) for j in range(m)],
        )
        assert len(calls) == len(sigmas) - 1 - m and float(calls[0][0]) == values[m]
        assert torch.equal(restarted, plain), f"history of length {m}"
    if module.ORDER > 1:
        # and the history is really used: a wrong one changes the result
        wrong = module.sample(model, infos[1]["x"], sigmas, noise_sampler=noise, history=[stored(0) + 1.0])
        assert not torch.allclose(wrong, plain)


# ------------------------------------------------------------------------------------------------
# 3. SDE correctness on Gaussian data
# ------------------------------------------------------------------------------------------------

SDE_MEAN, SDE_VAR = 1.5, 0.25
SDE_SMAX, SDE_SMIN = 40.0, 0.02
SDE_SAMPLES = 100_000
#: Discretisation bias of the output variance, relative to the target, for the schedules used below
#: (log-uniform, 40 -> 0.02; 400 steps for order 1, 100 steps otherwise). Measured by propagating mean
#: and covariance exactly through the linear recursion y_{i+1} = r y_i + sum_j w_j P_{i-j} + std z that
#: coefficient_table() defines for the linear Gaussian denoiser (no sampling noise):
#:   order 1: -1.87 % (data form, phi = s^2: ersde/edm/flow), -0.99 % (ersde default phi),
#:            +0.009 % (noise form, phi = s^2: vpsde/vesde/mrsde);
#:   order 2: -0.11 % / -0.13 % / -0.08 %;  order 3: +0.062 % / -0.008 % / +0.036 %;  order 4: +0.00004 %.
#: The allowance is ~1.5x the largest measured bias of that order, rounded up.
#: The mean has no bias (the same recursion gives |E[y] - m| < 2e-15 for every module: a step maps the
#: prediction m to r m + (1 - r) m = m in the data form, and E[eps] = 0 in the noise form).
SDE_VAR_BIAS = {1: 0.03, 2: 0.002, 3: 0.001, 4: 0.001}  # orders > 4: as order 4


def _sde_steps(order):
    return 400 if order == 1 else 100


@pytest.mark.parametrize("name", SDE_MODULES)
def test_sde_matches_gaussian_marginals(name):
    """Start at the exact marginal N(m, v + 40^2), integrate to s_min = 0.02 and then to 0.

    Tolerances, with n = 100000 independent samples (fixed seed, so the test is deterministic; the
    tolerance says how unlucky a seed would have to be to fail a correct sampler):
      mean:      5 standard errors, 5 sqrt(var/n)                         (= 0.0079 at var 0.25);
      variance:  5 standard errors, 5 var sqrt(2/n) (Gaussian output)      (= 2.2 % of var),
                 plus the discretisation bias allowance SDE_VAR_BIAS above.
    At s_min the target is N(m, v + s_min^2); the final step to 0 returns D(y, s_min), whose law is
    N(m, v^2 / (v + s_min^2)).
    """
    module = load_module(name)
    order = module.ORDER
    gen = torch.Generator().manual_seed(1234)
    y = SDE_MEAN + math.sqrt(SDE_VAR + SDE_SMAX**2) * torch.randn(
        SDE_SAMPLES, 1, generator=gen, dtype=torch.float64
    )
    sigmas = torch.from_numpy(append_zero(log_uniform_sigmas(_sde_steps(order), SDE_SMIN, SDE_SMAX)))
    seen = {}

    def model(y, sigma):
        # the exact denoiser of N(m, v) (as GaussianData.denoiser_torch, with one scalar per call: cheaper)
        assert sigma.shape == (y.shape[0],) and bool((sigma == sigma[0]).all())
        s2 = float(sigma[0]) ** 2
        return y - (s2 / (SDE_VAR + s2)) * (y - SDE_MEAN)

    def callback(info):
        if info["i"] == len(sigmas) - 2:
            seen["x"] = info["x"].clone()

    out = module.sample(model, y, sigmas, generator=gen, callback=callback)

    def check(samples, target_var, what):
        n = samples.shape[0]
        mean, var = float(samples.mean()), float(samples.var())
        mean_tol = 5 * math.sqrt(target_var / n)
        var_tol = (5 * math.sqrt(2 / n) + SDE_VAR_BIAS[min(order, 4)]) * target_var
        assert abs(mean - SDE_MEAN) < mean_tol, f"{what}: mean {mean} vs {SDE_MEAN} (tol {mean_tol:.3g})"
        assert abs(var - target_var) < var_tol, f"{what}: var {var} vs {target_var} (tol {var_tol:.3g})"

    at_smin = seen["x"]
    check(at_smin, SDE_VAR + SDE_SMIN**2, "state at s_min")
    check(out, SDE_VAR**2 / (SDE_VAR + SDE_SMIN**2), "final denoised output")


@pytest.mark.parametrize("name", SDE_MODULES)
def test_sde_seeds_and_per_sample_generators(name):
    module = load_module(name)
    data = GaussianMixture.standard(d=3, seed=1)
    model = _torch_model(data.denoiser_torch)
    sigmas = torch.from_numpy(append_zero(karras_sigmas(12, 0.05, 30.0)))
    x = 30.0 * torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def run(x, generator):
        return module.sample(model, x.clone(), sigmas, generator=generator)

    a = run(x, torch.Generator().manual_seed(1))
    other = run(x, torch.Generator().manual_seed(2))
    a2 = run(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, a2), "same seed must give bitwise-identical output"
    assert (a - other).abs().min() > 0, "different seeds must give different outputs for every entry"
    # the SDE is not collapsed onto the deterministic (zero-noise) path either
    zero = module.sample(model, x.clone(), sigmas, noise_sampler=lambda s, t: torch.zeros_like(x))
    assert (a - zero).abs().min() > 0

    gens = [torch.Generator().manual_seed(100 + b) for b in range(x.shape[0])]
    batched = run(x, gens)
    for b in range(x.shape[0]):
        single_list = run(x[b : b + 1], [torch.Generator().manual_seed(100 + b)])
        single_plain = run(x[b : b + 1], torch.Generator().manual_seed(100 + b))
        assert torch.equal(batched[b : b + 1], single_list), f"item {b}"
        assert torch.equal(batched[b : b + 1], single_plain), f"item {b}"
    with pytest.raises(ValueError, match="generators"):
        run(x, gens[:-1])


# ------------------------------------------------------------------------------------------------
# 4. API contract
# ------------------------------------------------------------------------------------------------

CONTRACT_DATA = GaussianMixture.standard(d=3, seed=4)


def _start(batch=6, d=3, smax=30.0, seed=0):
    return smax * torch.randn(batch, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_final_step_to_zero_returns_denoised_exactly(generated_module):
    sigmas = torch.from_numpy(append_zero(karras_sigmas(8, 0.1, 30.0)))
    outputs, infos = [], []

    def model(x, sigma):
        out = CONTRACT_DATA.denoiser_torch(x, sigma)
        outputs.append(out)
        return out

    x = _start()
    result = generated_module.sample(
        model, x, sigmas, callback=infos.append, generator=torch.Generator().manual_seed(3)
    )
    assert len(outputs) == len(sigmas) - 1
    assert torch.equal(result, outputs[-1])
    assert torch.equal(result, infos[-1]["denoised"])
    # ... and that last prediction is the model evaluated at the state at sigmas[-2]
    assert torch.equal(result, CONTRACT_DATA.denoiser_torch(infos[-1]["x"], sigmas[-2]))
    ratios, stds, weights, finals = generated_module.coefficient_table(sigmas)
    assert finals == [False] * (len(sigmas) - 2) + [True]
    assert (ratios[-1], stds[-1], weights[-1]) == (0.0, 0.0, (1.0,))


def test_repeated_sigma_is_a_no_op_step(generated_module):
    """A zero-length step (sigma repeated, also at the start and at the end) leaves the state unchanged and
    draws no noise; the run stays finite and a multistep module restarts its history after it."""
    base = karras_sigmas(10, 0.1, 30.0)
    sigmas = np.concatenate([base[:1], base[:5], base[4:], base[-1:]])  # s0 s0 s1..s4 s4 s5..s10 s10
    sigmas = torch.from_numpy(sigmas)
    infos = []
    noise_calls = []

    def noise(s, t):
        noise_calls.append((float(s), float(t)))
        return torch.randn(6, 3, generator=gen, dtype=torch.float64)

    gen = torch.Generator().manual_seed(0)
    out = generated_module.sample(
        _torch_model(CONTRACT_DATA.denoiser_torch),
        _start(),
        sigmas,
        callback=infos.append,
        noise_sampler=noise,
    )
    assert torch.isfinite(out).all()
    states = [info["x"] for info in infos] + [out]
    values = sigmas.tolist()
    repeats = [i for i in range(len(values) - 1) if values[i] == values[i + 1]]
    assert len(repeats) == 3
    for i in repeats:
        assert torch.equal(states[i + 1], states[i]), f"step {i} ({values[i]} -> {values[i + 1]}) moved x"
    assert all(s != t for s, t in noise_calls)
    ratios, stds, weights, _ = generated_module.coefficient_table(sigmas)
    for i in repeats:
        assert ratios[i] == 1.0 and stds[i] == 0.0 and all(w == 0.0 for w in weights[i])
    # the history restarts after a repeat: the step after it is a one-output (order-1) step
    for i in repeats[:-1]:
        assert len(weights[i + 1]) == 1


#: in eps of the state dtype; fp16 / bf16 states are carried in float32 by the modules, so their error is the
#: final rounding plus the model's (measured <= 1.3 eps at 30 and 1000 steps); a float32 state accumulates its
#: own rounding (measured <= 3.8 eps at 30 steps, <= 26 eps at 1000)
DTYPE_TOL = {torch.float32: 20, torch.float16: 4, torch.bfloat16: 4}
LONG_DTYPE_TOL = {torch.float32: 60, torch.float16: 4, torch.bfloat16: 4}
LOW_PRECISION_DATA = GaussianData([1.0, -2.0, 0.5, 3.0], [0.5, 1.0, 0.1, 2.0])


def _low_precision_error(module, dtype, steps):
    """max|x - x_64| / max|x_64| in eps of ``dtype``, same start and noise as the float64 run."""
    data = LOW_PRECISION_DATA

    def model(x, sigma):
        return data.denoiser_torch(x.double(), sigma.double()).to(x.dtype)

    sigmas = torch.from_numpy(append_zero(karras_sigmas(steps, 0.03, 80.0)))
    gen = torch.Generator().manual_seed(0)
    x64 = torch.from_numpy(data.sample_np(256, 1)) + 80 * torch.randn(
        256, 4, generator=gen, dtype=torch.float64
    )
    noises = [torch.randn(256, 4, generator=gen, dtype=torch.float64) for _ in range(len(sigmas))]

    def run(dt):
        it = iter(noises)
        return module.sample(model, x64.to(dt), sigmas, noise_sampler=lambda s, t: next(it).to(dt))

    ref = run(torch.float64)
    out = run(dtype)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    return float((out.double() - ref).abs().max()) / float(ref.abs().max()) / torch.finfo(dtype).eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_low_precision_states(generated_module, dtype):
    """States in fp32 / fp16 / bf16 with a model that returns predictions in the state's dtype.

    Gaussian data (a linear denoiser, evaluated in float64 and cast back, so the test measures the
    sampler's arithmetic and not the problem's conditioning), s_max = 80 (the default phi is ~4e3 there,
    phi^2 ~ 1.6e7 overflows fp16: coefficients must not be formed in the state dtype). Same noise in all
    dtypes, 30 steps.
    """
    assert _low_precision_error(generated_module, dtype, 30) < DTYPE_TOL[dtype]
    # the default noise path works in the low-precision dtype too
    data = LOW_PRECISION_DATA
    sigmas = torch.from_numpy(append_zero(karras_sigmas(30, 0.03, 80.0)))
    x = (80 * torch.randn(256, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).to(dtype)
    out = generated_module.sample(
        lambda y, s: data.denoiser_torch(y.double(), s.double()).to(y.dtype),
        x,
        sigmas,
        generator=torch.Generator().manual_seed(1),
    )
    assert out.dtype == dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["ersde_order3", "ersde_order2_phi_sde", "ersde_order4_phi_ode"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_low_precision_states_over_1000_steps(name, dtype):
    """1000 steps: a bf16 state rounded every step drifted by 40-90 eps; carried in float32 it stays at ~1 eps."""
    assert _low_precision_error(load_module(name), dtype, 1000) < LONG_DTYPE_TOL[dtype]


@pytest.mark.parametrize("use_history", [False, True])
def test_callback_payload(generated_module, use_history):
    sigmas = torch.from_numpy(append_zero(karras_sigmas(7, 0.1, 30.0)))
    x = _start()
    m = generated_module.ORDER - 1 if use_history else 0
    history = None
    if use_history:
        # any predictions will do for the payload check; make x the "state at sigmas[m]"
        history = [CONTRACT_DATA.denoiser_torch(x, sigmas[j]) for j in range(m)]
    infos = []
    gen = torch.Generator().manual_seed(0)

    def callback(info):
        infos.append({k: (v.clone() if torch.is_tensor(v) and v.ndim else v) for k, v in info.items()})

    out = generated_module.sample(
        _torch_model(CONTRACT_DATA.denoiser_torch),
        x,
        sigmas,
        callback=callback,
        generator=gen,
        history=history,
        disable=True,
    )
    assert [info["i"] for info in infos] == list(range(m, len(sigmas) - 1))
    for k, info in enumerate(infos):
        i = info["i"]
        assert set(info) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert float(info["sigma"]) == float(sigmas[i]) and float(info["sigma_hat"]) == float(sigmas[i])
        assert torch.equal(info["denoised"], CONTRACT_DATA.denoiser_torch(info["x"], sigmas[i]))
        if k == 0:
            assert torch.equal(info["x"], x)
        else:
            assert not torch.equal(info["x"], infos[k - 1]["x"])
    assert torch.equal(out, infos[-1]["denoised"])


def test_noise_sampler_contract(generated_module):
    sigmas = torch.from_numpy(append_zero(karras_sigmas(9, 0.1, 30.0)))
    model = _torch_model(CONTRACT_DATA.denoiser_torch)
    x = _start()
    calls = []

    def noise(sigma, sigma_next):
        calls.append((float(sigma), float(sigma_next)))
        return torch.randn(x.shape, generator=gen, dtype=x.dtype)

    gen = torch.Generator().manual_seed(7)
    out = generated_module.sample(model, x, sigmas, noise_sampler=noise)
    is_ode = generated_module.SPEC["phi"] == "s"
    expected = [] if is_ode else [(float(sigmas[i]), float(sigmas[i + 1])) for i in range(len(sigmas) - 2)]
    assert calls == expected
    # its noise is the noise used: it reproduces the default noise drawn from the same generator
    same = generated_module.sample(model, x, sigmas, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out, same)
    # a zero noise sampler makes any module deterministic, whatever the generator says
    zero = lambda s, t: torch.zeros_like(x)
    z1 = generated_module.sample(
        model, x, sigmas, noise_sampler=zero, generator=torch.Generator().manual_seed(1)
    )
    z2 = generated_module.sample(
        model, x, sigmas, noise_sampler=zero, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(z1, z2)
    if is_ode:
        assert torch.equal(z1, out)
    else:
        assert not torch.allclose(z1, out)
        # and it scales linearly: doubling the noise doubles the deviation from the zero-noise path
        # after one step (one step only: later steps feed the noise through the nonlinear model)
        one = sigmas[:2]
        unit = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=x.dtype)
        base = generated_module.sample(model, x, one, noise_sampler=zero)
        d1 = generated_module.sample(model, x, one, noise_sampler=lambda s, t: unit) - base
        d2 = generated_module.sample(model, x, one, noise_sampler=lambda s, t: 2 * unit) - base
        std = generated_module.coefficient_table(one)[1][0]
        torch.testing.assert_close(d1, std * unit, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(d2, 2 * d1, rtol=1e-12, atol=1e-12)


def test_sigmas_as_python_list_are_read_in_float64(generated_module):
    """A list of Python floats is as good as a float64 tensor (torch.as_tensor(list) would be float32: a
    short step 0.05 -> 0.05 (1 - 1e-6) then had 1 - r wrong by 4 %, found while writing these tests)."""
    values = [30.0, 2.0, 0.05, 0.05 * (1 - 1e-6), 0.01, 0.0]
    as_tensor = torch.tensor(values, dtype=torch.float64)
    assert generated_module.coefficient_table(values) == generated_module.coefficient_table(as_tensor)
    assert generated_module.coefficient_table(np.array(values)) == generated_module.coefficient_table(
        as_tensor
    )
    model = _torch_model(CONTRACT_DATA.denoiser_torch)
    noise = lambda s, t: torch.ones(6, 3, dtype=torch.float64)
    a = generated_module.sample(model, _start(), values, noise_sampler=noise)
    b = generated_module.sample(model, _start(), as_tensor, noise_sampler=noise)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# 5. invalid sigmas
# ------------------------------------------------------------------------------------------------

BAD_SIGMAS = {
    "increasing": ([1.0, 2.0, 0.5], "non-increasing"),
    "nan": ([2.0, float("nan"), 0.5], "finite"),
    "inf": ([float("inf"), 1.0, 0.5], "finite"),
    "negative": ([2.0, 1.0, -0.5], "non-negative"),
    "zero_before_end": ([2.0, 0.0, 0.0], "only the last sigma may be zero"),
    "zero_first": ([0.0, 0.0], "only the last sigma may be zero"),
    "single": ([1.0], "at least two"),
    "empty": ([], "at least two"),
}


@pytest.mark.parametrize("case", sorted(BAD_SIGMAS))
def test_bad_sigmas_raise_value_error(generated_module, case):
    values, message = BAD_SIGMAS[case]
    sigmas = torch.tensor(values, dtype=torch.float64)
    calls = []
    model = _torch_model(CONTRACT_DATA.denoiser_torch, calls)
    with pytest.raises(ValueError, match=message):
        generated_module.sample(model, _start(), sigmas)
    assert calls == [], "validation must happen before the model is called"
    with pytest.raises(ValueError, match=message):
        generated_module.coefficient_table(sigmas)
    with pytest.raises(ValueError, match=message):
        generated_module.coefficient_table(values)  # a plain list is accepted input too

"""Published samplers (``derive gen --variant``): parity with their real implementations.

diffusers' schedulers run side by side with the generated variant modules on the same model, the same noise
levels and the same noise, in float64:

* the model is one epsilon model in VP coordinates x_t = alpha x0 + sigma eps (the exact E[eps | x_t] of
  Gaussian data plus a smooth nonlinear term, so that every weight of every stored output matters); our modules
  run in normalized coordinates y = x / alpha, s = sigma / alpha with the denoiser built from the same model,
  and the results are compared after scaling by alpha at the last noise level;
* the noise levels are diffusers' own (``set_timesteps``), cast to float64 and written back into the scheduler
  (``sigmas`` of the multistep schedulers, ``alphas_cumprod`` of DDIM / DDPM), so both use the same numbers;
* DPMSolverMultistepScheduler casts the state to float32 inside ``step`` (``sample.to(torch.float32)``); the
  tests give that module a ``torch`` whose ``float32`` is float64 (:func:`float64_dpm`), so the shipped update
  runs unchanged in float64;
* ``lower_order_final=False`` (diffusers otherwise lowers the order of the last steps below 15 steps, which
  the published updates do not); ``final_sigmas_type="zero"`` for the data-prediction algorithms (both then
  return the data prediction on the last step) and ``"sigma_min"`` where diffusers allows nothing else
  (noise prediction, DEIS).

ER-SDE-Solver has no installable implementation: :func:`ersde_solver_reference` writes the paper's update in
plain torch, independently of derive, with its integrals by mpmath quadrature.
"""

from __future__ import annotations

import importlib
import math
import subprocess
import sys
import time

import mpmath
import numpy as np
import pytest
import torch

from derive.variants import check_variant, get_variant, variant_names

from .conftest import GENERATED, load_module

PARITY = 1e-12  # relative, float64 (measured: below 1e-14)
D = 4
BATCH = 6
MEAN = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
VAR = torch.tensor([0.04, 1.0, 0.3, 2.0], dtype=torch.float64)


pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning"
)  # diffusers' DEIS calls np.log on tensors


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def eps_model(x, alpha, sigma):
    """E[eps | x_t] for x0 ~ N(MEAN, diag(VAR)), plus a smooth nonlinear term (any model would do)."""
    exact = sigma * (x - alpha * MEAN) / (alpha**2 * VAR + sigma**2)
    return exact + 0.1 * torch.tanh(x) * sigma


def vp(s: float) -> tuple[float, float]:
    """alpha, sigma of the VP process at normalized noise level s (diffusers' _sigma_to_alpha_sigma_t)."""
    alpha = 1.0 / math.sqrt(s * s + 1.0)
    return alpha, s * alpha


def denoiser(y, s_batch):
    """Our modules' model: the same epsilon model, called at x = alpha y, returning x0."""
    s = float(s_batch[0])
    alpha, sigma = vp(s)
    x = alpha * y
    return (x - sigma * eps_model(x, alpha, sigma)) / alpha


def start(seed=0):
    return torch.randn(BATCH, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def noises(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, D, generator=g, dtype=torch.float64) for _ in range(n)]


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


class _Float64Torch:
    """``torch`` with ``float32`` meaning float64: diffusers' in-step cast becomes a no-op in float64 runs."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.fixture
def float64_dpm(monkeypatch):
    module = importlib.import_module("diffusers.schedulers.scheduling_dpmsolver_multistep")
    monkeypatch.setattr(module, "torch", _Float64Torch())


def run_multistep_peer(scheduler, sigmas, x_T, zs=None):
    """diffusers' own loop in VP coordinates; returns y = x / alpha at the last noise level."""
    x = x_T * vp(float(sigmas[0]))[0]
    for i, t in enumerate(scheduler.timesteps):
        alpha, sigma = vp(float(sigmas[i]))
        kwargs = {} if zs is None else {"variance_noise": zs[i]}
        x = scheduler.step(eps_model(x, alpha, sigma), t, x, **kwargs).prev_sample
    last = float(sigmas[-1])
    return x if last == 0 else x / vp(last)[0]


def run_variant(name, sigmas, x_T, zs=None):
    module = load_module(f"variant_{name}")
    noise = None if zs is None else iter(zs)
    sampler = None if zs is None else (lambda s, t: next(noise))
    return module.sample(denoiser, x_T.clone(), sigmas, noise_sampler=sampler)


DPM_CASES = [
    # (variant, algorithm_type, solver_order, solver_type, final_sigmas_type)
    ("dpmpp_2m", "dpmsolver++", 2, "midpoint", "zero"),
    ("dpmpp_2m_heun", "dpmsolver++", 2, "heun", "zero"),
    ("dpmpp_3m", "dpmsolver++", 3, "midpoint", "zero"),
    ("dpmpp_3m", "dpmsolver++", 3, "midpoint", "sigma_min"),
    ("dpm_2m", "dpmsolver", 2, "midpoint", "sigma_min"),
    ("dpm_2m_heun", "dpmsolver", 2, "heun", "sigma_min"),
    ("dpm_3m", "dpmsolver", 3, "midpoint", "sigma_min"),
    ("sde_dpmpp_2m", "sde-dpmsolver++", 2, "midpoint", "zero"),
    ("sde_dpmpp_2m_heun", "sde-dpmsolver++", 2, "heun", "sigma_min"),
]


@pytest.mark.parametrize(("name", "algorithm", "order", "solver_type", "final"), DPM_CASES)
def test_dpm_solver_parity(name, algorithm, order, solver_type, final, float64_dpm):
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(
        algorithm_type=algorithm,
        solver_order=order,
        solver_type=solver_type,
        final_sigmas_type=final,
        lower_order_final=False,
        prediction_type="epsilon",
    )
    scheduler.set_timesteps(12)
    sigmas = scheduler.sigmas.to(torch.float64)
    scheduler.sigmas = sigmas.clone()
    x_T = start()
    zs = noises(len(sigmas) - 1) if algorithm.startswith("sde") else None
    reference = run_multistep_peer(scheduler, sigmas, x_T, zs)
    ours = run_variant(name, sigmas, x_T, zs)
    assert rel(ours, reference) < PARITY


def test_float32_cast_is_the_only_difference_from_diffusers_as_shipped():
    """Without the float64 ``torch`` the shipped step rounds the state to float32 (~1e-7 relative), no more."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(
        solver_order=3, lower_order_final=False, final_sigmas_type="sigma_min"
    )
    scheduler.set_timesteps(12)
    sigmas = scheduler.sigmas.to(torch.float64)
    scheduler.sigmas = sigmas.clone()
    x_T = start()
    assert (
        1e-10 < rel(run_variant("dpmpp_3m", sigmas, x_T), run_multistep_peer(scheduler, sigmas, x_T)) < 1e-5
    )


@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_parity(order):
    from diffusers import DEISMultistepScheduler

    scheduler = DEISMultistepScheduler(solver_order=order, lower_order_final=False, prediction_type="epsilon")
    scheduler.set_timesteps(12)
    sigmas = scheduler.sigmas.to(torch.float64)
    scheduler.sigmas = sigmas.clone()
    x_T = start()
    assert rel(run_variant(f"deis_{order}", sigmas, x_T), run_multistep_peer(scheduler, sigmas, x_T)) < PARITY


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("solver_type", ["bh1", "bh2"])
@pytest.mark.parametrize("form", ["data", "noise"])
def test_unipc_parity(order, solver_type, form):
    """UniPCMultistepScheduler (UniP-p with UniC-p after every step but the last; predict_x0 for the data form).
    The last step goes to sigma_min (with a final zero and lower_order_final=False its order-p update divides by
    h = inf)."""
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(
        solver_order=order,
        solver_type=solver_type,
        predict_x0=form == "data",
        lower_order_final=False,
        final_sigmas_type="sigma_min",
        prediction_type="epsilon",
    )
    scheduler.set_timesteps(12)
    sigmas = scheduler.sigmas.to(torch.float64)
    scheduler.sigmas = sigmas.clone()
    x_T = start()
    reference = run_multistep_peer(scheduler, sigmas, x_T)
    name = f"unipc_{solver_type}_{order}" + ("" if form == "data" else "_noise")
    assert rel(run_variant(name, sigmas, x_T), reference) < PARITY


def test_unipc_structure_stated_in_the_claims_page():
    """UniC-p (p >= 2) does not depend on B(h); UniP-3 is the derived order-3 update; UniC-1 does."""
    sigmas = torch.tensor([4.0, 2.5, 1.2, 0.5, 0.2], dtype=torch.float64)
    tables = {
        (t, p): load_module(f"variant_unipc_{t}_{p}")._tables(sigmas)
        for t in ("bh1", "bh2")
        for p in (1, 2, 3)
    }
    for p in (2, 3):
        assert tables["bh1", p][4][-1] == pytest.approx(tables["bh2", p][4][-1], rel=1e-12)
    assert tables["bh1", 1][4][-1] != pytest.approx(tables["bh2", 1][4][-1], rel=1e-3)
    derived = load_module("ersde_order3_phi_ode_lambda").coefficient_table(sigmas)[2][-1]
    assert tables["bh1", 3][2][-1] == pytest.approx(derived, rel=1e-12)


def _float64_alphas(scheduler):
    """DDIM / DDPM compute their step from float32 tables: give them the same values in float64."""
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
    scheduler.betas = scheduler.betas.to(torch.float64)
    scheduler.alphas = scheduler.alphas.to(torch.float64)
    if hasattr(scheduler, "final_alpha_cumprod"):
        scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(scheduler, "one"):
        scheduler.one = torch.tensor(1.0, dtype=torch.float64)


def _run_discrete(scheduler, x_T, generator=None):
    """DDIM / DDPM in their own loop (integer timesteps, leading spacing ending at t = 0); returns x0-space
    output (alpha = 1 after the last step) and the normalized noise levels of the visited timesteps."""
    acp = scheduler.alphas_cumprod
    s = [math.sqrt((1 - float(acp[t])) / float(acp[t])) for t in scheduler.timesteps]
    x = x_T * math.sqrt(float(acp[scheduler.timesteps[0]]))
    for t in scheduler.timesteps:
        a = float(acp[t])
        x = scheduler.step(
            eps_model(x, math.sqrt(a), math.sqrt(1 - a)), t, x, generator=generator
        ).prev_sample
    return x, torch.tensor([*s, 0.0], dtype=torch.float64)


def test_ddim_parity():
    """DDIMScheduler, eta = 0, set_alpha_to_one (the last step returns x0), leading spacing (the step from t
    goes to the next listed timestep)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, prediction_type="epsilon")
    scheduler.set_timesteps(15)
    _float64_alphas(scheduler)
    x_T = start()
    reference, sigmas = _run_discrete(scheduler, x_T)
    assert rel(run_variant("ddim", sigmas, x_T), reference) < PARITY


def test_ddpm_parity():
    """DDPMScheduler (fixed_small variance: the posterior of the skipped-step chain), leading spacing ending at
    t = 0. DDPM draws one normal per step before the last from its generator; ours take them in the same order."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(clip_sample=False, prediction_type="epsilon")
    scheduler.set_timesteps(15)
    _float64_alphas(scheduler)
    x_T = start()
    reference, sigmas = _run_discrete(scheduler, x_T, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    zs = [torch.randn(BATCH, D, generator=g, dtype=torch.float64) for _ in range(len(sigmas) - 2)]
    assert rel(run_variant("ddpm", sigmas, x_T, zs), reference) < PARITY


# ---- ER-SDE-Solver: the paper's update, written here ---------------------------------------------------------


def _phi_default(s):
    """The ER-SDE-Solver paper's noise-scale function phi(s) = s (e^{s^0.3} + 10)."""
    return s * (mpmath.exp(s**0.3) + 10)


def ersde_solver_reference(order, sigmas, y_T, zs):
    """ER-SDE-Solver-k (Cui et al. 2023, arXiv:2309.06169) in normalized coordinates, from the paper:

        y' = r y + (1 - r) x0_i + (s' - s + phi(s') S1) D1 + ((s' - s)^2 / 2 + phi(s') S2) D2 + sqrt(s'^2 - s^2 r^2) z,
        r = phi(s') / phi(s),  S1 = int_{s'}^{s} ds / phi,  S2 = int_{s'}^{s} (x - s) dx / phi,
        D1 = (x0_i - x0_{i-1}) / (s_i - s_{i-1}),  D2 = 2 (D1_i - D1_{i-1}) / (s_i - s_{i-2}),

    the D1 term from the second step on (order >= 2), the D2 term from the third (order 3); the integrals by
    mpmath at 30 digits. A step to s = 0 returns the data prediction.
    """
    s = [float(v) for v in sigmas]
    y, x0s, d1s = y_T.clone(), [], []
    with mpmath.workdps(30):
        for i in range(len(s) - 1):
            x0 = denoiser(y, torch.full((y.shape[0],), s[i], dtype=torch.float64))
            if s[i + 1] == 0:
                return x0
            a, b = mpmath.mpf(s[i + 1]), mpmath.mpf(s[i])
            r = float(_phi_default(a) / _phi_default(b))
            phi_next = _phi_default(a)
            s1 = float(phi_next * mpmath.quad(lambda x: 1 / _phi_default(x), [a, b]))
            s2 = float(phi_next * mpmath.quad(lambda x: (x - b) / _phi_default(x), [a, b]))
            out = r * y + (1 - r) * x0
            if i >= 1 and order >= 2:
                d1 = (x0 - x0s[-1]) / (s[i] - s[i - 1])
                out = out + (s[i + 1] - s[i] + s1) * d1
                if i >= 2 and order >= 3:
                    d2 = 2 * (d1 - d1s[-1]) / (s[i] - s[i - 2])
                    out = out + ((s[i + 1] - s[i]) ** 2 / 2 + s2) * d2
                d1s.append(d1)
            x0s.append(x0)
            y = out + math.sqrt(max(s[i + 1] ** 2 - s[i] ** 2 * r * r, 0.0)) * zs[i]
    return y


@pytest.mark.parametrize("order", [1, 2, 3])
def test_ersde_solver_matches_the_paper(order):
    sigmas = torch.tensor([*np.geomspace(20.0, 0.05, 10), 0.0], dtype=torch.float64)
    y_T = start() * 20.0
    zs = noises(len(sigmas) - 1)
    reference = ersde_solver_reference(order, sigmas[:-1], y_T, zs)  # stop at s_min: compares the noisy state
    ours = run_variant(f"ersde_solver_{order}", sigmas[:-1], y_T, zs)
    assert rel(ours, reference) < PARITY


def test_ersde_solver_final_step_returns_the_prediction():
    sigmas = torch.tensor([5.0, 1.0, 0.2, 0.0], dtype=torch.float64)
    y_T = start() * 5.0
    zs = noises(3)
    assert (
        rel(run_variant("ersde_solver_3", sigmas, y_T, zs), ersde_solver_reference(3, sigmas, y_T, zs))
        < PARITY
    )


# ---- the catalogue, the transcription checks, the CLI ------------------------------------------------------


def test_every_variant_is_generated_and_checked():
    for name in variant_names():
        assert (GENERATED / f"variant_{name}.py").exists()
        assert check_variant(name)  # raises DerivationError on a wrong transcription
        module = load_module(f"variant_{name}")
        assert module.VARIANT == name and module.ORDER == get_variant(name).order


def test_dpmpp_3m_weights_half_the_taylor_d2_term():
    """The published 3M update differs from the derived order-3 module (lambda) by exactly half its D2 term:
    with D2 = (D1_0 - D1_1)/(r0 + r1) ~ h^2 x0''/2 the Taylor term of x0'' is 2 c2/h^2 D2, the update uses c2/h^2."""
    module = load_module("variant_dpmpp_3m")
    derived = load_module("ersde_order3_phi_ode_lambda")
    sigmas = torch.tensor([4.0, 2.5, 1.2, 0.5], dtype=torch.float64)  # unequal steps in lambda
    _, _, published, _ = module.coefficient_table(sigmas)
    _, _, exact, _ = derived.coefficient_table(sigmas)
    h = math.log(1.2 / 0.5)
    r0, r1 = math.log(2.5 / 1.2) / h, math.log(4.0 / 2.5) / h
    d2 = [1 / (r0 * (r0 + r1)), -(1 / r0 + 1 / r1) / (r0 + r1), 1 / (r1 * (r0 + r1))]  # D2 = sum_j d2_j m_j
    c2 = float(module.taylor_weights(sigmas[2:3], sigmas[3:4])[2][0])
    difference = [p - e for p, e in zip(published[2], exact[2])]
    assert difference == pytest.approx([-c2 / h**2 * w for w in d2], rel=1e-9)
    assert max(abs(v) for v in difference) > 1e-3 * max(abs(v) for v in exact[2])


def test_variant_modules_refuse_repeated_sigmas_and_sample_with_a_generator():
    module = load_module("variant_sde_dpmpp_2m")
    with pytest.raises(ValueError, match="strictly decreasing"):
        module.coefficient_table(torch.tensor([2.0, 1.0, 1.0, 0.5], dtype=torch.float64))
    sigmas = torch.tensor([2.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    a, b = (
        module.sample(denoiser, start(), sigmas, generator=torch.Generator().manual_seed(5)) for _ in range(2)
    )
    assert torch.equal(a, b) and torch.isfinite(a).all()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "derive.cli", *args], capture_output=True, text=True)


def test_cli_rejects_unknown_and_conflicting_variants(tmp_path):
    unknown = _cli("gen", "--variant", "dpmpp_9m", "--out", str(tmp_path))
    assert unknown.returncode == 2 and "unknown variant" in unknown.stderr and "dpmpp_3m" in unknown.stderr
    conflict = _cli("gen", "--variant", "dpmpp_3m", "--order", "2", "--out", str(tmp_path))
    assert conflict.returncode == 2 and "--variant" in conflict.stderr
    for result in (unknown, conflict):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_cli_generates_a_variant_identical_to_the_checked_in_one(tmp_path):
    started = time.perf_counter()
    result = _cli("gen", "--variant", "ddim", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "variant_ddim.py").read_bytes() == (GENERATED / "variant_ddim.py").read_bytes()
    assert time.perf_counter() - started < 60


def test_cli_verify_variant_rejects_bad_input():
    unknown = _cli("verify", "--variant", "unipc_9")
    conflict = _cli("verify", "--variant", "ddim", "--module", "ersde_order1")
    assert unknown.returncode == 2 and "unknown variant" in unknown.stderr
    assert conflict.returncode == 2 and "--module" in conflict.stderr
    for result in (unknown, conflict):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "low", "high"), [("dpmpp_3m", 1.8, 2.3), ("ersde_solver_3", 1.7, 2.3), ("deis_3", 2.8, 3.3)]
)
def test_measured_method_orders(name, low, high):
    """The facts in docs/claims.md: the published 3M and ER-SDE-Solver-3 updates have order 2, DEIS-3 order 3."""
    from derive.verify import harness

    report = harness.verify_module(load_module(f"variant_{name}"), harness.Settings.coarse())
    (method,) = report.find("method")
    assert low < method.order < high
    assert report.passed == (low > 2.5)


# ---- MR Sampler: the authors' update in the mean-reverting process's own coordinates --------------------------

MU = torch.tensor([0.3, -0.2, 0.8, 0.1], dtype=torch.float64)


def _mr_schedule(n=12, stationary_std=0.5):
    """IR-SDE-like levels: alpha = exp(-theta_bar), sigma^2 = std^2 (1 - alpha^2), theta_bar from 3 to 0.02."""
    theta_bar = np.geomspace(3.0, 0.02, n + 1)
    alpha = np.exp(-theta_bar)
    sigma = stationary_std * np.sqrt(1 - alpha**2)
    return [float(a) for a in alpha], [float(s) for s in sigma]


def _mr_eps(x, alpha, sigma):
    """E[eps | x_t] for x_t - mu = alpha (x0 - mu) + sigma eps, x0 ~ N(MEAN, diag(VAR)), plus a nonlinear term."""
    return sigma * (x - MU - alpha * (MEAN - MU)) / (alpha**2 * VAR + sigma**2) + 0.1 * torch.tanh(x) * sigma


def mrs_reference(dynamics, form, order, alphas, sigmas, x, zs):
    """MR Sampler (Li et al. 2025, arXiv:2502.07856; the authors' MRSampler.step_ode_1st/2nd/3rd and
    step_sde_1st/2nd), in x with the mean mu: step i uses order min(i + 1, order) (the code's start), h =
    lambda_t - lambda_s, lambda = log(alpha / sigma), r = h_prev / h; data prediction m = mu + (x - mu - sigma eps)/alpha,
    noise prediction m = eps."""
    lam = [math.log(a / s) for a, s in zip(alphas, sigmas)]
    buffer = []
    for i in range(len(alphas) - 1):
        a_s, s_s, a_t, s_t = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        eps = _mr_eps(x, a_s, s_s)
        buffer.insert(0, MU + (x - MU - s_s * eps) / a_s if form == "data" else eps)
        k = min(i + 1, order)
        h = lam[i + 1] - lam[i]
        d1 = d2 = 0.0
        if k >= 2:
            r0 = (lam[i] - lam[i - 1]) / h
            d1_0 = (buffer[0] - buffer[1]) / r0
            d1 = d1_0
        if k == 3:
            r1 = (lam[i - 1] - lam[i - 2]) / h
            d1_1 = (buffer[1] - buffer[2]) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
        if dynamics == "ode" and form == "data":
            phi1 = math.expm1(-h)
            phi2 = phi1 / h + 1
            phi3 = phi2 / h - 0.5
            x = s_t / s_s * x - a_t * (phi1 * buffer[0] - phi2 * d1 + phi3 * d2)
            x = x + MU * (1 - s_t / s_s + s_t / s_s * a_s - a_t)
        elif dynamics == "ode":
            phi1 = math.expm1(h)
            phi2 = phi1 / h - 1
            phi3 = phi2 / h - 0.5
            x = a_t / a_s * x - s_t * (phi1 * buffer[0] + phi2 * d1 + phi3 * d2) + MU * (1 - a_t / a_s)
        elif form == "data":
            phi1 = -math.expm1(-2 * h)
            phi2 = 1 - phi1 / 2 / h
            x = (
                s_t / s_s * math.exp(-h) * x
                + a_t * phi1 * buffer[0]
                + a_t * phi2 * d1
                + s_t * math.sqrt(phi1) * zs[i]
            )
            x = x + MU * (1 - a_t / a_s * math.exp(-2 * h) - a_t * phi1)
        else:
            phi1 = math.expm1(h)
            phi2 = phi1 / h - 1
            x = a_t / a_s * x - 2 * s_t * phi1 * buffer[0] - 2 * s_t * phi2 * d1
            x = x + s_t * math.sqrt(math.expm1(2 * h)) * zs[i] + MU * (1 - a_t / a_s)
    return x


MRS_CASES = [
    (d, f, k)
    for d, orders in (("ode", (1, 2, 3)), ("sde", (1, 2)))
    for f in ("data", "noise")
    for k in orders
]


@pytest.mark.parametrize(("dynamics", "form", "order"), MRS_CASES)
def test_mr_sampler_matches_the_authors_update(dynamics, form, order):
    alphas, sigmas = _mr_schedule()
    s = torch.tensor([sg / a for a, sg in zip(alphas, sigmas)], dtype=torch.float64)
    level = {float(v): (a, sg) for v, a, sg in zip(s.tolist(), alphas, sigmas)}

    def mr_denoiser(y, s_batch):  # y = (x - mu)/alpha; returns the normalized data prediction x0 - mu
        alpha, sigma = level[float(s_batch[0])]
        x = MU + alpha * y
        return (x - MU - sigma * _mr_eps(x, alpha, sigma)) / alpha

    x_T = MU + sigmas[0] * start() + alphas[0] * (MEAN - MU)
    zs = noises(len(alphas) - 1)
    reference = mrs_reference(dynamics, form, order, alphas, sigmas, x_T, zs)
    module = load_module(f"variant_mrs_{dynamics}_{order}_{form}")
    noise = iter(zs)
    y = module.sample(mr_denoiser, (x_T - MU) / alphas[0], s, noise_sampler=lambda a, b: next(noise))
    assert rel(MU + alphas[-1] * y, reference) < PARITY


def test_claims_script_writes_the_table_block_and_the_plot(tmp_path):
    from click.testing import CliRunner

    from derive.verify import claims

    doc = tmp_path / "claims.md"
    doc.write_text(f"intro\n{claims.BEGIN}\nold\n{claims.END}\noutro\n")
    plot = tmp_path / "claims.png"
    result = CliRunner().invoke(
        claims.main, ["--coarse", "--variant", "ddim", "--doc", str(doc), "--plot", str(plot)]
    )
    assert result.exit_code == 0, result.output
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "`derive verify --variant ddim`" in text and "↳ derived `ersde_order1_phi_ode`" in text
    assert plot.stat().st_size > 0

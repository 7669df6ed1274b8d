"""Accuracy per model call: our generated samplers against diffusers' schedulers on problems with exact denoisers.

Deterministic solvers (probability-flow ODE) on Gaussian mixtures (``GaussianMixture.standard(d, seed=0)``,
d = 2, 16, 64; a narrow component of std 0.05) with Karras (rho = 7) and log-SNR-uniform schedules from
sigma_max = 80 to sigma_min = 0.002, in normalized coordinates, float64. The error is the RMS over points and
coordinates of ``y - y_ref``, ``y_ref`` the PF-ODE solution by scipy DOP853 (rtol 1e-13) from the same start
points. Two variants:

- ``sigma_min``: NFE steps from 80 to 0.002, compared with the reference at 0.002;
- ``zero``: NFE - 1 steps to 0.002 and a final step to 0, which returns the denoiser's output (what our modules
  and diffusers' DPM-Solver++/UniPC do on a last step to 0), compared with the reference at s = 1e-6 (within
  ~1e-11 of the flow's s = 0 limit). It is computed as D(y_{NFE-1}, 0.002) from the (NFE - 1)-step run.

Peers are diffusers' own scheduler classes, unmodified, driven with *our* sigmas: after ``set_timesteps(N)``
the scheduler's ``sigmas`` table (diffusers' k-diffusion-style ``sigma / alpha``, i.e. exactly our ``s``) is
replaced by our schedule in float64; DDIM, which reads ``alphas_cumprod[t]`` instead, gets a table of
``1 / (1 + s^2)`` indexed by its timesteps. The state is moved to VP coordinates (``x = y / sqrt(1 + s^2)``) and
the model returns the data prediction (``prediction_type="sample"``). ``lower_order_final=False`` (diffusers
otherwise drops to first order on the last step when N < 15: that is a stability device, not the method).

Stochastic solvers: exact weak error on Gaussian data (per coordinate N(0.5, tau^2), tau = 0.05, 0.4, 1): every
sampler is affine in its start point and its noises, so the output law is computed exactly by pushing unit
impulses through it; the error is the 2-Wasserstein distance between the output Gaussian and the exact law at
0.002 (RMS over coordinates). On the mixtures: sliced 1-Wasserstein distance (``--sw-samples`` samples, 128
fixed directions) to exact samples of the noisy data at 0.002, with its two-sample floor.

    .venv/bin/python benchmarks/accuracy.py            # full run (minutes)
    .venv/bin/python benchmarks/accuracy.py --quick    # d = 2, few NFE, seconds
"""

from __future__ import annotations

import argparse
import math
import pathlib
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import HERE, command_line, fmt, load_generated, machine, machine_line, markdown_table, write_json

from derive.verify.problems import (
    GaussianData,
    GaussianMixture,
    karras_sigmas,
    log_uniform_sigmas,
    reference_flow,
)

SIGMA_MAX, SIGMA_MIN, SIGMA_ZERO_REF = 80.0, 0.002, 1e-6
SCHEDULES = {
    "karras": lambda n: karras_sigmas(n, SIGMA_MIN, SIGMA_MAX, 7.0),
    "logsnr": lambda n: log_uniform_sigmas(n, SIGMA_MIN, SIGMA_MAX),
}

DET_OURS = {
    "ours s1": "ersde_order1_phi_ode",
    "ours s2": "ersde_order2_phi_ode",
    "ours s3": "ersde_order3_phi_ode",
    "ours s4": "ersde_order4_phi_ode",
    "ours s5": "ersde_order5_phi_ode",
    "ours s6": "ersde_order6_phi_ode",
    "ours λ2": "ersde_order2_phi_ode_lambda",
    "ours λ3": "ersde_order3_phi_ode_lambda",
    "ours λ4": "ersde_order4_phi_ode_lambda",
    # predictor-corrector (--method pc): order K + 1 with K stored outputs, one model call per step
    "ours pc s2": "ersde_order2_phi_ode_pc",
    "ours pc s3": "ersde_order3_phi_ode_pc",
    "ours pc λ2": "ersde_order2_phi_ode_lambda_pc",
    "ours pc λ3": "ersde_order3_phi_ode_lambda_pc",
}
#: our noise-form modules expanded in lambda (``derive gen --family vpsde --dynamics ode --variable lambda``): not in
#: the catalogue, generated into a temporary folder when the benchmark starts (skipped by --quick / --no-extra)
EXTRA_SPECS = {"ours ε-λ2": 2, "ours ε-λ3": 3, "ours ε-λ4": 4}
DET_EXTRA: dict = {}  # name -> path of the generated file, filled by generate_extra()

DET_PEERS = {
    "DDIM": ("ddim", {}),
    "DPM++ 2M": ("dpm", {"solver_order": 2}),
    "DPM++ 3M": ("dpm", {"solver_order": 3}),
    "UniPC bh1 2": ("unipc", {"solver_type": "bh1", "solver_order": 2}),
    "UniPC bh1 3": ("unipc", {"solver_type": "bh1", "solver_order": 3}),
    "UniPC bh2 2": ("unipc", {"solver_type": "bh2", "solver_order": 2}),
    "UniPC bh2 3": ("unipc", {"solver_type": "bh2", "solver_order": 3}),
    "DEIS 2": ("deis", {"solver_order": 2}),
    "DEIS 3": ("deis", {"solver_order": 3}),
}
SDE_OURS = {
    "ours ER 1": "ersde_order1",
    "ours ER 2": "ersde_order2",
    "ours ER 3": "ersde_order3",
    "ours SDE 1": "ersde_order1_phi_sde",
    "ours SDE 2": "ersde_order2_phi_sde",
    "ours SDE 3": "ersde_order3_phi_sde",
}
SDE_PEERS = {
    "DDIM eta=1": ("ddim", {"eta": 1.0}),
    "SDE-DPM++ 1": ("dpm", {"solver_order": 1, "algorithm_type": "sde-dpmsolver++"}),
    "SDE-DPM++ 2M": ("dpm", {"solver_order": 2, "algorithm_type": "sde-dpmsolver++"}),
    "SDE-DPM++ 3M": ("dpm", {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"}),
    "SDE-DPM++ 3M [D2 fixed]": ("dpm_fixed3", {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"}),
}
#: extra peer rows that are benchmark-local corrections of diffusers (not counted as "diffusers as shipped")
PATCHED = {"SDE-DPM++ 3M [D2 fixed]"}


# --------------------------------------------------------------------------------------------------
# drivers
# --------------------------------------------------------------------------------------------------


def run_ours(module, denoiser, y0: torch.Tensor, s: np.ndarray, noise=None, generator=None) -> torch.Tensor:
    sigmas = torch.tensor(s, dtype=torch.float64)
    return module.sample(denoiser, y0, sigmas, noise_sampler=noise, generator=generator)


def make_scheduler(kind: str, options: dict, s: np.ndarray):
    """A diffusers scheduler whose steps follow our normalized sigmas ``s`` (N + 1 values, last > 0)."""
    from diffusers import (
        DDIMScheduler,
        DEISMultistepScheduler,
        DPMSolverMultistepScheduler,
        UniPCMultistepScheduler,
    )

    n = len(s) - 1
    if kind == "ddim":
        sched = DDIMScheduler(
            num_train_timesteps=n, prediction_type="sample", clip_sample=False, set_alpha_to_one=True
        )
        sched.set_timesteps(n)
        if sched.timesteps.tolist() != list(range(n - 1, -1, -1)):
            raise RuntimeError("unexpected DDIM timesteps")
        acp = 1.0 / (1.0 + np.asarray(s, dtype=np.float64) ** 2)
        # timestep t <-> our step n - 1 - t; the step from t = 0 goes to final_alpha_cumprod
        sched.alphas_cumprod = torch.tensor(acp[:n][::-1].copy(), dtype=torch.float64)
        sched.final_alpha_cumprod = torch.tensor(acp[n], dtype=torch.float64)
        return sched
    common = {"prediction_type": "sample", "lower_order_final": False}
    if kind == "dpm_fixed3":
        options = {"algorithm_type": "dpmsolver++", **options}
        sched = _fixed_sde3_class()(final_sigmas_type="sigma_min", **common, **options)
    elif kind == "dpm":
        options = {"algorithm_type": "dpmsolver++", **options}
        sched = DPMSolverMultistepScheduler(final_sigmas_type="sigma_min", **common, **options)
    elif kind == "unipc":
        sched = UniPCMultistepScheduler(final_sigmas_type="sigma_min", **common, **options)
    elif kind == "deis":
        sched = DEISMultistepScheduler(**common, **options)
    else:
        raise ValueError(kind)
    sched.set_timesteps(n)
    if len(sched.timesteps) != n or len(set(sched.timesteps.tolist())) != n:
        raise RuntimeError(f"{kind}: set_timesteps({n}) gave {sched.timesteps.tolist()}")
    sched.sigmas = torch.tensor(np.asarray(s, dtype=np.float64))
    return sched


def _fixed_sde3_class():
    """DPMSolverMultistepScheduler with the exact weight of D2 in the third-order updates.

    ODE (dpmsolver++): diffusers' weight -alpha_t phi_3 is half the exact one (-> h/6 instead of h/3), so its 3M is
    a second-order method; doubled, the update is our lambda-3 module's (checked in ``consistency_checks``).

    With diffusers' D2 = (D1_0 - D1_1) / (r0 + r1) = h^2 x0''/2, the exact weight of D2 in the SDE step is
    alpha_t (2/h^2) int_0^h 2 e^{-2u} (h - u)^2 / 2 du = alpha_t (1 - 1/h + (1 - e^{-2h}) / (2 h^2)) (-> 2h/3);
    diffusers 0.42 uses alpha_t ((1 - e^{-2h} - 2h) / (2h)^2 - 0.5) (-> -1 + h/3). Only that weight changes.
    """
    from diffusers import DPMSolverMultistepScheduler

    class FixedSDE3(DPMSolverMultistepScheduler):
        def multistep_dpm_solver_third_order_update(
            self, model_output_list, *args, sample=None, noise=None, **kw
        ):
            i = self.step_index
            points = [self._sigma_to_alpha_sigma_t(self.sigmas[k]) for k in (i + 1, i, i - 1, i - 2)]
            (alpha_t, sigma_t), (_, sigma_s0) = points[0], points[1]
            lam = [torch.log(a) - torch.log(s) for a, s in points]
            h, h_0, h_1 = lam[0] - lam[1], lam[1] - lam[2], lam[2] - lam[3]
            r0, r1 = h_0 / h, h_1 / h
            m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
            d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            if self.config.algorithm_type == "dpmsolver++":  # ODE: the exact weight is twice diffusers' phi_3
                phi_1 = torch.expm1(-h)
                phi_2 = phi_1 / h + 1.0
                phi_3 = phi_2 / h - 0.5
                return (
                    (sigma_t / sigma_s0) * sample
                    - (alpha_t * phi_1) * m0
                    + (alpha_t * phi_2) * d1
                    - (2.0 * alpha_t * phi_3) * d2
                )
            e2 = torch.exp(-2.0 * h)
            return (
                (sigma_t / sigma_s0 * torch.exp(-h)) * sample
                + (alpha_t * (1.0 - e2)) * m0
                + (alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0)) * d1
                + (alpha_t * (1.0 - 1.0 / h + (1.0 - e2) / (2.0 * h**2))) * d2
                + sigma_t * torch.sqrt(1.0 - e2) * noise
            )

    return FixedSDE3


def run_peer(
    kind: str, options: dict, denoiser, y0: torch.Tensor, s: np.ndarray, noises=None, generator=None
):
    """Drive a diffusers scheduler in the standard loop, in VP coordinates; returns normalized y at s[-1]."""
    options = dict(options)
    eta = options.pop("eta", 0.0)
    sched = make_scheduler(kind, options, s)
    scale = 1.0 / np.sqrt(1.0 + np.asarray(s, dtype=np.float64) ** 2)  # alpha of the VP process at s
    x = y0 * float(scale[0])
    stochastic = eta > 0 or options.get("algorithm_type", "").startswith("sde")
    for i, t in enumerate(sched.timesteps):
        x0 = denoiser(x / float(scale[i]), float(s[i]))
        kwargs = {}
        if stochastic:
            if noises is not None:
                kwargs["variance_noise"] = noises(i)
            else:
                kwargs["variance_noise"] = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        if kind == "ddim":
            kwargs["eta"] = eta
        x = sched.step(x0, t, x, **kwargs).prev_sample
    return x / float(scale[-1])


# --------------------------------------------------------------------------------------------------
# deterministic accuracy
# --------------------------------------------------------------------------------------------------


def rms(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)))


def median_point(a, b) -> float:
    """Median over points of the per-point RMS (over coordinates) error: the typical trajectory's error."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(np.median(np.sqrt(np.mean(diff**2, axis=-1))))


METRICS = {"rms": rms, "median": median_point}
METRIC_TEXT = {
    "rms": "RMS over points and coordinates",
    "median": "median over points of the per-point RMS error",
}


def deterministic(dims, nfes, n_points: int, seed: int = 0) -> dict:
    out = {}
    for d in dims:
        mix = GaussianMixture.standard(d, seed=0)
        rng = np.random.default_rng(seed + d)
        y0_np = mix.sample_np(n_points, rng) + SIGMA_MAX * rng.standard_normal((n_points, d))
        start = time.perf_counter()
        ref_min = reference_flow(mix.denoiser_np, y0_np, SIGMA_MAX, SIGMA_MIN)
        ref_zero = reference_flow(mix.denoiser_np, ref_min, SIGMA_MIN, SIGMA_ZERO_REF)
        ref_time = time.perf_counter() - start
        y0 = torch.tensor(y0_np, dtype=torch.float64)
        den = mix.denoiser_torch
        for sched_name, make in SCHEDULES.items():
            key = f"d={d} {sched_name}"
            errors = {m: {"sigma_min": {}, "zero": {}} for m in METRICS}
            endpoints = {}  # (solver, n_steps) -> y at sigma_min
            need = sorted(set(nfes) | {n - 1 for n in nfes if n > 1})
            solvers = {
                **{k: ("ours", v) for k, v in {**DET_OURS, **DET_EXTRA}.items()},
                **{k: ("peer", v) for k, v in DET_PEERS.items()},
            }
            for name, (who, spec) in solvers.items():
                for n in need:
                    s = make(n)
                    try:
                        if who == "ours":
                            y = run_ours(load_module_cached(spec), den, y0, s)
                        else:
                            y = run_peer(spec[0], spec[1], den, y0, s)
                        y = y.numpy()
                        if not np.all(np.isfinite(y)):
                            y = None
                    except Exception as exc:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
                        print(f"{key} {name} N={n}: {type(exc).__name__}: {exc}", file=sys.stderr)
                        y = None
                    endpoints[(name, n)] = y
                for n in nfes:
                    y = endpoints[(name, n)]
                    prev = endpoints.get((name, n - 1))
                    final = None if prev is None else mix.denoiser_np(prev, SIGMA_MIN)
                    for metric, fn in METRICS.items():
                        errors[metric]["sigma_min"].setdefault(name, {})[n] = (
                            None if y is None else fn(y, ref_min)
                        )
                        if n > 1:
                            errors[metric]["zero"].setdefault(name, {})[n] = (
                                None if final is None else fn(final, ref_zero)
                            )
            checks = consistency_checks(den, y0, make, nfes)
            out[key] = {
                "d": d,
                "schedule": sched_name,
                "errors": errors,
                "reference_seconds": ref_time,
                "checks": checks,
            }
            print(f"done deterministic {key}", file=sys.stderr, flush=True)
    return out


_MODULES: dict = {}


def load_module_cached(name: str):
    """A catalogue module by name, or a generated file by path."""
    if name not in _MODULES:
        path = pathlib.Path(name)
        _MODULES[name] = (
            load_generated(path.stem, path.parent) if name.endswith(".py") else load_generated(name)
        )
    return _MODULES[name]


def generate_extra(folder: pathlib.Path) -> dict:
    """Generate the noise-form lambda modules (one process per order, in parallel); name -> path."""
    exe = pathlib.Path(sys.executable).with_name("derive")
    derive = [str(exe)] if exe.exists() else [sys.executable, "-m", "derive.cli"]
    procs = {}
    for name, order in EXTRA_SPECS.items():
        args = [
            *derive,
            "gen",
            "--family",
            "vpsde",
            "--order",
            str(order),
            "--dynamics",
            "ode",
            "--variable",
            "lambda",
            "--out",
            str(folder),
        ]
        procs[name] = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            print(f"could not generate {name}: {stderr.strip()}", file=sys.stderr)
            continue
        out[name] = stdout.strip().splitlines()[-1]
    return out


def consistency_checks(den, y0, make, nfes) -> dict:
    """Identities that validate the drivers: DDIM = our order 1; DPM++3M = our lambda-3 (both exactly the
    same method, DPM++ in float32 inside diffusers); our final step to 0 = the denoiser at sigma_min."""
    n = max(nfes)
    s = make(n)
    ours1 = run_ours(load_module_cached(DET_OURS["ours s1"]), den, y0, s)
    ddim = run_peer("ddim", {}, den, y0, s)
    lam3 = run_ours(load_module_cached(DET_OURS["ours λ3"]), den, y0, s)
    dpm3 = run_peer("dpm", {"solver_order": 3}, den, y0, s)
    dpm3_fixed = run_peer("dpm_fixed3", {"solver_order": 3, "solver_type": "heun"}, den, y0, s)
    mod = load_module_cached(DET_OURS["ours s3"])
    with_zero = mod.sample(den, y0, torch.tensor(np.append(s, 0.0)))
    manual = den(mod.sample(den, y0, torch.tensor(s)), float(s[-1]))
    scale = float(y0.abs().max())
    extra = {}
    if "ours ε-λ3" in DET_EXTRA:
        eps3 = run_ours(load_module_cached(DET_EXTRA["ours ε-λ3"]), den, y0, s)
        deis3 = run_peer("deis", {"solver_order": 3}, den, y0, s)
        extra["deis3_vs_ours_eps_lambda3_max_abs"] = float((deis3 - eps3).abs().max())
    return {
        **extra,
        "nfe": n,
        "ddim_vs_ours_s1_max_abs": float((ddim - ours1).abs().max()),
        "dpm3m_vs_ours_lambda3_max_abs": float((dpm3 - lam3).abs().max()),
        "dpm3m_fixed_heun_vs_ours_lambda3_max_abs": float((dpm3_fixed - lam3).abs().max()),
        "final_zero_step_vs_manual_max_abs": float((with_zero - manual).abs().max()),
        "start_scale": scale,
    }


# --------------------------------------------------------------------------------------------------
# stochastic accuracy
# --------------------------------------------------------------------------------------------------

GAUSS_MEAN, GAUSS_STDS = 0.5, (0.05, 0.4, 1.0)


def gaussian_weak_errors(nfes) -> dict:
    """Exact law of each stochastic sampler's output on Gaussian data, by impulse responses (all samplers are
    affine in the start point and the noises when the denoiser is affine)."""
    data = GaussianData(GAUSS_MEAN, np.square(GAUSS_STDS))
    den = data.denoiser_torch
    var = np.square(GAUSS_STDS)
    out = {}
    for sched_name, make in SCHEDULES.items():
        res = {"sigma_min": {}, "zero": {}, "variance_rel_error": {}}
        solvers = {
            **{k: ("ours", v) for k, v in SDE_OURS.items()},
            **{k: ("peer", v) for k, v in SDE_PEERS.items()},
        }
        for name, (who, spec) in solvers.items():
            for n in nfes:
                law = _gauss_law(who, spec, den, make(n), var)
                if law is None:
                    res["sigma_min"].setdefault(name, {})[n] = None
                    continue
                mean_out, var_out = law
                w2 = np.sqrt(
                    (mean_out - GAUSS_MEAN) ** 2 + (np.sqrt(var_out) - np.sqrt(var + SIGMA_MIN**2)) ** 2
                )
                res["sigma_min"].setdefault(name, {})[n] = float(np.sqrt(np.mean(w2**2)))
                res["variance_rel_error"].setdefault(name, {})[n] = float(
                    np.max(np.abs(var_out / (var + SIGMA_MIN**2) - 1))
                )
                # final step to 0 (returns the denoiser: affine, shrink = var / (var + s^2)) after n - 1 steps
                # is computed from the n-step law of the (n-1)-step run below
            for n in nfes:
                if n < 2:
                    continue
                prev = _gauss_law(who, spec, den, make(n - 1), var)
                if prev is None:
                    res["zero"].setdefault(name, {})[n] = None
                    continue
                m_prev, v_prev = prev
                shrink = var / (var + SIGMA_MIN**2)
                m_fin = GAUSS_MEAN + shrink * (m_prev - GAUSS_MEAN)
                v_fin = shrink**2 * v_prev
                w2 = np.sqrt((m_fin - GAUSS_MEAN) ** 2 + (np.sqrt(v_fin) - np.sqrt(var)) ** 2)
                res["zero"].setdefault(name, {})[n] = float(np.sqrt(np.mean(w2**2)))
        # the exact law at sigma_min pushed through the final denoising step: the floor of the "zero" variant
        shrink = var / (var + SIGMA_MIN**2)
        floor = np.sqrt((np.sqrt(shrink**2 * (var + SIGMA_MIN**2)) - np.sqrt(var)) ** 2)
        res["zero_variant_floor"] = float(np.sqrt(np.mean(floor**2)))
        out[sched_name] = res
        print(f"done gaussian weak error {sched_name}", file=sys.stderr, flush=True)
    return out


def _gauss_law(who, spec, den, s, var):
    n = len(s) - 1
    rows = n + 2
    y0 = torch.full((rows, len(var)), GAUSS_MEAN, dtype=torch.float64)
    y0[1] += 1.0

    def impulse(k):
        z = torch.zeros((rows, len(var)), dtype=torch.float64)
        z[2 + k] = 1.0
        return z

    index = {float(v): i for i, v in enumerate(s)}
    try:
        if who == "ours":
            y = run_ours(load_module_cached(spec), den, y0, s, noise=lambda a, b: impulse(index[float(a)]))
        else:
            y = run_peer(spec[0], spec[1], den, y0, s, noises=impulse)
    except Exception as exc:  # noqa: BLE001 - reported, the solver's curve gets a gap
        print(f"gauss {spec} N={n}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    y = y.numpy()
    a = y[1] - y[0]
    b = y[2:] - y[0]
    return y[0], a**2 * (var + SIGMA_MAX**2) + np.sum(b**2, axis=0)


def sliced_w1(a: np.ndarray, b: np.ndarray, directions: np.ndarray) -> float:
    pa = np.sort(a @ directions.T, axis=0)
    pb = np.sort(b @ directions.T, axis=0)
    return float(np.mean(np.abs(pa - pb)))


def mixture_sw(dims, nfes, n_samples: int, seed: int = 0) -> dict:
    out = {}
    for d in dims:
        mix = GaussianMixture.standard(d, seed=0)
        rng = np.random.default_rng(1000 + d)
        directions = rng.standard_normal((128, d))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        exact = mix.sample_np(n_samples, rng) + SIGMA_MIN * rng.standard_normal((n_samples, d))
        exact2 = mix.sample_np(n_samples, rng) + SIGMA_MIN * rng.standard_normal((n_samples, d))
        floor = sliced_w1(exact, exact2, directions)
        y0_np = mix.sample_np(n_samples, rng) + SIGMA_MAX * rng.standard_normal((n_samples, d))
        y0 = torch.tensor(y0_np, dtype=torch.float64)
        for sched_name, make in SCHEDULES.items():
            res = {}
            solvers = {
                **{k: ("ours", v) for k, v in SDE_OURS.items()},
                **{k: ("peer", v) for k, v in SDE_PEERS.items()},
            }
            for name, (who, spec) in solvers.items():
                for n in nfes:
                    s = make(n)
                    gen = torch.Generator().manual_seed(seed + n)
                    try:
                        if who == "ours":
                            y = run_ours(load_module_cached(spec), mix.denoiser_torch, y0, s, generator=gen)
                        else:
                            y = run_peer(spec[0], spec[1], mix.denoiser_torch, y0, s, generator=gen)
                        y = y.numpy()
                        res.setdefault(name, {})[n] = (
                            sliced_w1(y, exact, directions) if np.all(np.isfinite(y)) else None
                        )
                    except Exception as exc:  # noqa: BLE001
                        print(
                            f"sw d={d} {sched_name} {name} N={n}: {type(exc).__name__}: {exc}",
                            file=sys.stderr,
                        )
                        res.setdefault(name, {})[n] = None
            out[f"d={d} {sched_name}"] = {
                "d": d,
                "schedule": sched_name,
                "sw": res,
                "floor": floor,
                "samples": n_samples,
            }
            print(f"done sw d={d} {sched_name}", file=sys.stderr, flush=True)
    return out


# --------------------------------------------------------------------------------------------------
# NFE to reach a target error
# --------------------------------------------------------------------------------------------------


def nfe_to_reach(curve: dict, target: float):
    """(NFE, kind): log-log interpolation at the first crossing; kind '<=' if the smallest NFE already reaches
    the target, None if no NFE in the sweep does."""
    points = sorted((int(n), e) for n, e in curve.items() if e is not None and math.isfinite(e))
    if not points:
        return None, None
    all_n = sorted(int(n) for n in curve)
    prev = None
    for n, e in points:
        if e <= target:
            if prev is None:
                return float(n), ("<=" if n == all_n[0] else "=")
            n0, e0 = prev
            if e0 == e:
                return float(n), "="
            t = (math.log(target) - math.log(e0)) / (math.log(e) - math.log(e0))
            return float(math.exp(math.log(n0) + t * (math.log(n) - math.log(n0)))), "="
        prev = (n, e)
    return None, None


def summarize(curves: dict, ours: list, peers: list, targets: list, extra=()) -> list:
    """Per target: the NFE each solver needs, and best ours / best peer (``extra`` rows are listed, not ranked)."""
    rows = []
    for target in targets:
        need = {name: nfe_to_reach(curves.get(name, {}), target) for name in [*ours, *peers, *extra]}
        best_ours = min(((need[k][0], k) for k in ours if need[k][0] is not None), default=(None, None))
        best_peer = min(((need[k][0], k) for k in peers if need[k][0] is not None), default=(None, None))
        ratio, ratio_kind = None, None
        max_nfe = max((int(n) for name in ours + peers for n in curves.get(name, {})), default=None)
        if best_ours[0] is not None and best_peer[0] is not None:
            ratio, ratio_kind = best_ours[0] / best_peer[0], "="
        elif best_ours[0] is not None and max_nfe:
            ratio, ratio_kind = best_ours[0] / max_nfe, "<"  # no peer reaches the target within the sweep
        elif best_peer[0] is not None and max_nfe:
            ratio, ratio_kind = max_nfe / best_peer[0], ">"
        rows.append(
            {
                "target": target,
                "need": {k: v[0] for k, v in need.items()},
                "bound": {k: v[1] for k, v in need.items()},
                "best_ours": best_ours[1],
                "best_ours_nfe": best_ours[0],
                "best_peer": best_peer[1],
                "best_peer_nfe": best_peer[0],
                "ratio": ratio,
                "ratio_kind": ratio_kind,
                "ratio_bounded": bool(
                    (best_ours[1] and need[best_ours[1]][1] == "<=")
                    or (best_peer[1] and need[best_peer[1]][1] == "<=")
                ),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------


def _nfe_text(value, bound, max_nfe):
    if value is None:
        return f">{max_nfe}"
    return ("≤" if bound == "<=" else "") + f"{value:.1f}"


def _ratio_text(row) -> str:
    if row["ratio"] is None:
        return "-"
    kind = row.get("ratio_kind") or "="
    prefix = {"=": "", "<": "< ", ">": "> "}[kind]
    suffix = " (≤5 bound)" if row.get("ratio_bounded") and kind == "=" else ""
    return f"{prefix}{row['ratio']:.2f}{suffix}"


def _best(row, which: str, max_nfe: int) -> str:
    name = row[f"best_{which}"]
    return f"{name or '-'} ({_nfe_text(row[f'best_{which}_nfe'], row['bound'].get(name), max_nfe)})"


def _summary_rows(key: str, summary: list, max_nfe: int, with_extra: list | None = None) -> list:
    rows = []
    for i, row in enumerate(summary):
        cells = [key, fmt(row["target"], ".0e"), _best(row, "ours", max_nfe)]
        if with_extra is not None:
            cells.append(_best(with_extra[i], "ours", max_nfe))
        cells += [_best(row, "peer", max_nfe), _ratio_text(row)]
        if with_extra is not None:
            cells.append(_ratio_text(with_extra[i]))
        rows.append(cells)
    return rows


def render(payload: dict, raw_tables: bool = True) -> str:
    parts = [f"Machine: {machine_line(payload['machine'])}", f"Command: `{payload['command']}`", ""]
    max_nfe = max(payload["nfes"])
    det = payload["deterministic"]
    extra = list(payload.get("extra_ours") or [])
    ours, peers = [*DET_OURS, *extra], list(DET_PEERS)
    keys = list(det)
    if extra:
        head = [
            "problem / schedule",
            "target error",
            "best ours, catalogue (NFE)",
            "best ours incl. ε-λ (NFE)",
            "best peer (NFE)",
            "catalogue / peer",
            "incl. ε-λ / peer",
        ]
    else:
        head = ["problem / schedule", "target error", "best ours (NFE)", "best peer (NFE)", "ours / peer"]
    for metric in METRICS:
        for variant in ("sigma_min", "zero"):
            label = "at sigma_min = 0.002" if variant == "sigma_min" else "with the final step to 0"
            parts.append(
                f"**Deterministic, {label}, error = {METRIC_TEXT[metric]}: NFE to reach it, best of ours vs "
                "best diffusers peer**"
            )
            parts.append("")
            rows = []
            for key in keys:
                with_extra = det[key]["summary_with_extra"][metric][variant] if extra else None
                rows += _summary_rows(key, det[key]["summary"][metric][variant], max_nfe, with_extra)
            parts.append(markdown_table(head, rows))
            parts.append("")
    for metric in METRICS:
        target = 1e-2 if 1e-2 in payload["targets"] else payload["targets"][0]
        parts.append(
            f"**NFE each deterministic solver needs for error {target:.0e} ({METRIC_TEXT[metric]}) at "
            "sigma_min (log-log interpolation)**"
        )
        parts.append("")
        rows = []
        for name in ours + peers:
            row = [name]
            for key in keys:
                summary = det[key]["summary_with_extra" if extra else "summary"][metric]["sigma_min"]
                srow = next(r for r in summary if r["target"] == target)
                row.append(_nfe_text(srow["need"][name], srow["bound"][name], max_nfe))
            rows.append(row)
        parts.append(markdown_table(["solver", *keys], rows))
        parts.append("")
    show = [n for n in (5, 10, 20, 50) if n in payload["nfes"]] or payload["nfes"]
    if raw_tables:
        for key in keys:
            parts.append(
                f"**Errors at sigma_min, {key}: RMS / median point** (NFE {', '.join(map(str, show))})"
            )
            parts.append("")
            rows = []
            for name in ours + peers:
                a = det[key]["errors"]["rms"]["sigma_min"].get(name, {})
                b = det[key]["errors"]["median"]["sigma_min"].get(name, {})
                rows.append([name, *[f"{fmt(a.get(n), '.1e')} / {fmt(b.get(n), '.1e')}" for n in show]])
            parts.append(markdown_table(["solver", *[f"NFE {n}" for n in show]], rows))
            parts.append("")
    checks = [v["checks"] for v in det.values()]
    worst = {k: max(c[k] for c in checks) for k in checks[0] if k.endswith("_max_abs")}
    parts.append(
        "Driver checks (max abs difference over problems, largest NFE): DDIM vs ours s1 "
        f"{worst['ddim_vs_ours_s1_max_abs']:.1e}; DPM++3M vs ours λ3 {worst['dpm3m_vs_ours_lambda3_max_abs']:.1e}, "
        f"but {worst['dpm3m_fixed_heun_vs_ours_lambda3_max_abs']:.1e} once diffusers' D2 weight is doubled and the "
        "warm-up step uses solver_type='heun' (diffusers' DPM-Solver computes in float32); "
        f"our final step to 0 vs D(y, sigma_min) {worst['final_zero_step_vs_manual_max_abs']:.1e}"
        + (
            f"; DEIS 3 vs ours ε-λ3 {worst['deis3_vs_ours_eps_lambda3_max_abs']:.1e}."
            if "deis3_vs_ours_eps_lambda3_max_abs" in worst
            else "."
        )
    )
    parts.append("")
    gw = payload["gaussian_weak"]
    sde_ours, sde_peers = list(SDE_OURS), list(SDE_PEERS)
    parts.append(
        "**Stochastic, exact weak error (W2 to the exact law at sigma_min) on Gaussian data: NFE to reach it "
        "(best peer among diffusers as shipped)**"
    )
    parts.append("")
    rows = []
    for sched_name, res in gw.items():
        rows += _summary_rows(sched_name, res["summary"], max_nfe)
    parts.append(
        markdown_table(["schedule", "target W2", "best ours (NFE)", "best peer (NFE)", "ours / peer"], rows)
    )
    parts.append("")
    for sched_name, res in gw.items():
        parts.append(f"**Exact weak error (W2) at sigma_min, Gaussian data, {sched_name}**")
        parts.append("")
        rows = [
            [name, *[fmt(res["sigma_min"].get(name, {}).get(n), ".2e") for n in show]]
            for name in sde_ours + sde_peers
        ]
        parts.append(markdown_table(["solver", *[f"NFE {n}" for n in show]], rows))
        parts.append("")
    sw = payload.get("mixture_sw") or {}
    if sw:
        first = next(iter(sw.values()))
        sw_nfes = sorted({int(n) for case in sw.values() for curve in case["sw"].values() for n in curve})
        parts.append(
            f"**Sliced W1 to exact samples at sigma_min, mixtures ({first['samples']} samples, 128 directions; "
            "floor = two independent exact sample sets)**"
        )
        parts.append("")
        header = ["problem / schedule", "floor", *[f"{name}" for name in sde_ours + sde_peers]]
        rows = []
        for key, case in sw.items():
            for n in sw_nfes:
                rows.append(
                    [
                        f"{key}, NFE {n}",
                        fmt(case["floor"], ".1e"),
                        *[fmt(case["sw"].get(name, {}).get(n), ".1e") for name in sde_ours + sde_peers],
                    ]
                )
        parts.append(markdown_table(header, rows))
    return "\n".join(parts)


def _nfe_axis(ax) -> None:
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xticks([5, 10, 20, 50])
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot(payload: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    det = payload["deterministic"]
    keys = list(det)
    dims = sorted({det[k]["d"] for k in keys})
    panels = [(metric, sched) for metric in METRICS for sched in SCHEDULES]
    fig, axes = plt.subplots(
        len(panels), len(dims), figsize=(4.3 * len(dims), 3.3 * len(panels)), squeeze=False
    )
    our_names = [*DET_OURS, *(payload.get("extra_ours") or [])]
    names = our_names + list(DET_PEERS)
    ours_cmap, peer_cmap = plt.get_cmap("viridis"), plt.get_cmap("tab10")
    colors = {}
    for i, name in enumerate(our_names):
        colors[name] = ours_cmap(i / max(1, len(our_names) - 1) * 0.95)
    for i, name in enumerate(DET_PEERS):
        colors[name] = peer_cmap(i % 10)
    for r, (metric, sched) in enumerate(panels):
        for c, d in enumerate(dims):
            ax = axes[r][c]
            case = det.get(f"d={d} {sched}")
            if case is None:
                ax.set_visible(False)
                continue
            for name in names:
                curve = case["errors"][metric]["sigma_min"].get(name, {})
                pts = sorted((int(n), e) for n, e in curve.items() if e is not None and e > 0)
                if not pts:
                    continue
                mine = name.startswith("ours")
                ax.loglog(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    "-" if mine else "--",
                    marker="o" if mine else "x",
                    ms=3,
                    lw=1.3 if mine else 1.0,
                    color=colors[name],
                    label=name,
                )
            _nfe_axis(ax)
            ax.set_title(f"d = {d}, {sched}, {metric} error", fontsize=9)
            ax.set_xlabel("NFE")
            ax.set_ylabel("error at sigma_min")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(9, 3 * len(dims)), fontsize=7)
    fig.suptitle(
        "PF-ODE error vs NFE (Gaussian mixtures, exact denoiser, float64)\nsolid = ours, dashed = diffusers",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.98))
    fig.savefig(path, dpi=80)
    plt.close(fig)

    gw = payload["gaussian_weak"]
    fig, axes = plt.subplots(1, len(gw), figsize=(5.5 * len(gw), 4), squeeze=False)
    names = list(SDE_OURS) + list(SDE_PEERS)
    for c, (sched, res) in enumerate(gw.items()):
        ax = axes[0][c]
        for i, name in enumerate(names):
            pts = sorted(
                (int(n), e) for n, e in res["sigma_min"].get(name, {}).items() if e is not None and e > 0
            )
            if pts:
                mine = name.startswith("ours")
                ax.loglog(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    "-" if mine else "--",
                    marker="o" if mine else "x",
                    ms=3,
                    color=plt.get_cmap("tab20")(i % 20),
                    label=name,
                )
        _nfe_axis(ax)
        ax.set_title(f"exact weak error (W2), Gaussian data, {sched}", fontsize=9)
        ax.set_xlabel("NFE")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path.with_name(path.stem + "_sde.png"), dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d = 2 only, NFE 5 and 10, few points (seconds)")
    parser.add_argument(
        "--points", type=int, default=None, help="start points of the deterministic runs (512)"
    )
    parser.add_argument(
        "--sw-samples", type=int, default=None, help="samples for the sliced Wasserstein (10000)"
    )
    parser.add_argument("--json", type=pathlib.Path, default=HERE / "accuracy.json", help="raw numbers")
    parser.add_argument(
        "--plot", type=pathlib.Path, default=HERE / "accuracy.png", help="the error-vs-NFE plot"
    )
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--no-extra", action="store_true", help="skip the noise-form lambda modules (ours ε-λ)"
    )
    parser.add_argument(
        "--targets",
        type=float,
        nargs="+",
        default=[1e-1, 1e-2, 1e-3, 1e-4],
        help="error levels for the NFE-to-target tables",
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    if args.quick:
        dims, nfes, sw_nfes = [2], [5, 6, 10], [5, 10]
        points, sw_samples = args.points or 16, args.sw_samples or 256
    else:
        dims, nfes, sw_nfes = [2, 16, 64], [5, 6, 7, 8, 10, 12, 15, 20, 25, 30, 40, 50], [5, 10, 20, 50]
        points, sw_samples = args.points or 512, args.sw_samples or 10000
    targets = args.targets
    payload = {
        "benchmark": "accuracy",
        "command": command_line(),
        "quick": args.quick,
        "machine": machine(),
        "nfes": nfes,
        "sw_nfes": sw_nfes,
        "targets": targets,
        "points": points,
        "sw_samples": sw_samples,
        "sigma_max": SIGMA_MAX,
        "sigma_min": SIGMA_MIN,
    }
    start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="derive-bench-extra-")
    if not (args.quick or args.no_extra):
        DET_EXTRA.update(generate_extra(pathlib.Path(tmp.name)))
    payload["extra_ours"] = list(DET_EXTRA)
    payload["extra_seconds"] = time.perf_counter() - start
    det = deterministic(dims, nfes, points)
    for case in det.values():
        case["summary"] = {
            metric: {
                variant: summarize(case["errors"][metric][variant], list(DET_OURS), list(DET_PEERS), targets)
                for variant in ("sigma_min", "zero")
            }
            for metric in METRICS
        }
        if DET_EXTRA:
            case["summary_with_extra"] = {
                metric: {
                    variant: summarize(
                        case["errors"][metric][variant], [*DET_OURS, *DET_EXTRA], list(DET_PEERS), targets
                    )
                    for variant in ("sigma_min", "zero")
                }
                for metric in METRICS
            }
    payload["deterministic"] = det
    gw = gaussian_weak_errors(nfes)
    for res in gw.values():
        res["summary"] = summarize(
            res["sigma_min"],
            list(SDE_OURS),
            [k for k in SDE_PEERS if k not in PATCHED],
            targets,
            extra=sorted(PATCHED),
        )
    payload["gaussian_weak"] = gw
    payload["mixture_sw"] = mixture_sw(dims, sw_nfes, sw_samples)
    payload["seconds"] = time.perf_counter() - start
    tmp.cleanup()
    write_json(args.json, payload)
    args.json.with_suffix(".md").write_text(render(payload) + "\n")
    if not args.no_plot:
        plot(payload, args.plot)
    print(render(payload))
    return payload


if __name__ == "__main__":
    main()

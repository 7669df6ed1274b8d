"""The measurement engine of ``derive verify``: convergence studies of generated sampler modules.

Nothing here prints or parses options; :mod:`derive.verify.command` is a thin layer over
:func:`verify_module`. Claims and tolerances live in :mod:`derive.verify.tolerances`.

Every study runs the module's ``sample`` (k-diffusion convention, normalized coordinates) on a problem with an
exact denoiser, from the problem's ``s_max`` to its ``s_min`` (no final zero), for each step count ``n`` of
:attr:`Settings.steps`; grids are uniform in ``log s`` (or Karras) and each coarse grid is a sub-grid of the
finer ones. The step size fed to :func:`~derive.verify.orders.fit_order` is the mean step in ``log s``.

``method``  deterministic part with exact starting values: the reference trajectory is evaluated at
            ``sigmas[0..K-1]``; the exact predictions at ``sigmas[0..K-2]``, in the quantity the module keeps
            (``x0`` for the data form, ``eps = (y - x0)/s`` for the noise form), are passed as ``history`` and
            the exact state at ``sigmas[K-1]`` as ``x``. Error: max-norm at ``s_min`` over a batch of starting
            points. ODE modules (``phi = s``) are compared with the probability-flow solution (closed form for
            Gaussian data, :func:`~derive.verify.problems.reference_flow` for the mixture); SDE modules, with
            zero noise, with the drift ODE ``dy/d(log s) = kappa(s) (y - x0(y, s))``, ``kappa = s phi'/phi``
            (quadrature of the closed-form solution for Gaussian data, DOP853 otherwise). For ``phi = s^2``
            the Gaussian drift study is degenerate (exact to round-off), so it is repeated on the mixture.
``as-used`` the same, started from the state at ``s_max`` alone (the module's own lower-order start).
``as-used+warmup``  the same with the order-preserving warm-up :func:`warmup_sample`.
``strong``  SDE modules: mean over a batch of paths of ``|y_n - y_ref|_2``, ``y_ref`` the same module on
            the finest grid (``reference_factor x max(steps)`` steps), every grid driven by one fine Brownian
            path (see :class:`BrownianPath`).
``weak``    SDE modules, Gaussian data, computed exactly: the sampler is affine in the initial state and
            in each injected unit noise, so the output is ``A y_T + sum_i B_i z_i + c`` per coordinate.
            One batched run of the zero-mean problem gives ``A`` (row 0, unit initial state, no noise) and
            every ``B_i`` (row ``i + 1``: unit noise at step ``i`` only); one run from the data mean with no
            noise gives the output mean. Error: max over coordinates of ``|mean - m| + |var - (v + s_min^2)|``
            with ``var = A^2 (v + s_max^2) + sum_i B_i^2``. Also with the warm-up when asked (``weak+warmup``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence
from types import ModuleType

import numpy as np
import torch

from derive.errors import SpecError
from derive.options import WARMUPS, parse_steps
from derive.verify import tolerances
from derive.verify.loading import (
    GENERATED_DIR as GENERATED_DIR,
)
from derive.verify.loading import (
    _kappa_from_text as _kappa_from_text,
)
from derive.verify.loading import (
    dynamics,
    history_quantity,
    kappa_function,
    load_checked_in,
    load_module_file,
    load_rendered,
    load_rendered_variant,
    manifest,
    module_name,
)
from derive.verify.problems import (
    GaussianData,
)
from derive.verify.references import (
    COARSE_STEPS,
    DEFAULT_STEPS,
    PROBLEMS,
    REFERENCE_ATOL,
    REFERENCE_RTOL,
    BrownianPath,
    Problem,
    Progress,
    Reference,
    Settings,
    _gauss_legendre_log,
    _zero_noise,
    drift_flow,
    make_problem,
    run_sampler,
    schedule,
    substep_count,
    warmup_levels,
    warmup_sample,
)
from derive.verify.studies import (
    ModuleReport,
    Study,
    make_study,
)

__all__ = [
    "BrownianPath",
    "COARSE_STEPS",
    "DEFAULT_STEPS",
    "GENERATED_DIR",
    "ModuleReport",
    "PROBLEMS",
    "Problem",
    "REFERENCE_ATOL",
    "REFERENCE_RTOL",
    "Reference",
    "Settings",
    "Study",
    "WARMUPS",
    "_gauss_legendre_log",
    "count_studies",
    "drift_flow",
    "dynamics",
    "history_quantity",
    "kappa_function",
    "load_checked_in",
    "load_module_file",
    "load_rendered",
    "load_rendered_variant",
    "make_problem",
    "make_study",
    "manifest",
    "parse_steps",
    "report_dict",
    "run_sampler",
    "schedule",
    "substep_count",
    "verify_module",
    "warmup_levels",
    "warmup_sample",
]


# --------------------------------------------------------------------------------------------------
# the studies
# --------------------------------------------------------------------------------------------------


def deterministic_studies(
    module, problem: Problem, settings: Settings, kind: str, progress: Progress | None = None, note: str = ""
) -> list[Study]:
    """``method``, ``as-used`` (and ``as-used+warmup``) errors of the noise-free dynamics on ``problem``."""
    K = module.ORDER
    reference = Reference(problem, module, kind)
    y0 = problem.initial_states(settings.batch, settings.seed)
    x0 = torch.tensor(y0, dtype=torch.float64)
    s_max, s_min = float(problem.sigma_max), float(problem.sigma_min)
    y_end = reference.flow(y0, s_max, s_min)
    scale = max(1.0, float(np.max(np.abs(y_end))))
    noise = _zero_noise(x0.shape)
    variants = ["method", "as-used"] + (["as-used+warmup"] if settings.warmup == "substep" else [])
    errors: dict[str, list[float]] = {v: [] for v in variants}
    seconds = dict.fromkeys(variants, 0.0)
    for n in settings.steps:
        sigmas = schedule(settings, problem, n)
        t = time.perf_counter()
        # method order: exact states at sigmas[0..K-1], exact predictions at sigmas[0..K-2] as history
        m = K - 1
        states = [y0] + [reference.flow(y0, s_max, float(sigmas[j])) for j in range(1, m + 1)]
        history = []
        for j in range(m):
            y = torch.tensor(states[j])
            denoised = problem.model(y, float(sigmas[j]) * torch.ones(len(y0), dtype=torch.float64))
            history.append(history_quantity(module, y, denoised, float(sigmas[j])))
        out = module.sample(
            problem.model, torch.tensor(states[m]), sigmas, noise_sampler=noise, history=history or None
        )
        errors["method"].append(float(np.max(np.abs(out.numpy() - y_end))))
        seconds["method"] += time.perf_counter() - t
        for variant, warmup in (("as-used", "none"), ("as-used+warmup", "substep")):
            if variant not in errors:
                continue
            t = time.perf_counter()
            out = run_sampler(module, problem.model, x0.clone(), sigmas, warmup=warmup, noise_sampler=noise)
            errors[variant].append(float(np.max(np.abs(out.numpy() - y_end))))
            seconds[variant] += time.perf_counter() - t
    what = "probability-flow ODE" if kind == "ode" else "drift ODE (noise off)"
    studies = []
    for v in variants:
        # a published sampler (variant) declares the order its authors claim; a derived module its method order
        claimed = getattr(module, "CLAIMED_ORDER", getattr(module, "METHOD_ORDER", K))
        claim = tolerances.claimed_method_order(claimed) if v == "method" else None
        studies.append(
            make_study(
                v,
                problem,
                settings,
                errors[v],
                scale=scale,
                floor_relative=reference.floor_relative,
                claim=claim,
                tolerance=tolerances.ODE_ORDER_TOL,
                reference=f"{what}: {reference.method}; max-norm over {settings.batch} starting points",
                seconds=seconds[v],
                note=note,
            )
        )
        if progress:
            progress(f"{v} ({problem.name})")
    return studies


def strong_study(module, problem: Problem, settings: Settings) -> Study:
    """Mean pathwise error against the module's own solution on the finest grid, same Brownian path."""
    t = time.perf_counter()
    n_fine = settings.reference_factor * max(settings.steps)
    fine = schedule(settings, problem, n_fine)
    y0 = problem.initial_states(settings.paths, settings.seed + 1)
    x0 = torch.tensor(y0, dtype=torch.float64)
    path = BrownianPath(module, fine, tuple(x0.shape), settings.seed + 2)
    sigmas, sampler = path.noise_sampler(n_fine)
    y_ref = module.sample(problem.model, x0.clone(), sigmas, noise_sampler=sampler)
    errors = []
    for n in settings.steps:
        sigmas, sampler = path.noise_sampler(n)
        out = module.sample(problem.model, x0.clone(), sigmas, noise_sampler=sampler)
        errors.append(float((out - y_ref).norm(dim=-1).mean()))
    return make_study(
        "strong",
        problem,
        settings,
        errors,
        scale=max(1.0, float(y_ref.abs().max())),
        floor_relative=tolerances.EXACT_REFERENCE_FLOOR,
        claim=tolerances.claimed_strong_order(module.ORDER),
        tolerance=tolerances.STRONG_ORDER_TOL,
        reference=f"same module on {n_fine} steps, same Brownian path; mean 2-norm over {settings.paths} paths",
        seconds=time.perf_counter() - t,
    )


class _UnitImpulses:
    """Noise sampler for the exact weak study: step ``key`` gets a unit impulse in its own batch row."""

    def __init__(self, keys: list[tuple[float, float]], d: int):
        self.rows = {key: i + 1 for i, key in enumerate(keys)}
        self.shape = (len(keys) + 1, d)

    def __call__(self, sigma, sigma_next):
        z = torch.zeros(self.shape, dtype=torch.float64)
        z[self.rows[(float(sigma), float(sigma_next))]] = 1.0
        return z


def _step_keys(module, sigmas: torch.Tensor, warmup: str) -> list[tuple[float, float]]:
    """Every (sigma, sigma_next) at which the run asks for noise, in order (a dry run with one zero row)."""
    keys: list[tuple[float, float]] = []
    d = 1

    def record(sigma, sigma_next):
        keys.append((float(sigma), float(sigma_next)))
        return torch.zeros(1, d, dtype=torch.float64)

    centred = GaussianData(np.zeros(d), np.ones(d))
    run_sampler(
        module,
        centred.denoiser_torch,
        torch.zeros(1, d, dtype=torch.float64),
        sigmas,
        warmup=warmup,
        noise_sampler=record,
    )
    if len(set(keys)) != len(keys):
        raise RuntimeError("a run asked twice for the noise of the same step")
    return keys


def exact_moments(module, data: GaussianData, sigmas: torch.Tensor, sigma_max: float, warmup: str = "none"):
    """Mean and variance per coordinate of the sampler's output for ``y_T ~ N(m, v + sigma_max^2)``.

    The run is affine in the initial state and in each unit noise: the zero-mean problem, batched with a
    unit initial state in row 0 and one unit noise per row after it, gives ``A`` and every ``B_i``; the run
    from the mean with zero noise gives the mean.
    """
    d = data.d
    centred = GaussianData(np.zeros(d), data.var)
    impulses = _UnitImpulses(_step_keys(module, sigmas, warmup), d)
    x = torch.zeros(impulses.shape, dtype=torch.float64)
    x[0] = 1.0
    out = run_sampler(
        module, centred.denoiser_torch, x, sigmas, warmup=warmup, noise_sampler=impulses
    ).numpy()
    a, b = out[0], out[1:]
    var = a**2 * (data.var + sigma_max**2) + np.sum(b**2, axis=0)
    mean_x = torch.tensor(data.mean, dtype=torch.float64)[None]
    mean = run_sampler(
        module, data.denoiser_torch, mean_x, sigmas, warmup=warmup, noise_sampler=_zero_noise(mean_x.shape)
    ).numpy()[0]
    return mean, var


def weak_study(module, problem: Problem, settings: Settings, warmup: str = "none") -> Study:
    """Exact weak error (mean and variance on Gaussian data) against the marginal at ``s_min``.

    Checked (claim ``min(K, 2)``) for the sampler as used; reported only with the warm-up.
    """
    if not isinstance(problem.data, GaussianData):
        raise TypeError("the exact weak study needs Gaussian data")
    t = time.perf_counter()
    data = problem.data
    target_var = data.var + problem.sigma_min**2
    errors = []
    for n in settings.steps:
        mean, var = exact_moments(module, data, schedule(settings, problem, n), problem.sigma_max, warmup)
        errors.append(float(np.max(np.abs(mean - data.mean) + np.abs(var - target_var))))
    return make_study(
        "weak" if warmup == "none" else "weak+warmup",
        problem,
        settings,
        errors,
        scale=max(1.0, float(np.max(target_var))),
        floor_relative=tolerances.EXACT_REFERENCE_FLOOR,
        claim=tolerances.claimed_weak_order(module.ORDER) if warmup == "none" else None,
        tolerance=tolerances.WEAK_ORDER_TOL,
        reference="exact: max over coordinates of |mean error| + |variance error| vs N(m, v + s_min^2)",
        seconds=time.perf_counter() - t,
    )


# --------------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------------


def _deterministic_count(settings: Settings) -> int:
    return 3 if settings.warmup == "substep" else 2


def count_studies(module: ModuleType, settings: Settings) -> int:
    """How many progress ticks :func:`verify_module` makes (a possible mixture fallback included)."""
    total = _deterministic_count(settings) * len(settings.problems)
    if dynamics(module) == "sde":
        total += len(settings.problems) + (2 if settings.warmup == "substep" else 1)
        if "gmm" not in settings.problems:
            total += _deterministic_count(settings)
    return total


@contextlib.contextmanager
def single_thread():
    """Run torch on one thread: the problems are tiny, and on a loaded machine the intra-op thread pool's
    synchronisation costs far more than the arithmetic (30x on 2 cores). Restores the setting on exit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def verify_module(
    module: ModuleType,
    settings: Settings | None = None,
    *,
    progress: Progress | None = None,
    name: str | None = None,
) -> ModuleReport:
    """Run every study that applies to ``module`` and return the report (see the module docstring).

    ODE modules: ``method``, ``as-used`` (``as-used+warmup``) per problem. SDE modules: the same on the
    drift ODE, then ``strong`` per problem and the exact ``weak`` (``weak+warmup``) on Gaussian data. When the
    Gaussian drift study is exact to round-off (phi = s^2: along the noise-free flow of Gaussian data the
    data prediction is constant in s and the noise prediction linear, so every K >= 2 integrates it exactly)
    and the mixture is not among the problems, the drift studies are repeated on the mixture, so that the
    order of the derived weights is always measured.
    """
    settings = settings or Settings()
    if min(settings.steps) < module.ORDER:
        raise SpecError(
            f"the smallest step count ({min(settings.steps)}) must be at least the order ({module.ORDER})"
        )
    with single_thread():
        return _verify_module(module, settings, progress, name)


def _verify_module(module, settings: Settings, progress, name) -> ModuleReport:
    t0 = time.perf_counter()
    kind = dynamics(module)
    studies: list[Study] = []
    problems = {p: make_problem(p, settings) for p in settings.problems}
    for problem in problems.values():
        studies += deterministic_studies(module, problem, settings, kind, progress)
    if kind == "sde":
        if "gmm" not in problems:
            degenerate = any(s.exact and s.checked for s in studies)
            if degenerate:
                note = "the Gaussian drift study is exact to round-off (degenerate for this phi); measured on gmm"
                studies += deterministic_studies(
                    module, make_problem("gmm", settings), settings, kind, progress, note=note
                )
            elif progress:
                for _ in range(_deterministic_count(settings)):
                    progress("no mixture fallback needed")
        for problem in problems.values():
            studies.append(strong_study(module, problem, settings))
            if progress:
                progress(f"strong ({problem.name})")
        gaussian = problems.get("gaussian") or make_problem("gaussian", settings)
        for warmup in ("none", "substep") if settings.warmup == "substep" else ("none",):
            studies.append(weak_study(module, gaussian, settings, warmup))
            if progress:
                progress("weak" if warmup == "none" else "weak+warmup")
    return ModuleReport(
        name=name or module_name(module),
        spec=dict(module.SPEC),
        spec_hash=module.SPEC_HASH,
        order=int(module.ORDER),
        dynamics=kind,
        source=getattr(module, "__verify_source__", "generated"),
        studies=studies,
        seconds=time.perf_counter() - t0,
    )


def problem_descriptions(settings: Settings) -> dict:
    names = set(settings.problems) | {"gaussian", "gmm"}
    return {p: make_problem(p, settings).description for p in sorted(names)}


def report_dict(reports: Sequence[ModuleReport], settings: Settings) -> dict:
    """The whole run as JSON-ready data."""
    return {
        "tool": "derive verify",
        "passed": all(r.passed for r in reports),
        "settings": settings.as_dict(),
        "problems": problem_descriptions(settings),
        "tolerances": tolerances.tolerance_table(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "modules": [r.as_dict() for r in reports],
    }

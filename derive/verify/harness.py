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
import dataclasses
import difflib
import functools
import itertools
import json
import math
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np
import torch

from derive.errors import SpecError
from derive.loader import catalogue_dir
from derive.options import WARMUPS, parse_steps, validate_steps
from derive.verify import tolerances
from derive.verify.orders import DEFAULT_FLOOR_FACTOR, OrderFit, fit_order
from derive.verify.problems import (
    GaussianData,
    GaussianMixture,
    karras_sigmas,
    log_uniform_sigmas,
    reference_flow,
)

__all__ = [
    "COARSE_STEPS",
    "DEFAULT_STEPS",
    "GENERATED_DIR",
    "PROBLEMS",
    "WARMUPS",
    "BrownianPath",
    "ModuleReport",
    "Settings",
    "Study",
    "count_studies",
    "dynamics",
    "history_quantity",
    "load_checked_in",
    "load_module_file",
    "load_rendered",
    "manifest",
    "parse_steps",
    "report_dict",
    "substep_count",
    "verify_module",
    "warmup_levels",
    "warmup_sample",
]

#: the catalogue: the installed ``derive._generated`` package data, else a source checkout's ``generated/``
GENERATED_DIR = catalogue_dir()
PROBLEMS = ("gaussian", "gmm")
SCHEDULES = ("log-uniform", "karras")
#: five halvings; the noise-form samplers approach their order like K - c/n and need n >= 64 or so
DEFAULT_STEPS = (16, 32, 64, 128, 256, 512)
#: three halvings, all in the asymptotic range of every checked-in module
COARSE_STEPS = (64, 128, 256, 512)

Progress = Callable[[str], None]


# --------------------------------------------------------------------------------------------------
# settings and input validation
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a verification run depends on (all of it goes into the JSON report)."""

    steps: tuple[int, ...] = DEFAULT_STEPS
    problems: tuple[str, ...] = ("gaussian",)
    warmup: str = "none"
    schedule: str = "log-uniform"
    #: noise levels of the Gaussian problem (every study runs from sigma_max down to its problem's sigma_min)
    sigma_max: float = 5.0
    sigma_min: float = 0.1
    #: the mixture stops earlier: closer to its narrow component (std 0.05) the denoiser changes so fast that
    #: orders 4 to 6 settle only after 512 steps or not before the float64 floor (still strongly nonlinear here)
    gmm_sigma_min: float = 0.3
    #: starting points per deterministic study
    batch: int = 16
    #: Brownian paths per strong study
    paths: int = 256
    #: the strong reference runs on reference_factor x max(steps) steps
    reference_factor: int = 8
    seed: int = 0
    gaussian_mean: tuple[float, ...] = (0.3, -0.5, 1.0)
    gaussian_var: tuple[float, ...] = (0.25, 1.0, 4.0)
    gmm_dim: int = 2
    gmm_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", validate_steps(self.steps))
        object.__setattr__(self, "problems", tuple(self.problems))
        for p in self.problems:
            if p not in PROBLEMS:
                raise SpecError(f"unknown problem {p!r}; choose from: {', '.join(PROBLEMS)}")
        if not self.problems:
            raise SpecError("give at least one problem")
        if self.warmup not in WARMUPS:
            raise SpecError(f"unknown warm-up {self.warmup!r}; choose from: {', '.join(WARMUPS)}")
        if self.schedule not in SCHEDULES:
            raise SpecError(f"unknown schedule {self.schedule!r}; choose from: {', '.join(SCHEDULES)}")
        if (
            not 0
            < min(self.sigma_min, self.gmm_sigma_min)
            <= max(self.sigma_min, self.gmm_sigma_min)
            < self.sigma_max
            < math.inf
        ):
            raise SpecError("need 0 < sigma_min, gmm_sigma_min < sigma_max")
        if min(self.batch, self.paths, self.reference_factor) < 1:
            raise SpecError("batch, paths and reference_factor must be positive")

    @classmethod
    def coarse(cls, **overrides) -> Settings:
        """The CI setting: three halvings (all asymptotic), fewer starting points and paths, a shorter strong
        reference (its own error then lifts the finest strong error slightly: never towards a false failure)."""
        values = {"steps": COARSE_STEPS, "batch": 8, "paths": 64, "reference_factor": 4}
        values.update(overrides)
        return cls(**values)

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# --------------------------------------------------------------------------------------------------
# loading modules
# --------------------------------------------------------------------------------------------------


def manifest(folder: pathlib.Path = GENERATED_DIR, *, variants: bool = False) -> dict:
    """The checked-in modules: ``{name: entry}`` from ``MANIFEST.json`` (empty if there is none). Published-sampler
    variants (``derive verify --variant``) are listed only with ``variants=True``, and then alone."""
    path = pathlib.Path(folder) / "MANIFEST.json"
    if not path.exists():
        return {}
    entries = json.loads(path.read_text(encoding="utf-8"))
    return {name: entry for name, entry in entries.items() if ("variant" in entry) == variants}


def load_module_file(path: pathlib.Path, name: str | None = None) -> ModuleType:
    """A private (uncached) copy of a generated module from its file, through the public loader: a check
    that patches it cannot leak into anyone else's. ``name`` is kept for callers; the loader names it."""
    from derive.loader import load_file

    try:
        return load_file(path, private=True)
    except ValueError as error:
        raise SpecError(str(error)) from None


def load_checked_in(name: str, folder: pathlib.Path = GENERATED_DIR) -> ModuleType:
    """A module listed in ``folder/MANIFEST.json`` (``name`` with or without ``.py``)."""
    name = name.removesuffix(".py")
    entries = {**manifest(folder), **manifest(folder, variants=True)}
    if name not in entries:
        close = difflib.get_close_matches(name, list(entries), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise SpecError(
            f"unknown module {name!r}; {hint}({len(entries)} checked-in modules: see `derive list`)"
        )
    return load_module_file(pathlib.Path(folder) / entries[name]["module"], name)


def load_rendered(spec) -> ModuleType:
    """Render a :class:`~derive.spec.Spec` with the current derivation and import it from a temp dir."""
    from derive.api import module_text

    text = module_text(spec)
    with tempfile.TemporaryDirectory(prefix="derive-verify-") as tmp:
        path = pathlib.Path(tmp) / f"{spec.name}.py"
        path.write_text(text, encoding="utf-8")
        module = load_module_file(path, spec.name)
    module.__verify_source__ = "rendered"
    return module


def load_rendered_variant(variant) -> ModuleType:
    """Render a published-sampler :class:`~derive.variants.Variant` and import it from a temp dir."""
    from derive.api import module_text

    with tempfile.TemporaryDirectory(prefix="derive-verify-") as tmp:
        path = pathlib.Path(tmp) / f"{variant.name}.py"
        path.write_text(module_text(variant), encoding="utf-8")
        module = load_module_file(path, variant.name)
    module.__verify_source__ = "rendered"
    return module


def module_name(module: ModuleType) -> str:
    file = getattr(module, "__file__", None)
    return pathlib.Path(file).stem if file else module.__name__


# --------------------------------------------------------------------------------------------------
# the module's dynamics: phi, kappa = s phi'/phi
# --------------------------------------------------------------------------------------------------


def dynamics(module: ModuleType) -> str:
    """``"ode"`` if the module injects no noise (phi proportional to s), else ``"sde"``."""
    probe = torch.tensor([10.0, 3.0, 1.0, 0.3, 0.1, 0.03], dtype=torch.float64)
    _, stds, _, _ = module.coefficient_table(probe)
    return "ode" if all(v == 0.0 for v in stds) else "sde"


@functools.lru_cache(maxsize=64)
def _kappa_from_text(phi_text: str) -> Callable[[np.ndarray], np.ndarray]:
    import sympy as sp

    from derive.symbolic.expression import parse_expression

    phi = parse_expression(phi_text)
    (s,) = tuple(phi.free_symbols) or (sp.Symbol("s", positive=True),)
    kappa = sp.simplify(s * sp.diff(phi, s) / phi)
    fn = sp.lambdify(s, kappa, "numpy")

    def evaluate(values):
        values = np.asarray(values, dtype=np.float64)
        return np.broadcast_to(np.asarray(fn(values), dtype=np.float64), values.shape)

    return evaluate


def kappa_function(module: ModuleType) -> Callable[[np.ndarray], np.ndarray]:
    """``kappa(s) = s phi'(s)/phi(s)`` from the module's spec (exact derivative by SymPy)."""
    return _kappa_from_text(module.SPEC["phi"])


def update_form(module: ModuleType) -> str:
    """``"data"`` (x0 is interpolated; ``history`` holds data predictions) or ``"noise"`` (eps)."""
    return getattr(module, "FORM", "data")


def history_quantity(
    module: ModuleType, y: torch.Tensor, denoised: torch.Tensor, sigma: float
) -> torch.Tensor:
    """What ``module.sample`` stores in its ``history`` for state ``y`` with prediction ``denoised``."""
    if update_form(module) == "noise":
        return (y - denoised) / float(sigma)
    return denoised


# --------------------------------------------------------------------------------------------------
# problems and references
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Problem:
    """Data with a torch denoiser and a reference solution of the deterministic dynamics."""

    name: str
    data: GaussianData | GaussianMixture
    description: dict
    sigma_max: float
    sigma_min: float

    @property
    def d(self) -> int:
        return self.data.d

    def model(self, x, sigma):
        return self.data.denoiser_torch(x, sigma)

    def initial_states(self, n: int, seed: int) -> np.ndarray:
        """``n`` draws from the noisy marginal at ``sigma_max``."""
        rng = np.random.default_rng(seed)
        return self.data.sample_np(n, rng) + self.sigma_max * rng.standard_normal((n, self.d))


def make_problem(name: str, settings: Settings) -> Problem:
    if name == "gaussian":
        data = GaussianData(np.array(settings.gaussian_mean), np.array(settings.gaussian_var))
        description = {"kind": "GaussianData", "mean": data.mean.tolist(), "var": data.var.tolist()}
        description.update(sigma_max=settings.sigma_max, sigma_min=settings.sigma_min)
        return Problem(name, data, description, settings.sigma_max, settings.sigma_min)
    if name == "gmm":
        data = GaussianMixture.standard(settings.gmm_dim, seed=settings.gmm_seed)
        description = {
            "kind": "GaussianMixture.standard",
            "d": settings.gmm_dim,
            "seed": settings.gmm_seed,
            "weights": data.weights.tolist(),
            "means": data.means.tolist(),
            "stds": data.stds.tolist(),
            "sigma_max": settings.sigma_max,
            "sigma_min": settings.gmm_sigma_min,
        }
        return Problem(name, data, description, settings.sigma_max, settings.gmm_sigma_min)
    raise SpecError(f"unknown problem {name!r}; choose from: {', '.join(PROBLEMS)}")


def _gauss_legendre_log(
    kappa_fn, var: np.ndarray, s_from: float, s_to: float, panels: int = 64
) -> np.ndarray:
    """``int_{log s_from}^{log s_to} kappa(e^u) e^{2u} / (var + e^{2u}) du`` per entry of ``var``
    (composite 20-point Gauss-Legendre; the integrand is smooth in ``u``)."""
    nodes, weights = np.polynomial.legendre.leggauss(20)
    edges = np.linspace(math.log(s_from), math.log(s_to), panels + 1)
    half = 0.5 * (edges[1:] - edges[:-1])
    mid = 0.5 * (edges[1:] + edges[:-1])
    u = (mid[:, None] + half[:, None] * nodes[None, :]).reshape(-1)
    w = (half[:, None] * weights[None, :]).reshape(-1)
    s2 = np.exp(2 * u)
    k = kappa_fn(np.exp(u))
    return ((k * s2)[:, None] / (var[None, :] + s2[:, None]) * w[:, None]).sum(0)


#: DOP853 tolerances of the mixture references (scipy's smallest rtol is 100 eps); ~5e-14 relative accuracy
REFERENCE_RTOL = 3e-14
REFERENCE_ATOL = 1e-15


def drift_flow(
    denoiser_np,
    kappa_fn,
    y0,
    s_from: float,
    s_to: float,
    *,
    rtol: float = REFERENCE_RTOL,
    atol: float = REFERENCE_ATOL,
) -> np.ndarray:
    """DOP853 solution in ``u = log s`` of the drift ODE ``dy/du = kappa(e^u) (y - D(y, e^u))``
    (noise-free ER SDE; the probability-flow ODE when ``kappa = 1``)."""
    from scipy.integrate import solve_ivp

    y0 = np.array(y0, dtype=np.float64)
    if s_from == s_to:
        return y0
    shape = y0.shape

    def rhs(u, flat):
        y = flat.reshape(shape)
        s = math.exp(u)
        return (float(kappa_fn(np.array(s))) * (y - denoiser_np(y, s))).ravel()

    u0, u1 = math.log(s_from), math.log(s_to)
    sol = solve_ivp(rhs, (u0, u1), y0.ravel(), method="DOP853", rtol=rtol, atol=atol)
    if not sol.success or sol.t[-1] != u1:
        raise RuntimeError(f"DOP853 failed on the drift ODE from s={s_from} to s={s_to}: {sol.message}")
    return sol.y[:, -1].reshape(shape)


class Reference:
    """Exact (or near machine precision) flow of the module's noise-free dynamics on a problem.

    ODE modules: ``GaussianData.exact_flow`` / :func:`reference_flow`. SDE modules: the drift ODE, in
    closed form up to a quadrature for Gaussian data (``y - m`` scales by ``exp(int kappa s^2/(v+s^2) du)``)
    and by :func:`drift_flow` for the mixture. Results are cached by ``(s_from, s_to)``.
    """

    def __init__(self, problem: Problem, module: ModuleType, kind: str):
        self.problem = problem
        self.kind = kind
        self.kappa = kappa_function(module) if kind == "sde" else None
        self._cache: dict = {}
        exact = problem.name == "gaussian"
        self.floor_relative = tolerances.EXACT_REFERENCE_FLOOR if exact else tolerances.DOP853_REFERENCE_FLOOR
        if problem.name == "gaussian":
            self.method = (
                "closed form" if kind == "ode" else "closed form, 64x20-point Gauss-Legendre in log s"
            )
        else:
            self.method = f"DOP853 in log s, rtol {REFERENCE_RTOL:g}"

    def flow(self, y0: np.ndarray, s_from: float, s_to: float) -> np.ndarray:
        key = (float(s_from), float(s_to))
        if key not in self._cache:
            self._cache[key] = self._flow(y0, *key)
        return self._cache[key]

    def _flow(self, y0, s_from, s_to):
        data = self.problem.data
        if self.kind == "ode":
            if isinstance(data, GaussianData):
                return data.exact_flow(y0, s_from, s_to)
            return reference_flow(
                data.denoiser_np, y0, s_from, s_to, rtol=REFERENCE_RTOL, atol=REFERENCE_ATOL
            )
        if isinstance(data, GaussianData):
            growth = np.exp(_gauss_legendre_log(self.kappa, data.var, s_from, s_to))
            return data.mean + (y0 - data.mean) * growth
        return drift_flow(data.denoiser_np, self.kappa, y0, s_from, s_to)


def schedule(settings: Settings, problem: Problem, n: int) -> torch.Tensor:
    """``n`` steps from the problem's sigma_max to its sigma_min (``n + 1`` values, no final zero)."""
    fn = log_uniform_sigmas if settings.schedule == "log-uniform" else karras_sigmas
    return torch.tensor(fn(n, problem.sigma_min, problem.sigma_max), dtype=torch.float64)


def step_size(problem: Problem, n: int) -> float:
    """Mean step in log s."""
    return math.log(problem.sigma_max / problem.sigma_min) / n


# --------------------------------------------------------------------------------------------------
# samplers: zero noise, the sub-step warm-up
# --------------------------------------------------------------------------------------------------


def _zero_noise(shape):
    def sampler(sigma, sigma_next):
        return torch.zeros(shape, dtype=torch.float64)

    return sampler


def substep_count(order: int, n: int) -> int:
    """Total refinement of the first steps needed by the warm-up of an order-``K`` sampler on ``n`` steps.

    The warm-up's very first step (one output) has a local error ``O(h_f^2)`` in its step ``h_f``; the starting
    values must be accurate to ``O(h^K)`` for the global order ``K`` to survive, so ``h_f`` must shrink like
    ``h^(K/2)``: ``2^K`` sub-steps at ``n = 8``, growing like ``(n/8)^((K-2)/2)``. (A fixed number of sub-steps
    only lowers the error constant of the start; the order stays 2.)
    """
    if order <= 2:
        return 2**order
    return math.ceil(2**order * max(1.0, n / 8) ** ((order - 2) / 2))


def warmup_levels(order: int, n: int) -> tuple[int, ...]:
    """Sub-steps per level of the recursive warm-up, outermost first.

    Each level splits the first ``K - 1`` steps of the level above; every level but the innermost uses
    ``max(8, K)`` sub-steps (more than ``K - 1``, so its history comes from the level below), the innermost the
    rest, so that the product is :func:`substep_count` (rounded up). Cost: ``(K - 1) * sum(levels)`` steps.
    """
    if order <= 1:
        return ()
    per_level = max(8, order)
    need = substep_count(order, n)
    levels = []
    while need > per_level:
        levels.append(per_level)
        need = math.ceil(need / per_level)
    return (*levels, need)


def refine(sigmas: torch.Tensor, substeps: int) -> torch.Tensor:
    """Split every interval of ``sigmas`` into ``substeps`` steps uniform in log s (end points kept)."""
    out = [sigmas[:1]]
    ramp = torch.linspace(0.0, 1.0, substeps + 1, dtype=torch.float64)[1:]
    for a, b in itertools.pairwise(sigmas):
        inner = torch.exp(torch.log(a) + ramp * (torch.log(b) - torch.log(a)))
        inner[-1] = b
        out.append(inner)
    return torch.cat(out)


def _warm_start(module, model, x, head, levels, noise_sampler, generator):
    """Predictions (history quantity) at ``head[0..K-2]`` and the state at ``head[K-1]``, from ``x`` at
    ``head[0]``: the module runs on ``head`` refined by ``levels[0]``, itself started by the next level."""
    m = len(head) - 1
    substeps = levels[0]
    fine = refine(head, substeps)
    seen: dict[int, torch.Tensor] = {}

    def keep(info):
        if info["i"] % substeps == 0:
            seen[info["i"] // substeps] = history_quantity(module, info["x"], info["denoised"], info["sigma"])

    history = None
    if len(levels) > 1:
        history, x = _warm_start(module, model, x, fine[: m + 1], levels[1:], noise_sampler, generator)
        seen[0] = history[0]  # the run below starts at fine[m] (m < substeps), after index 0
    state = module.sample(
        model, x, fine, noise_sampler=noise_sampler, generator=generator, callback=keep, history=history
    )
    return [seen[j] for j in range(m)], state


def warmup_sample(module: ModuleType, model, x, sigmas, *, noise_sampler=None, generator=None):
    """Sample with an order-preserving start: the first ``K - 1`` steps are taken by the module itself on
    sub-steps (recursively: :func:`warmup_levels`, total refinement :func:`substep_count`); its predictions at
    ``sigmas[0..K-2]`` (in the module's history quantity) then seed the ``history`` of the run on ``sigmas``
    from ``sigmas[K-1]`` on."""
    m = module.ORDER - 1
    if m == 0 or len(sigmas) - 1 <= m:
        return module.sample(model, x, sigmas, noise_sampler=noise_sampler, generator=generator)
    levels = warmup_levels(module.ORDER, len(sigmas) - 1)
    history, start = _warm_start(module, model, x, sigmas[: m + 1], levels, noise_sampler, generator)
    return module.sample(
        model, start, sigmas, noise_sampler=noise_sampler, generator=generator, history=history
    )


def run_sampler(module, model, x, sigmas, *, warmup: str = "none", noise_sampler=None):
    if warmup == "substep":
        return warmup_sample(module, model, x, sigmas, noise_sampler=noise_sampler)
    return module.sample(model, x, sigmas, noise_sampler=noise_sampler)


# --------------------------------------------------------------------------------------------------
# one fine Brownian path driving every grid
# --------------------------------------------------------------------------------------------------


class BrownianPath:
    """The exact noise terms of every sub-grid of a fine grid, from one set of fine noises.

    On the fine grid ``s_0 > ... > s_N`` step ``k`` injects ``N_k = std_k z_k`` (``std_k`` the module's own,
    ``z_k`` standard normal). The exact noise term of a coarse step made of fine steps ``k`` is each ``N_k``
    carried to the end of the coarse step by the homogeneous part of the update, i.e. multiplied by the
    product of the fine steps' ``ratio`` after it: ``sum_k phi(s_{i+1})/phi(s_{k+1}) N_k`` for the data form
    (``ratio = phi(s_{k+1})/phi(s_k)``), the plain sum for the noise form (``ratio = 1``). The sampler of a
    grid returns that combination divided by the coarse step's standard deviation (unit variance), so the
    module injects exactly the combination.
    """

    def __init__(self, module: ModuleType, fine: torch.Tensor, shape: tuple[int, ...], seed: int):
        self.module = module
        self.fine = fine
        self.n_fine = len(fine) - 1
        ratios, stds, _, _ = module.coefficient_table(fine)
        # prefix[k] = ratio_0 * ... * ratio_{k-1}: the homogeneous propagator from s_0 to s_k
        self.prefix = torch.cat(
            [torch.ones(1, dtype=torch.float64), torch.cumprod(torch.tensor(ratios, dtype=torch.float64), 0)]
        )
        generator = torch.Generator().manual_seed(int(seed))
        z = torch.randn((self.n_fine, *shape), generator=generator, dtype=torch.float64)
        self.noise = z * torch.tensor(stds, dtype=torch.float64).reshape(-1, *([1] * len(shape)))
        self.shape = shape

    def grid(self, n: int) -> torch.Tensor:
        if self.n_fine % n:
            raise ValueError(f"{n} steps is not a sub-grid of the {self.n_fine}-step fine grid")
        return self.fine[:: self.n_fine // n].clone()

    def noise_sampler(self, n: int):
        """``(sigmas, noise_sampler)`` for the sub-grid with ``n`` steps."""
        q = self.n_fine // n
        sigmas = self.grid(n)
        k = torch.arange(self.n_fine)
        end = (k // q + 1) * q
        weight = (self.prefix[end] / self.prefix[k + 1]).reshape(-1, *([1] * len(self.shape)))
        combined = (weight * self.noise).reshape(n, q, *self.shape).sum(1)
        _, stds, _, _ = self.module.coefficient_table(sigmas)
        index = {float(v): i for i, v in enumerate(sigmas[:-1].tolist())}

        def sampler(sigma, sigma_next):
            i = index[float(sigma)]
            return combined[i] / stds[i]

        return sigmas, sampler


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Study:
    """One convergence study: errors per step count, the fitted order and (if checked) the verdict."""

    kind: str  # method | as-used | as-used+warmup | strong | weak | weak+warmup
    problem: str
    steps: list[int]
    step_sizes: list[float]
    errors: list[float]
    fit: OrderFit | None
    fit_error: str | None
    claim: float | None
    tolerance: float | None
    reference: str
    seconds: float = 0.0
    floor: float = 0.0
    note: str = ""

    @property
    def order(self) -> float | None:
        return None if self.fit is None else self.fit.order

    @property
    def exact(self) -> bool:
        """Every error is at round-off level: the sampler is exact on this problem (no order to fit)."""
        return self.fit is None and all(e <= DEFAULT_FLOOR_FACTOR * self.floor for e in self.errors)

    @property
    def checked(self) -> bool:
        return self.claim is not None

    @property
    def passed(self) -> bool | None:
        """None if not checked; False if checked and short of the claim (or no order could be fitted).

        A study that is exact to round-off passes (no claim can be violated), flagged by :attr:`exact`.
        """
        if not self.checked:
            return None
        if self.exact:
            return True
        return self.fit is not None and self.fit.order >= self.claim - self.tolerance

    @property
    def label(self) -> str:
        return f"{self.kind} ({self.problem})"

    def as_dict(self) -> dict:
        fit = None
        if self.fit is not None:
            fit = {
                "order": self.fit.order,
                "local_orders": list(self.fit.local_orders),
                "used_steps": [self.steps[i] for i in self.fit.used],  # steps ascend = step sizes descend
                "floor": self.fit.floor,
                "intercept": self.fit.intercept,
                "residual": self.fit.residual,
            }
        return {
            "kind": self.kind,
            "problem": self.problem,
            "reference": self.reference,
            "steps": self.steps,
            "step_sizes": self.step_sizes,
            "errors": self.errors,
            "errors_by_steps": {str(n): e for n, e in zip(self.steps, self.errors)},
            "fit": fit,
            "fit_error": self.fit_error,
            "exact": self.exact,
            "floor": self.floor,
            "note": self.note,
            "claim": self.claim,
            "tolerance": self.tolerance,
            "checked": self.checked,
            "passed": self.passed,
            "seconds": self.seconds,
        }


@dataclasses.dataclass
class ModuleReport:
    name: str
    spec: dict
    spec_hash: str
    order: int
    dynamics: str
    source: str
    studies: list[Study]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(s.passed is not False for s in self.studies)

    def find(self, kind: str, problem: str | None = None) -> list[Study]:
        return [s for s in self.studies if s.kind == kind and (problem is None or s.problem == problem)]

    def failures(self) -> list[Study]:
        return [s for s in self.studies if s.passed is False]

    def as_dict(self) -> dict:
        return {
            "module": self.name,
            "spec": self.spec,
            "spec_hash": self.spec_hash,
            "claimed_order": self.order,
            "dynamics": self.dynamics,
            "source": self.source,
            "passed": self.passed,
            "seconds": self.seconds,
            "studies": [s.as_dict() for s in self.studies],
        }


def make_study(
    kind: str,
    problem: Problem,
    settings: Settings,
    errors: list[float],
    *,
    scale: float,
    floor_relative: float,
    claim: float | None,
    tolerance: float | None,
    reference: str,
    seconds: float = 0.0,
    note: str = "",
) -> Study:
    """Fit the order of ``errors`` over ``settings.steps`` and wrap everything in a :class:`Study`."""
    h = [step_size(problem, n) for n in settings.steps]
    floor = floor_relative * scale
    try:
        fit, fit_error = fit_order(h, errors, scale=scale, floor=floor), None
    except ValueError as error:
        fit, fit_error = None, str(error)
    return Study(
        kind=kind,
        problem=problem.name,
        steps=list(settings.steps),
        step_sizes=h,
        errors=[float(e) for e in errors],
        fit=fit,
        fit_error=fit_error,
        claim=claim,
        tolerance=tolerance if claim is not None else None,
        reference=reference,
        seconds=seconds,
        floor=floor,
        note=note,
    )


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

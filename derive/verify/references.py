"""The measurement settings, the problems with exact denoisers, their reference solutions, the schedules and
the warm-up of the history, and the fine Brownian path every step size shares."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from types import ModuleType

import numpy as np
import torch

from derive.errors import SpecError
from derive.options import WARMUPS, validate_steps
from derive.verify import tolerances
from derive.verify.loading import (
    history_quantity,
    kappa_function,
)
from derive.verify.problems import (
    GaussianData,
    GaussianMixture,
    karras_sigmas,
    log_uniform_sigmas,
    reference_flow,
)

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

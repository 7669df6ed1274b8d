"""Convergence orders of a sampler seen only through its interface (a :class:`~derive.verify.targets.Target`).

Exact starting values cannot be handed to someone else's multistep sampler, so its method is separated from its
start by the grid instead. Every study runs from the problem's ``s_max`` to its ``s_min`` and then takes the
sampler's own kind of final step (to 0, or below ``s_min``); the error is measured at ``s_min``, on the state
the sampler holds before that final step (:class:`~derive.verify.targets.Trajectory`), so final-step special
cases (``lower_order_final``, ``final_sigmas_type``, a last Euler step) never enter an order. They are the edge
sweep's business (:mod:`derive.verify.edges`).

``method``  a *graded* grid: ``log s_k = log s_max + (log s_min - log s_max) (k/n)^r``. The first step is
            ``O(n^-r)`` long, the step ratios stay bounded independently of ``n``, and the steps are smooth
            in ``k`` beyond the first few. A start of order ``q`` (its first steps use fewer stored outputs) has
            local errors ``O(n^-r(q+1))``; with ``r = max(2, ceil(claim/2))`` even a first-order (Euler) start
            contributes ``O(n^-2r)``, at most the claimed order, so the start cannot cap the measured order
            below the method's. The study is repeated with ``r + 1``: if the fitted order moves by more than
            the tolerance, the start still limits it and the row says so (the order is then a lower bound).
``as-used`` uniform in ``log s`` (the way the sampler is run), the start included.
``start``   single steps from the exact state at ``sqrt(s_max s_min)`` with log-steps ``0.4 / 2^j``: the local
            error has order ``q + 1`` for a first step of order ``q``. For a one-step method ``q`` is its
            order, an independent confirmation of ``method``; for a multistep method it is the order of its
            start, which says why ``as-used`` falls short.
``strong``  stochastic samplers: mean 2-norm of the difference to the same sampler on
            ``reference_factor x max(steps)`` steps, every run driven by one Brownian path ``W(s)`` (torchsde's
            exact ``BrownianInterval``; the noise of an interval ``(a, b)`` is ``(W(b) - W(a)) / sqrt|b - a|``,
            however the sampler splits its steps).
``weak``    stochastic samplers, Gaussian data, exact (no sampling error): the run is affine in the initial
            state and in the Brownian increments between the points where the sampler queries noise, so one
            batched run with a unit initial state in row 0 and one unit increment per row gives the output's
            mean and variance; error ``max |mean - m| + |var - (v + s_min^2)|``.

For a stochastic sampler ``method``, ``as-used`` and ``start`` run with the noise set to zero and are compared
with its drift ODE ``dy/dlog s = kappa (y - D(y, s))`` (``kappa`` from :meth:`Target.drift_kappa`: 2 for the
reverse SDE, ``1 + eta^2`` for k-diffusion's ancestral steps, ``1 + eta`` for its 2M/3M SDE); when ``kappa`` is
unknown those studies are not run and the row says why. As for derive's own modules, when the Gaussian drift
study is exact to round-off the deterministic studies are repeated on the Gaussian mixture.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from derive.errors import SpecError
from derive.verify import harness, tolerances
from derive.verify.orders import fit_order
from derive.verify.problems import GaussianData, log_uniform_sigmas, reference_flow
from derive.verify.targets import Target

__all__ = [
    "BLACKBOX_COARSE_STEPS",
    "BLACKBOX_STEPS",
    "BlackBoxReport",
    "graded_sigmas",
    "settings",
    "verify_target",
]

#: five halvings of the step; the black boxes are cheap per step
BLACKBOX_STEPS = (16, 32, 64, 128, 256, 512)
#: three halvings (CI)
BLACKBOX_COARSE_STEPS = (16, 32, 64, 128)
#: log-steps of the single-step (start) study
START_STEPS = tuple(0.4 / 2**j for j in range(6))
#: the graded and the more strongly graded method orders must agree to this (else: start-limited)
GRADING_AGREEMENT = 0.3


def settings(coarse: bool = False, **overrides) -> harness.Settings:
    """The black-box measurement settings (:class:`derive.verify.harness.Settings` with its own step counts)."""
    if coarse:
        return harness.Settings.coarse(**{"steps": BLACKBOX_COARSE_STEPS, **overrides})
    return harness.Settings(**{"steps": BLACKBOX_STEPS, **overrides})


def graded_sigmas(n: int, sigma_min: float, sigma_max: float, r: float) -> list[float]:
    """``n`` steps from ``sigma_max`` to ``sigma_min`` with ``log s`` graded like ``(k/n)^r`` (first step
    ``O(n^-r)``); ``n + 1`` values, end points exact."""
    u0, u1 = math.log(sigma_max), math.log(sigma_min)
    values = [math.exp(u0 + (u1 - u0) * (k / n) ** r) for k in range(n + 1)]
    values[0], values[-1] = float(sigma_max), float(sigma_min)
    return values


def _kappa_fn(kappa) -> Callable[[np.ndarray], np.ndarray]:
    if callable(kappa):
        return kappa
    value = float(kappa)
    return lambda s: np.full(np.shape(s), value, dtype=np.float64)


def drift_reference(
    problem: harness.Problem, kappa, y0: np.ndarray, s_from: float, s_to: float
) -> np.ndarray:
    """The drift ODE ``dy/dlog s = kappa (y - D)`` from ``s_from`` to ``s_to``: closed form for Gaussian data
    (up to a Gauss-Legendre quadrature when ``kappa != 1``), DOP853 for the mixture."""
    data = problem.data
    if not callable(kappa) and float(kappa) == 1.0:
        if isinstance(data, GaussianData):
            return data.exact_flow(y0, s_from, s_to)
        return reference_flow(
            data.denoiser_np, y0, s_from, s_to, rtol=harness.REFERENCE_RTOL, atol=harness.REFERENCE_ATOL
        )
    fn = _kappa_fn(kappa)
    if isinstance(data, GaussianData):
        growth = np.exp(harness._gauss_legendre_log(fn, data.var, s_from, s_to))
        return data.mean + (y0 - data.mean) * growth
    return harness.drift_flow(data.denoiser_np, fn, y0, s_from, s_to)


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BlackBoxReport:
    """Every study of one target, the claim and how each order was obtained."""

    name: str
    target: dict
    claimed: float | None
    dynamics: str
    kappa: str
    studies: list[harness.Study]
    how: dict
    seconds: float = 0.0
    crash: str = ""

    def find(self, kind: str) -> list[harness.Study]:
        return [s for s in self.studies if s.kind == kind]

    def order(self, kind: str) -> float | None:
        """The fitted order of the first non-exact study of ``kind`` (None when none could be fitted)."""
        studies = self.find(kind)
        for study in [s for s in studies if not s.exact] or studies:
            return study.order
        return None

    def exact(self, kind: str) -> bool:
        studies = self.find(kind)
        return bool(studies) and all(s.exact for s in studies)

    @property
    def passed(self) -> bool:
        """Every checked study meets its claim; a sampler that crashes before any study fails a claim it makes."""
        if self.crash and self.claimed is not None:
            return False
        return all(s.passed is not False for s in self.studies)

    def failures(self) -> list[harness.Study]:
        return [s for s in self.studies if s.passed is False]

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            **self.target,
            "claimed": self.claimed,
            "dynamics": self.dynamics,
            "kappa": self.kappa,
            "method": self.order("method"),
            "method_check": self.order("method+graded"),
            "as_used": self.order("as-used"),
            "start": self.order("start"),
            "strong": self.order("strong"),
            "weak": self.order("weak"),
            "how": self.how,
            "passed": self.passed,
            "crash": self.crash,
            "seconds": self.seconds,
            "studies": [s.as_dict() for s in self.studies],
        }


# --------------------------------------------------------------------------------------------------
# noise
# --------------------------------------------------------------------------------------------------


class _ZeroNoise:
    def __init__(self, shape):
        self.shape = tuple(shape)

    def __call__(self, a, b):
        return torch.zeros(self.shape, dtype=torch.float64)


class BrownianNoise:
    """Unit-variance noise of an interval ``(a, b)`` from one Brownian path ``W(s)`` on ``[0, s_max]``."""

    def __init__(self, shape, s_max: float, seed: int):
        import torchsde

        self.shape = tuple(shape)
        self.path = torchsde.BrownianInterval(
            t0=0.0, t1=float(s_max) * (1 + 1e-12), size=self.shape, dtype=torch.float64, entropy=int(seed)
        )

    def __call__(self, a: float, b: float) -> torch.Tensor:
        lo, hi = min(a, b), max(a, b)
        if hi <= lo:
            return torch.zeros(self.shape, dtype=torch.float64)
        increment = self.path(lo, hi)  # W(hi) - W(lo)
        sign = 1.0 if b > a else -1.0
        return sign * increment / math.sqrt(hi - lo)


class _Increments:
    """Noise as unit Brownian increments between the recorded query points, one batch row per increment."""

    def __init__(self, calls, d: int):
        points = sorted({p for call in calls for p in call})
        self.points = points
        self.rows = max(
            1, len(points)
        )  # row 0: the initial state; rows 1..: the increments between the points
        self.d = d
        self._cache: dict = {}

    def __call__(self, a: float, b: float) -> torch.Tensor:
        key = (a, b)
        if key not in self._cache:
            z = torch.zeros((self.rows, self.d), dtype=torch.float64)
            lo, hi = min(a, b), max(a, b)
            if hi > lo:
                sign = 1.0 if b > a else -1.0
                for j in range(len(self.points) - 1):
                    p, q = self.points[j], self.points[j + 1]
                    if p >= lo and q <= hi:
                        z[j + 1] = sign * math.sqrt((q - p) / (hi - lo))
            self._cache[key] = z
        return self._cache[key]


# --------------------------------------------------------------------------------------------------
# studies
# --------------------------------------------------------------------------------------------------


def _grid(target: Target, levels: list[float]) -> list[float]:
    return [*levels, target.final_value(levels[-1])]


def _state(trajectory, index: int, kind: str) -> torch.Tensor:
    if index not in trajectory.states:
        raise SpecError(f"the sampler's state at s_min is not a completed step ({kind} study)")
    return trajectory.states[index]


def deterministic_studies(target: Target, problem, st: harness.Settings, kappa, claim, note: str = ""):
    """``method`` (graded, and the check with stronger grading), ``as-used`` and ``start`` with zero noise."""
    y0 = problem.initial_states(st.batch, st.seed)
    x0 = torch.tensor(y0, dtype=torch.float64)
    s_max, s_min = float(problem.sigma_max), float(problem.sigma_min)
    y_end = drift_reference(problem, kappa, y0, s_max, s_min)
    scale = max(1.0, float(np.max(np.abs(y_end))))
    floor = (
        tolerances.EXACT_REFERENCE_FLOOR if problem.name == "gaussian" else tolerances.DOP853_REFERENCE_FLOOR
    )
    zero = _ZeroNoise(x0.shape)
    r = max(2, math.ceil((claim or 2) / 2))
    grids = {
        "method": lambda n: graded_sigmas(n, s_min, s_max, r),
        "method+graded": lambda n: graded_sigmas(n, s_min, s_max, r + 1),
        "as-used": lambda n: [float(v) for v in log_uniform_sigmas(n, s_min, s_max)],
    }
    what = (
        "probability-flow ODE" if not callable(kappa) and float(kappa) == 1.0 else f"drift ODE, kappa {kappa}"
    )
    studies = []
    for kind, grid in grids.items():
        t = time.perf_counter()
        errors = []
        for n in st.steps:
            try:
                out = _state(target.run(problem.model, x0, _grid(target, grid(n)), noise=zero), n, kind)
                errors.append(float(np.max(np.abs(out.numpy() - y_end))))
            except SpecError:
                raise
            except Exception as error:  # noqa: BLE001 - the peer crashed on this grid: recorded as an infinite error
                errors.append(math.inf)
                note = f"{type(error).__name__}: {error}"[:200]
        grading = {
            "method": f"graded r={r}",
            "method+graded": f"graded r={r + 1}",
            "as-used": "uniform in log s",
        }
        studies.append(
            harness.make_study(
                kind,
                problem,
                st,
                errors,
                scale=scale,
                floor_relative=floor,
                claim=claim if kind == "method" else None,
                tolerance=tolerances.ODE_ORDER_TOL,
                reference=f"{what}; {grading[kind]}; max-norm at s_min over {st.batch} starting points",
                seconds=time.perf_counter() - t,
                note=note,
            )
        )
    studies.append(start_study(target, problem, st, kappa, scale, floor))
    return studies


def start_study(
    target: Target, problem, st: harness.Settings, kappa, scale: float, floor: float
) -> harness.Study:
    """Single steps from the exact state at the geometric middle of the interval (local errors)."""
    t0 = time.perf_counter()
    y0 = problem.initial_states(st.batch, st.seed)
    s_max, s_min = float(problem.sigma_max), float(problem.sigma_min)
    s_a = math.sqrt(s_max * s_min)
    y_a = drift_reference(problem, kappa, y0, s_max, s_a)
    x_a = torch.tensor(y_a, dtype=torch.float64)
    errors = []
    for h in START_STEPS:
        s_b = s_a * math.exp(-h)
        exact = drift_reference(problem, kappa, y_a, s_a, s_b)
        try:
            trajectory = target.run(
                problem.model, x_a, [s_a, s_b, target.final_value(s_b)], noise=_ZeroNoise(x_a.shape)
            )
            out = trajectory.states.get(1)
            errors.append(math.nan if out is None else float(np.max(np.abs(out.numpy() - exact))))
        except Exception:  # noqa: BLE001 - recorded, not raised: a peer that cannot take one step
            errors.append(math.nan)
    try:
        fit, fit_error = fit_order(START_STEPS, errors, scale=scale, floor=floor * scale), None
    except ValueError as error:
        fit, fit_error = None, str(error)
    if fit is not None:
        # the local error has order q + 1 for a first step of order q: report q
        fit = dataclasses.replace(fit, order=fit.order - 1.0)
    return harness.Study(
        kind="start",
        problem=problem.name,
        steps=[1] * len(START_STEPS),
        step_sizes=list(START_STEPS),
        errors=errors,
        fit=fit,
        fit_error=fit_error,
        claim=None,
        tolerance=None,
        reference=f"one step from the exact state at s = {s_a:.4g}; order = local order - 1",
        seconds=time.perf_counter() - t0,
        floor=floor * scale,
    )


def strong_study(target: Target, problem, st: harness.Settings) -> harness.Study:
    t = time.perf_counter()
    s_max, s_min = float(problem.sigma_max), float(problem.sigma_min)
    y0 = problem.initial_states(st.paths, st.seed + 1)
    x0 = torch.tensor(y0, dtype=torch.float64)
    n_fine = st.reference_factor * max(st.steps)
    noise = BrownianNoise(x0.shape, s_max, st.seed + 2)

    def run(n):
        levels = [float(v) for v in log_uniform_sigmas(n, s_min, s_max)]
        return _state(target.run(problem.model, x0, _grid(target, levels), noise=noise), n, "strong")

    y_ref = run(n_fine)
    errors = [float((run(n) - y_ref).norm(dim=-1).mean()) for n in st.steps]
    return harness.make_study(
        "strong",
        problem,
        st,
        errors,
        scale=max(1.0, float(y_ref.abs().max())),
        floor_relative=tolerances.EXACT_REFERENCE_FLOOR,
        claim=None,
        tolerance=None,
        reference=f"same sampler on {n_fine} steps, one Brownian path W(s); mean 2-norm over {st.paths} paths",
        seconds=time.perf_counter() - t,
    )


def exact_moments(target: Target, data: GaussianData, levels: list[float], index: int):
    """Mean and variance per coordinate of the state at ``levels[index]`` for ``y_T ~ N(m, v + s_max^2)``."""
    d = data.d
    centred = GaussianData(np.zeros(d), data.var)
    probe = target.run(
        centred.denoiser_torch, torch.zeros(1, d, dtype=torch.float64), levels, noise=_ZeroNoise((1, d))
    )
    increments = _Increments(probe.noise_calls, d)
    x = torch.zeros((increments.rows, d), dtype=torch.float64)
    x[0] = 1.0
    out = _state(target.run(centred.denoiser_torch, x, levels, noise=increments), index, "weak").numpy()
    a, b = out[0], out[1:]
    var = a**2 * (data.var + levels[0] ** 2) + np.sum(b**2, axis=0)
    mean_x = torch.tensor(data.mean, dtype=torch.float64)[None]
    mean = _state(target.run(data.denoiser_torch, mean_x, levels, noise=_ZeroNoise((1, d))), index, "weak")
    return mean.numpy()[0], var


def weak_study(target: Target, problem, st: harness.Settings, claim: float | None = None) -> harness.Study:
    t = time.perf_counter()
    data = problem.data
    target_var = data.var + problem.sigma_min**2
    errors = []
    for n in st.steps:
        levels = _grid(
            target, [float(v) for v in log_uniform_sigmas(n, problem.sigma_min, problem.sigma_max)]
        )
        mean, var = exact_moments(target, data, levels, n)
        errors.append(float(np.max(np.abs(mean - data.mean) + np.abs(var - target_var))))
    return harness.make_study(
        "weak",
        problem,
        st,
        errors,
        scale=max(1.0, float(np.max(target_var))),
        floor_relative=tolerances.EXACT_REFERENCE_FLOOR,
        claim=claim,
        tolerance=tolerances.WEAK_ORDER_TOL,
        reference="exact: Brownian increments between the sampler's noise queries, one batch row each",
        seconds=time.perf_counter() - t,
    )


# --------------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------------


class _UnitNoise(_ZeroNoise):
    def __call__(self, a, b):
        return torch.ones(self.shape, dtype=torch.float64)


def _stochastic(target: Target, st: harness.Settings) -> bool:
    """Does the noise reach the output? (Two 4-step runs, with zero and with unit noise; a sampler that draws
    noise it then multiplies by zero, like SA-Solver with tau = 0, is deterministic.)"""
    problem = harness.make_problem("gaussian", st)
    levels = _grid(target, [float(v) for v in log_uniform_sigmas(4, problem.sigma_min, problem.sigma_max)])
    x = torch.zeros(1, problem.d, dtype=torch.float64)
    quiet = target.run(problem.model, x, levels, noise=_ZeroNoise((1, problem.d)))
    if not quiet.noise_calls:
        return False
    loud = target.run(problem.model, x, levels, noise=_UnitNoise((1, problem.d)))
    return any(not torch.equal(quiet.states[k], loud.states[k]) for k in quiet.states if k in loud.states)


def _how(report_studies, claim, r_note: dict) -> dict:
    by_kind = {}
    for s in report_studies:
        by_kind.setdefault(s.kind, []).append(s)

    def first(kind):
        studies = by_kind.get(kind, [])
        for s in [s for s in studies if not s.exact] or studies:
            return s
        return None

    method, check, start = first("method"), first("method+graded"), first("start")
    how = {}
    if method is None:
        how["method"] = r_note.get("method", "not measured")
        return how
    if method.exact:
        how["method"] = "exact to round-off on every problem measured: no order to fit"
    elif method.order is None:
        how["method"] = f"cannot decide: {method.fit_error or method.note}"
    else:
        text = f"graded grid ({method.reference.split(';')[1].strip()}), noise off"
        if (
            check is not None
            and check.order is not None
            and abs(check.order - method.order) > GRADING_AGREEMENT
        ):
            text += (
                f"; stronger grading gives {check.order:.2f}: the start still limits the order, "
                "which is a lower bound (cannot separate)"
            )
        else:
            text += "; stronger grading agrees: the start does not cap it"
        if (
            start is not None
            and start.order is not None
            and abs(start.order - method.order) <= GRADING_AGREEMENT
        ):
            text += f"; single steps from the exact state agree ({start.order:.2f}: a one-step method)"
        elif start is not None and start.order is not None:
            text += f"; its first step has order {start.order:.2f} (a lower-order start)"
        how["method"] = text
    return how


def verify_target(
    target: Target, st: harness.Settings | None = None, *, claimed: float | None = None, progress=None
):
    """Measure every order of ``target`` (see the module docstring); the method order is checked against
    ``claimed`` (or the target's own claim) with the tolerance of :mod:`derive.verify.tolerances`."""
    st = st or settings()
    claim = claimed if claimed is not None else target.claimed
    t0 = time.perf_counter()
    with harness.single_thread():
        try:
            stochastic = _stochastic(target, st)
        except SpecError:
            raise
        except Exception as error:  # noqa: BLE001 - a peer that crashes on a 4-step run: reported, not raised
            return BlackBoxReport(
                name=target.name,
                target=target.describe(),
                claimed=claim,
                dynamics="?",
                kappa="unknown",
                studies=[],
                how={
                    "method": f"cannot decide: it crashes on a 4-step run ({type(error).__name__}: {error})"[
                        :240
                    ]
                },
                seconds=time.perf_counter() - t0,
                crash=f"{type(error).__name__}: {error}"[:240],
            )
        kappa = target.drift_kappa() if stochastic else 1.0
        # an ancestral (split) step follows its drift ODE to first order only: its claim is on the weak order
        weak_claim = claim if stochastic and target.split_step() else None
        drift_claim = None if weak_claim is not None else claim
        studies: list[harness.Study] = []
        notes = {}
        problems = {p: harness.make_problem(p, st) for p in st.problems}
        if kappa is None:
            notes["method"] = (
                "not measured: the sampler's drift with the noise off is not known (give kappa in --config for "
                "a k-diffusion-convention function)"
            )
        else:
            for problem in problems.values():
                studies += deterministic_studies(target, problem, st, kappa, drift_claim)
                if progress:
                    progress(f"deterministic ({problem.name})")
            if "gmm" not in problems and any(s.exact and s.kind == "method" for s in studies):
                note = "the Gaussian drift study is exact to round-off; measured on gmm"
                studies += deterministic_studies(
                    target, harness.make_problem("gmm", st), st, kappa, drift_claim, note
                )
        if stochastic:
            gaussian = problems.get("gaussian") or harness.make_problem("gaussian", st)
            runs = [(strong_study, problem, {}) for problem in problems.values()]
            runs.append((weak_study, gaussian, {"claim": weak_claim}))
            for study, problem, extra in runs:
                try:
                    studies.append(study(target, problem, st, **extra))
                except SpecError:
                    raise
                except Exception as error:  # noqa: BLE001 - recorded in the report
                    notes[study.__name__] = f"crashes: {type(error).__name__}: {error}"[:240]
            if progress:
                progress("strong and weak")
    how = _how(studies, claim, notes)
    if weak_claim is not None:
        how["method"] += (
            "; an ancestral step, which follows its drift ODE to first order only with the noise off: "
            "the claim is checked on the weak order"
        )
    how["as-used"] = (
        "uniform in log s, the sampler's own start, noise off" if kappa is not None else "not measured"
    )
    how["start"] = "single steps from the exact state, local order - 1"
    if stochastic:
        how["strong"] = notes.get(
            "strong_study", "against its own limit on finer steps, one Brownian path W(s)"
        )
        how["weak"] = notes.get("weak_study", "exact mean and variance on Gaussian data")
    kappa_text = (
        "1"
        if kappa == 1.0
        else ("unknown" if kappa is None else ("s phi'/phi" if callable(kappa) else f"{kappa:g}"))
    )
    return BlackBoxReport(
        name=target.name,
        target=target.describe(),
        claimed=claim,
        dynamics="sde" if stochastic else "ode",
        kappa=kappa_text,
        studies=studies,
        how=how,
        seconds=time.perf_counter() - t0,
    )

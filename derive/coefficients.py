"""How each derived coefficient is evaluated in float64, decided by measurement against mpmath.

For the Taylor weight c_n (n >= 1) there are two evaluation paths:

* ``closed``: SymPy's closed form above a switch point t* on the relative step t = h/sigma, and the
  small-step series (:meth:`ERSDEStep.weight_series_coefficients`) below it. Closed forms of c_n cancel
  catastrophically as h -> 0 (c_n = O(h^{n+1}) is a difference of O(1) terms), so t* is the smallest t from
  which the float64 closed form keeps its relative error below :data:`TARGET`, and the series is truncated
  after the fewest terms that are accurate to :data:`TARGET` / 10 at t*.
* ``quadrature``: Gauss-Legendre in u = log s (s = e^u, ds = s du), used when SymPy has no closed form or the
  closed form cannot be made accurate. In u the integrand of every admissible phi ~ s^p is smooth on the
  whole step, and it has one sign, so there is no cancellation at any step size; the node count is the
  smallest one whose measured relative error is below :data:`TARGET` over the sampled range of steps.

All measurements use fixed grids and compare float64 (NumPy, same expression as emitted) with mpmath at
:data:`REFERENCE_DPS` digits, so the plan (and the generated file) is deterministic.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import mpmath
import numpy as np
import sympy as sp

from derive.quadrature import gauss_legendre
from derive.symbolic.ersde import ERSDEStep, closed_form_weight, h, s, sigma, sigma_next, v

#: Relative accuracy required of every float64 coefficient.
TARGET = 4e-15
REFERENCE_DPS = 34
REFERENCE_NODES = 96
#: Noise levels at which the coefficients are checked (normalized sigma).
SIGMA_GRID = (1e-4, 1e-2, 1.0, 1e2, 1e4)
#: Step ratios sigma_next / sigma at which the coefficients are checked.
RATIO_GRID = (1 - 1e-9, 1 - 1e-6, 1 - 1e-3, 0.99, 0.9, 0.7, 0.5, 0.3, 0.1, 1e-2, 1e-3, 1e-4)
#: Relative steps t = h / sigma for the closed-form switch point.
T_GRID = tuple(float(t) for t in np.geomspace(1e-12, 0.95, 56))
QUADRATURE_NODES = (4, 6, 8, 10, 12, 16, 20, 24, 28, 32, 40, 48, 64, 80)
MAX_SERIES_TERMS = 40


@dataclasses.dataclass(frozen=True)
class WeightPlan:
    """Evaluation of one Taylor weight c_n."""

    n: int
    kind: str  # "closed" or "quadrature"
    closed: sp.Expr | None = None
    series: tuple[sp.Expr, ...] = ()
    threshold: float = 0.0
    closed_error: float = 0.0
    series_error: float = 0.0


@dataclasses.dataclass(frozen=True)
class CoefficientPlan:
    step: ERSDEStep
    order: int
    weights: tuple[WeightPlan, ...]
    quadrature_nodes: int
    quadrature_error: float

    @property
    def uses_quadrature(self) -> bool:
        return any(w.kind == "quadrature" for w in self.weights)



def plan_coefficients(step: ERSDEStep, order: int) -> CoefficientPlan:
    weights = [WeightPlan(0, "closed", closed=closed_form_weight(step, 0))]
    need_quadrature = []
    closed_available = True
    for n in range(1, order):
        # (s - sigma)^(n-1)/phi contains 1/phi: without an antiderivative of 1/phi there is none for n > 1
        plan = _plan_closed(step, n) if closed_available else None
        if plan is None and n == 1:
            closed_available = closed_form_weight(step, 1) is not None
        if plan is None:
            need_quadrature.append(n)
            plan = WeightPlan(n, "quadrature")
        weights.append(plan)
    nodes, error = (0, 0.0)
    if need_quadrature:
        nodes, error = _choose_quadrature(step, tuple(need_quadrature))
    return CoefficientPlan(step, order, tuple(weights), nodes, error)


def log_ratio(a, b):
    """log(a/b) for a >= b > 0 without cancellation: log1p of the exact step when b > a/2, else log(a/b)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(all="ignore"):
        return np.where(2 * b > a, -np.log1p(-(a - b) / a), np.log(a / b))


def _points() -> list[tuple[float, float]]:
    return [(sg, sg * rho) for sg in SIGMA_GRID for rho in RATIO_GRID]


def _mp_quad_weight(step: ERSDEStep, n: int, a: float, b: float) -> mpmath.mpf:
    """c_n to ~30 digits: phi(b) * int_{-log(a/b)}^0 (integrand in v = log(s/a)) dv.

    A fixed 96-point Gauss-Legendre rule at :data:`REFERENCE_DPS` digits: the integrand is entire in v and the
    interval at most log(1e4) long, so the rule's error is far below 1e-30 (tests confirm it against the
    closed forms at 120 digits). mpmath's default tanh-sinh rule loses about ten digits on these integrands
    for steps of relative size 1e-9.
    """
    f = _mp_function(step, n)
    phi = _mp_phi(step.phi)
    nodes, weights = _mp_rule(REFERENCE_NODES, REFERENCE_DPS)
    with mpmath.workdps(REFERENCE_DPS):
        A, B = mpmath.mpf(a), mpmath.mpf(b)
        half = mpmath.log(A / B) / 2
        total = mpmath.fsum(wk * f(A, half * (xk - 1)) for xk, wk in zip(nodes, weights))
        return phi(B) * half * total


@functools.lru_cache(maxsize=None)
def _mp_rule(count: int, dps: int):
    with mpmath.workdps(dps):
        rule = mpmath.calculus.quadrature.GaussLegendre(mpmath.mp)
        # mpmath's rule of degree m has 3 * 2^(m-1) nodes; take the one with >= count nodes
        degree = 1
        while 3 * 2 ** (degree - 1) < count:
            degree += 1
        pairs = rule.calc_nodes(degree, mpmath.mp.prec)
        return tuple(x for x, _ in pairs), tuple(w for _, w in pairs)


@functools.lru_cache(maxsize=None)
def _mp_function(step: ERSDEStep, n: int):
    return sp.lambdify((sigma, v), step.weight_integrand_log(n), modules="mpmath")


@functools.lru_cache(maxsize=None)
def _mp_phi(phi: sp.Expr):
    return sp.lambdify(s, phi, modules="mpmath")


def _choose_quadrature(step: ERSDEStep, ns: tuple[int, ...]) -> tuple[int, float]:
    points = _points()
    reference = {(n, p): _mp_quad_weight(step, n, *p) for n in ns for p in points}
    integrands = {n: sp.lambdify((sigma, v), step.weight_integrand_log(n), "numpy") for n in ns}
    phi = sp.lambdify(s, step.phi, "numpy")
    a = np.array([p[0] for p in points])
    b = np.array([p[1] for p in points])
    for count in QUADRATURE_NODES:
        x, w = (np.array(val) for val in gauss_legendre(count))
        # log(a/b) from the exactly computed step h = a - b, then v = log(s/a) in [-L, 0]
        length = log_ratio(a, b)
        vv = -0.5 * length[:, None] * (1 - x[None, :])
        worst = 0.0
        for n in ns:
            with np.errstate(all="ignore"):
                value = phi(b) * 0.5 * length * (integrands[n](a[:, None], vv) @ w)
            exact = np.array([float(reference[(n, p)]) for p in points])
            err = np.max(np.abs(value - exact) / np.abs(exact))
            worst = max(worst, float(err))
        if worst <= TARGET:
            # the error is at rounding level here; a margin of a quarter more nodes keeps the choice
            # away from the rounding noise (and so the same on every machine)
            margin = next(c for c in QUADRATURE_NODES if c >= count * 5 // 4)
            return margin, worst
    raise ArithmeticError(f"Gauss-Legendre quadrature did not reach {TARGET:g} with {QUADRATURE_NODES[-1]} nodes")


def _plan_closed(step: ERSDEStep, n: int) -> WeightPlan | None:
    closed = closed_form_weight(step, n)
    if closed is None:
        return None
    f64 = sp.lambdify((sigma, sigma_next), closed, "numpy", cse=True)
    fmp = sp.lambdify((sigma, sigma_next), closed, "mpmath")
    errors = np.zeros(len(T_GRID))
    exacts = {}
    for i, t in enumerate(T_GRID):
        worst = 0.0
        for sg in SIGMA_GRID:
            nxt = sg * (1 - t)
            # the closed form loses (n + 1) log10(1/t) digits to cancellation: evaluate with that many more
            with mpmath.workdps(REFERENCE_DPS + int((n + 1) * math.log10(1 / t)) + 5):
                exact = +fmp(mpmath.mpf(sg), mpmath.mpf(nxt))
            exacts[(t, sg)] = exact
            with np.errstate(all="ignore"):
                value = float(f64(np.float64(sg), np.float64(nxt)))
            err = abs(value - float(exact)) / abs(float(exact)) if exact != 0 else abs(value)
            worst = max(worst, err if math.isfinite(err) else math.inf)
        errors[i] = worst
    ok = errors <= TARGET
    if not ok[-1]:
        return None
    first = len(T_GRID) - 1
    while first > 0 and ok[first - 1]:
        first -= 1
    threshold = T_GRID[first]
    if first == 0:
        return WeightPlan(n, "closed", closed=closed, threshold=0.0, closed_error=float(errors.max()))
    coefficients = step.weight_series_coefficients(n, MAX_SERIES_TERMS)
    a_mp = [sp.lambdify(sigma, c, "mpmath") for c in coefficients]
    phi_mp = sp.lambdify(s, step.phi, "mpmath")
    for terms in range(1, MAX_SERIES_TERMS + 1):
        worst = 0.0
        for sg in SIGMA_GRID:
            nxt = sg * (1 - threshold)
            with mpmath.workdps(REFERENCE_DPS + 20):
                H = mpmath.mpf(sg) - mpmath.mpf(nxt)
                series = phi_mp(mpmath.mpf(nxt)) * sum(a_mp[m](mpmath.mpf(sg)) * H ** (n + m + 1) for m in range(terms))
                exact = exacts[(threshold, sg)]
                worst = max(worst, float(abs(series - exact) / abs(exact)))
        if worst <= TARGET / 10:
            return WeightPlan(
                n,
                "closed",
                closed=closed,
                series=coefficients[:terms],
                threshold=threshold,
                closed_error=float(errors[first:].max()),
                series_error=worst,
            )
    return None


def series_expression(plan: WeightPlan) -> sp.Expr:
    """phi(sigma_next) * h^(n+1) * sum_m a_m h^m in Horner form, a function of sigma, sigma_next, h."""
    raise NotImplementedError

"""How each derived coefficient is evaluated in float64, decided by measurement against mpmath.

Every quantity the sampler needs per step -- the Taylor weights c_n and the noise variance v -- is a
definite integral over the step with a one-signed integrand,

    c_n = phi(s') int_{s'}^{s} phi'/phi^2 (x - s)^n / n! dx,   v = phi(s')^2 int_{s'}^{s} h^2 / phi^2 dx,

so two evaluation paths exist:

* ``closed``: SymPy's closed form. Closed forms of these integrals are differences of O(1) terms that
  cancel as the step h -> 0 (c_n = O(h^{n+1})). The closed form is used for relative steps t = h/s at and
  above the smallest t from which its float64 relative error stays below :data:`TARGET`; below that switch
  point the weights use their small-step series (the integrand expanded about s and integrated term by term,
  truncated after the fewest terms accurate to TARGET/10 at the switch).
* ``quadrature``: Gauss-Legendre in v = log(x/s) when SymPy finds no closed form or the closed form cannot be
  made accurate. In v the integrands of admissible phi (~ s^p near 0) are smooth over the whole step and of
  one sign, so there is no cancellation at any step size; the node count is the smallest whose measured error
  is below TARGET over the sampled steps, plus a quarter as a margin.

All measurements use fixed grids and compare float64 (NumPy, same expressions as emitted) with mpmath, so the
plan -- and the generated file -- is the same on every run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import mpmath
import numpy as np
import sympy as sp

from derive import cache
from derive.quadrature import gauss_legendre
from derive.symbolic.ersde import (
    ERSDEStep,
    closed_form_noise_variance,
    closed_form_noise_weight,
    closed_form_weight,
    s,
    series_coefficients,
    sigma,
    sigma_next,
    v,
)

#: Relative accuracy required of every float64 coefficient.
TARGET = 4e-15
REFERENCE_DPS = 30
REFERENCE_NODES = 48
#: Noise levels at which the coefficients are checked (normalized sigma).
SIGMA_GRID = (1e-4, 1e-2, 1.0, 1e2, 1e4)
#: Step ratios sigma_next / sigma at which quadrature is checked.
RATIO_GRID = (1 - 1e-9, 1 - 1e-6, 1 - 1e-3, 0.99, 0.9, 0.7, 0.5, 0.3, 0.1, 1e-2, 1e-3, 1e-4)
#: Relative steps t = h / sigma at which closed forms are checked.
T_GRID = tuple(float(t) for t in np.geomspace(1e-12, 0.95, 56))
QUADRATURE_NODES = (4, 6, 8, 10, 12, 16, 20, 24, 28, 32, 40, 48, 64, 80)
MAX_SERIES_TERMS = 40
#: A generated module uses fewer stored outputs on a step whose weights amplify perturbations of them by more
#: than this multiple of the equal-step Adams-Bashforth constant (see interpolation.adams_bashforth_lebesgue).
#: Measured over the catalogue on Karras (rho = 7) and log-uniform schedules with 3-1000 steps and sigma_max
#: from 1 to 1000, the largest multiple is 8.4 (lambda-variable order 4, 5 Karras steps from 1000): none of
#: them is affected. A step 15 x longer than the previous ones in an order-3 noise-form SDE reaches 48.
HISTORY_AMPLIFICATION_FACTOR = 10


@dataclasses.dataclass(frozen=True)
class Quantity:
    """One per-step coefficient: prefactor(s, s') * int_{-log(s/s')}^0 integrand(s, v) dv, and how to evaluate it."""

    name: str
    label: str
    prefactor: sp.Expr
    integrand: sp.Expr
    closed: sp.Expr | None
    #: series: value = prefactor * h^series_power * sum_m series[m] h^m (weights only)
    series_power: int | None = None
    #: the density rho of the weight integral int rho(x) (x - sigma)^n/n! dx, for its small-step series
    density: sp.Expr | None = None
    kind: str = "quadrature"
    series: tuple[sp.Expr, ...] = ()
    threshold: float = 0.0
    closed_error: float = 0.0
    series_error: float = 0.0


@dataclasses.dataclass(frozen=True)
class CoefficientPlan:
    step: ERSDEStep
    order: int
    weights: tuple[Quantity, ...]
    noise_variance: Quantity
    quadrature_nodes: int
    quadrature_error: float
    #: the Adams method integrates the Lagrange basis with the quadrature rule (sized for every c_n integrand)
    direct: bool = False

    @property
    def quantities(self) -> tuple[Quantity, ...]:
        return (*self.weights, self.noise_variance)

    @property
    def uses_quadrature(self) -> bool:
        return self.direct or any(q.kind == "quadrature" for q in self.quantities)


def weight_quantity(
    step: ERSDEStep, n: int, form: str = "data", closed: bool = True, variable: str = "s"
) -> Quantity:
    """c_n (data form: x0 weights) or e_n (noise form: eps weights), expanded in ``variable``.

    Closed forms and their small-step series are derived for the expansion in s. In lambda (n >= 1) only the
    quadrature is used: its closed forms (phi_k-type functions of the log step) cancel for short steps, and
    the log-space rule is accurate at every step length.
    """
    use_closed = closed and (variable == "s" or n == 0)
    if form == "data":
        return Quantity(
            name=f"c{n}",
            label=f"c_{n}",
            prefactor=step.phi.subs(s, sigma_next),
            integrand=step.weight_integrand_log(n, variable),
            closed=closed_form_weight(step, n) if use_closed else None,
            series_power=n + 1,
            density=step.weight_density,
        )
    return Quantity(
        name=f"e{n}",
        label=f"e_{n}",
        prefactor=sp.Integer(1),
        integrand=step.noise_integrand_log(n, variable),
        closed=closed_form_noise_weight(step, n) if use_closed else None,
        series_power=n + 1,
        density=step.noise_density,
    )


def variance_quantity(step: ERSDEStep, form: str = "data") -> Quantity:
    """Data form: v = phi(s')^2 int h^2/phi^2 dx; noise form: w = int h^2 dx; h^2 = 2x (x phi'/phi - 1)."""
    if form == "data":
        h2_over_phi2 = 2 * s * step.noise_fraction / step.phi**2
        return Quantity(
            name="noise_variance",
            label="v",
            prefactor=step.phi.subs(s, sigma_next) ** 2,
            integrand=(s * h2_over_phi2).subs(s, sigma * sp.exp(v)),
            closed=step.noise_variance,
        )
    return Quantity(
        name="noise_variance",
        label="w",
        prefactor=sp.Integer(1),
        integrand=step.noise_form_variance_integrand_log(),
        closed=closed_form_noise_variance(step),
    )


def plan_coefficients(
    step: ERSDEStep, order: int, form: str = "data", variable: str = "s", direct: bool = False
) -> CoefficientPlan:
    """How each coefficient is evaluated. ``direct`` (the Adams method): the module also integrates the
    Lagrange basis polynomials by quadrature, so the rule is sized for every c_n integrand, n < order (the
    basis polynomials are combinations of them)."""
    weights = []
    closed_available = True
    for n in range(order):
        quantity = weight_quantity(step, n, form, closed=closed_available or n == 0, variable=variable)
        if form == "data" and n == 1 and quantity.closed is None:
            # (x - s)^(n-1)/phi contains 1/phi: without an antiderivative of 1/phi there is none for n > 1
            closed_available = False
        if form == "noise" and quantity.closed is None:
            closed_available = False
        weights.append(_plan_closed(step, quantity))
    variance = _plan_closed(step, variance_quantity(step, form), allow_series=False)
    need = tuple(q for q in (*weights, variance) if q.kind == "quadrature" and not _is_zero(q))
    if direct:
        need += tuple(weight_quantity_quadrature_only(step, n, form, variable) for n in range(order))
    nodes, error = _choose_quadrature(step, need) if need else (0, 0.0)
    return CoefficientPlan(step, order, tuple(weights), variance, nodes, error, direct)


def weight_quantity_quadrature_only(
    step: ERSDEStep, n: int, form: str = "data", variable: str = "s"
) -> Quantity:
    return weight_quantity(step, n, form, closed=False, variable=variable)


def _is_zero(q: Quantity) -> bool:
    return q.closed is not None and q.closed == 0


def log_ratio(a, b):
    """log(a/b) for a >= b > 0 without cancellation: log1p of the exact step when b > a/2, else log(a/b)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(all="ignore"):
        return np.where(2 * b > a, -np.log1p(-(a - b) / a), np.log(a / b))


def _points() -> list[tuple[float, float]]:
    return [(sg, sg * rho) for sg in SIGMA_GRID for rho in RATIO_GRID]


def mp_quantity(q: Quantity, a: float, b: float) -> mpmath.mpf:
    """prefactor * integral to ~28 digits with a fixed 48-point Gauss-Legendre rule at 30 digits.

    The integrand is entire in v and the interval at most log(1e4) long, so the rule's error is far below
    1e-30 (tests confirm it against closed forms at 120 digits). mpmath's default tanh-sinh rule loses about
    ten digits on these integrands for steps of relative size 1e-9, so it is not used.
    """
    f, pre = _mp_functions(q.integrand, q.prefactor)
    nodes, weights = _mp_rule(REFERENCE_NODES, REFERENCE_DPS)
    with mpmath.workdps(REFERENCE_DPS):
        A, B = mpmath.mpf(a), mpmath.mpf(b)
        half = mpmath.log(A / B) / 2
        total = mpmath.fsum(wk * f(A, half * (xk - 1)) for xk, wk in zip(nodes, weights))
        return pre(A, B) * half * total


def _mp_quad_weight(
    step: ERSDEStep, n: int, a: float, b: float, form: str = "data", variable: str = "s"
) -> mpmath.mpf:
    """c_n (or e_n) by :func:`mp_quantity` (an independent reference for tests and checks)."""
    return mp_quantity(weight_quantity_quadrature_only(step, n, form, variable), a, b)


def mp_noise_variance(step: ERSDEStep, a: float, b: float, form: str = "data") -> mpmath.mpf:
    q = variance_quantity(step, form)
    return mp_quantity(dataclasses.replace(q, closed=None), a, b)


@functools.lru_cache(maxsize=None)
def _mp_rule(count: int, dps: int):
    with mpmath.workdps(dps):
        rule = mpmath.calculus.quadrature.GaussLegendre(mpmath.mp)
        degree = 1  # mpmath's rule of degree m has 3 * 2^(m-1) nodes
        while 3 * 2 ** (degree - 1) < count:
            degree += 1
        pairs = rule.calc_nodes(degree, mpmath.mp.prec)
        return tuple(x for x, _ in pairs), tuple(w for _, w in pairs)


@functools.lru_cache(maxsize=None)
def _mp_functions(integrand: sp.Expr, prefactor: sp.Expr) -> tuple[Callable, Callable]:
    return (
        sp.lambdify((sigma, v), integrand, modules="mpmath"),
        sp.lambdify((sigma, sigma_next), prefactor, modules="mpmath"),
    )


def _choose_quadrature(step: ERSDEStep, quantities: tuple[Quantity, ...]) -> tuple[int, float]:
    """The smallest node count whose error is below TARGET for every quantity, plus a quarter as a margin.

    Counts are tried in increasing order and larger rules are never built (the costly part is the 30-digit
    reference values, computed once per quantity, and the mpmath roots of the larger rules)."""
    for count in QUADRATURE_NODES:
        worst = max(_quadrature_error(q.integrand, q.prefactor, count) for q in quantities)
        if worst <= TARGET:
            # the error is at rounding level here; the margin keeps the choice away from rounding noise
            margin = next(c for c in QUADRATURE_NODES if c >= count * 5 // 4)
            return margin, worst
    raise ArithmeticError(
        f"Gauss-Legendre quadrature did not reach {TARGET:g} with {QUADRATURE_NODES[-1]} nodes"
    )


@functools.lru_cache(maxsize=None)
def _quadrature_reference(integrand: sp.Expr, prefactor: sp.Expr):
    """The sampled steps (a, b), their log lengths, the 30-digit reference values and float64 callables."""
    points = _points()
    a = np.array([p[0] for p in points])
    b = np.array([p[1] for p in points])
    key = (
        sp.srepr(integrand),
        sp.srepr(prefactor),
        repr(points),
        f"{REFERENCE_DPS}/{REFERENCE_NODES}",
        mpmath.__version__,
    )
    values = cache.load("reference", key)
    if not (
        isinstance(values, list) and len(values) == len(points) and all(isinstance(x, float) for x in values)
    ):
        probe = Quantity("probe", "probe", prefactor, integrand, None)
        values = [float(mp_quantity(probe, *p)) for p in points]
        cache.store("reference", key, values)
    exact = np.array(values)
    f = sp.lambdify((sigma, v), integrand, "numpy")
    pre = sp.lambdify((sigma, sigma_next), prefactor, "numpy")
    return a, b, log_ratio(a, b), exact, f, pre


@functools.lru_cache(maxsize=None)
def _quadrature_error(integrand: sp.Expr, prefactor: sp.Expr, count: int) -> float:
    """Max relative float64 error of the ``count``-point Gauss-Legendre rule over the sampled steps."""
    a, b, length, exact, f, pre = _quadrature_reference(integrand, prefactor)
    x, w = (np.array(val) for val in gauss_legendre(count))
    vv = -0.5 * length[:, None] * (1 - x[None, :])
    with np.errstate(all="ignore"):
        value = pre(a, b) * 0.5 * length * (f(a[:, None], vv) @ w)
    return float(np.max(np.abs(value - exact) / np.abs(exact)))


@functools.lru_cache(maxsize=None)
def _plan_closed(step: ERSDEStep, q: Quantity, *, allow_series: bool = True) -> Quantity:
    """Measure the closed form; keep it (with a series below the switch point) or fall back to quadrature."""
    if q.closed is None:
        return q
    if q.closed == 0:
        return dataclasses.replace(q, kind="closed")
    f64 = sp.lambdify((sigma, sigma_next), q.closed, "numpy", cse=True)
    fmp = sp.lambdify((sigma, sigma_next), q.closed, "mpmath")
    errors = np.zeros(len(T_GRID))
    exacts = {}
    for i, t in enumerate(T_GRID):
        worst = 0.0
        for sg in SIGMA_GRID:
            nxt = sg * (1 - t)
            # the closed form may lose up to (power) log10(1/t) digits to cancellation: evaluate with more
            extra = int(((q.series_power or 2) + 1) * math.log10(1 / t)) + 5
            with mpmath.workdps(REFERENCE_DPS + extra):
                exact = +fmp(mpmath.mpf(sg), mpmath.mpf(nxt))
            exacts[(t, sg)] = exact
            with np.errstate(all="ignore"):
                value = float(f64(np.float64(sg), np.float64(nxt)))
            err = abs(value - float(exact)) / abs(float(exact)) if exact != 0 else abs(value)
            worst = max(worst, err if math.isfinite(err) else math.inf)
        errors[i] = worst
    ok = errors <= TARGET
    if not ok[-1]:
        return q
    first = len(T_GRID) - 1
    while first > 0 and ok[first - 1]:
        first -= 1
    if first == 0:
        return dataclasses.replace(q, kind="closed", closed_error=float(errors.max()))
    if not allow_series or q.series_power is None:
        return q
    threshold = T_GRID[first]
    n = q.series_power - 1
    coefficients = series_coefficients(q.density, n, MAX_SERIES_TERMS)
    a_mp = [sp.lambdify(sigma, c, "mpmath") for c in coefficients]
    pre_mp = sp.lambdify((sigma, sigma_next), q.prefactor, "mpmath")
    for terms in range(1, len(coefficients) + 1):
        worst = 0.0
        for sg in SIGMA_GRID:
            nxt = sg * (1 - threshold)
            with mpmath.workdps(REFERENCE_DPS + 20):
                H = mpmath.mpf(sg) - mpmath.mpf(nxt)
                series = pre_mp(mpmath.mpf(sg), mpmath.mpf(nxt)) * sum(
                    a_mp[m](mpmath.mpf(sg)) * H ** (n + m + 1) for m in range(terms)
                )
                exact = exacts[(threshold, sg)]
                worst = max(worst, float(abs(series - exact) / abs(exact)))
        if worst <= TARGET / 10:
            return dataclasses.replace(
                q,
                kind="closed",
                series=coefficients[:terms],
                threshold=threshold,
                closed_error=float(errors[first:].max()),
                series_error=worst,
            )
    return q

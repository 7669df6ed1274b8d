"""How each derived coefficient is evaluated in float64, decided by computation in mpmath alone.

Every quantity the sampler needs per step -- the Taylor weights c_n and the noise variance v -- is a
definite integral over the step with a one-signed integrand,

    c_n = phi(s') int_{s'}^{s} phi'/phi^2 (x - s)^n / n! dx,   v = phi(s')^2 int_{s'}^{s} h^2 / phi^2 dx,

so two evaluation paths exist:

* ``closed``: SymPy's closed form. Closed forms of these integrals are differences of O(1) terms that
  cancel as the step h -> 0 (c_n = O(h^{n+1})). The closed form is used for relative steps t = h/s at and
  above the smallest t from which its float64 rounding error stays below :data:`ROUNDING_TARGET`; below that
  switch point the weights use their small-step series (the integrand expanded about s and integrated term by
  term, truncated after the fewest terms accurate to TARGET/10 at the switch).
* ``quadrature``: Gauss-Legendre in v = log(x/s) when SymPy finds no closed form or the closed form cannot be
  made accurate. In v the integrands of admissible phi (~ s^p near 0) are smooth over the whole step and of
  one sign, so there is no cancellation at any step size; the node count is the smallest whose truncation
  error is below :data:`TRUNCATION_TARGET` over the sampled steps, plus a quarter as a margin.

Nothing here measures the running machine. The float64 rounding error of a closed form is that of correctly
rounded 53-bit arithmetic, emulated in mpmath (each operation and elementary function rounded once); the
quadrature's truncation error is computed in mpmath at 30 digits; every value of every subexpression is
checked against float64's range in mpmath. Decisions and the figures a module prints are therefore a function
of the spec alone: the same on every CPU, SIMD code path and libm. The targets leave room for what emulation
does not see -- elementary functions a few ulp from correctly rounded, and an operation order other than the
printed one -- so the float64 coefficients stay within :data:`TARGET`, which the tests measure on the machine
that runs them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable

import mpmath
import sympy as sp

from derive import cache
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


def _geometric_grid(first: str, last: str, count: int) -> tuple[float, ...]:
    """``count`` points from ``first`` to ``last`` in geometric progression, computed in mpmath and rounded once."""
    with mpmath.workdps(40):
        a, b = mpmath.mpf(first), mpmath.mpf(last)
        return tuple(float(a * (b / a) ** (mpmath.mpf(i) / (count - 1))) for i in range(count))


#: Relative accuracy required of every float64 coefficient (measured by the tests on the running machine).
TARGET = 4e-15
#: Largest rounding error a closed form may have in emulated (correctly rounded) float64: a quarter of TARGET,
#: room for elementary functions a few ulp from correctly rounded.
ROUNDING_TARGET = 1e-15
#: Largest truncation error of the quadrature rule (computed in mpmath); its float64 rounding (a one-signed sum
#: with positive weights) adds at most a few ulp.
TRUNCATION_TARGET = 1e-15
#: Bits of the emulated float64 arithmetic.
FLOAT64_BITS = 53
FLOAT64_MAX = 1.7976931348623157e308
FLOAT64_MIN_NORMAL = 2.2250738585072014e-308
REFERENCE_DPS = 30
REFERENCE_NODES = 48
#: nodes of the reference rule that sizes the quadrature: well above every rule it can accept
PLAN_REFERENCE_NODES = 96
#: Noise levels at which the coefficients are checked (normalized sigma).
SIGMA_GRID = (1e-4, 1e-2, 1.0, 1e2, 1e4)
#: The longest step a generated module accepts, as the smallest ratio sigma_next / sigma (a log-step of
#: log(1e9) = 20.7: beyond any sampling schedule, whose whole range is a log-step of about 8-14). Every
#: coefficient is verified up to it; a module refuses a longer step (a final step to sigma = 0 excepted) with
#: this range in the message, rather than return coefficients no one has checked.
MIN_STEP_RATIO = 1e-9
#: Step ratios sigma_next / sigma at which quadrature is checked.
RATIO_GRID = (
    1 - 1e-9,
    1 - 1e-6,
    1 - 1e-3,
    0.99,
    0.9,
    0.7,
    0.5,
    0.3,
    0.1,
    1e-2,
    1e-3,
    1e-4,
    1e-6,
    MIN_STEP_RATIO,
)
#: Long steps (ratios sigma_next / sigma) at which a closed form's rounding error is checked besides T_GRID.
LONG_RATIO_GRID = (1e-2, 1e-4, 1e-6, MIN_STEP_RATIO)
#: Relative steps t = h / sigma at which closed forms are checked.
T_GRID = _geometric_grid("1e-12", "0.95", 56)
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
    #: why a closed form that exists is not used (evaluated by quadrature instead)
    fallback: str = "the closed form cancels for short steps"
    series_error: float = 0.0


@dataclasses.dataclass(frozen=True)
class CoefficientPlan:
    step: ERSDEStep
    order: int
    weights: tuple[Quantity, ...]
    noise_variance: Quantity
    quadrature_nodes: int
    #: truncation error (mpmath) of the smallest rule that passed, with ``truncation_nodes`` nodes
    quadrature_error: float
    #: the Adams method integrates the Lagrange basis with the quadrature rule (sized for every c_n integrand)
    direct: bool = False
    truncation_nodes: int = 0

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
    nodes, passing, error = _choose_quadrature(step, need) if need else (0, 0, 0.0)
    return CoefficientPlan(step, order, tuple(weights), variance, nodes, error, direct, passing)


def weight_quantity_quadrature_only(
    step: ERSDEStep, n: int, form: str = "data", variable: str = "s"
) -> Quantity:
    return weight_quantity(step, n, form, closed=False, variable=variable)


def _is_zero(q: Quantity) -> bool:
    return q.closed is not None and q.closed == 0


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


@functools.cache
def _mp_rule(count: int, dps: int):
    with mpmath.workdps(dps):
        rule = mpmath.calculus.quadrature.GaussLegendre(mpmath.mp)
        degree = 1  # mpmath's rule of degree m has 3 * 2^(m-1) nodes
        while 3 * 2 ** (degree - 1) < count:
            degree += 1
        pairs = rule.calc_nodes(degree, mpmath.mp.prec)
        return tuple(x for x, _ in pairs), tuple(w for _, w in pairs)


@functools.cache
def _mp_functions(integrand: sp.Expr, prefactor: sp.Expr) -> tuple[Callable, Callable]:
    return (
        sp.lambdify((sigma, v), integrand, modules="mpmath", cse=True),
        sp.lambdify((sigma, sigma_next), prefactor, modules="mpmath", cse=True),
    )


# ---- float64 range and rounding, computed in mpmath ----------------------------------------------------------
def _in_float64_range(value) -> bool:
    """A real value that float64 holds as a normal number (or exactly zero)."""
    if isinstance(value, (int, float)):
        value = mpmath.mpf(value)
    if isinstance(value, mpmath.mpc):
        if value.imag != 0:
            return False
        value = value.real
    if not isinstance(value, mpmath.mpf) or not mpmath.isfinite(value):
        return False
    return value == 0 or FLOAT64_MIN_NORMAL <= abs(value) <= FLOAT64_MAX


@functools.cache
def _subexpression_function(expr: sp.Expr, args: tuple[sp.Symbol, ...]) -> Callable:
    """One mpmath function returning every non-atomic subexpression of ``expr`` (sorted, so deterministic)."""
    parts = sorted(
        {node for node in sp.preorder_traversal(expr) if not node.is_Atom}, key=sp.default_sort_key
    )
    return sp.lambdify(args, parts or [expr], modules="mpmath")


def _range_failure(expr: sp.Expr, args: tuple[sp.Symbol, ...], points) -> tuple | None:
    """The first point at which some subexpression leaves float64's normal range (evaluated at 30 digits)."""
    f = _subexpression_function(expr, args)
    with mpmath.workdps(REFERENCE_DPS):
        for point in points:
            try:
                values = f(*(mpmath.mpf(x) for x in point))
            except (ZeroDivisionError, ValueError, OverflowError):
                return point
            if not all(_in_float64_range(value) for value in values):
                return point
    return None


def _emulated_float64(f: Callable, *args: float):
    """``f`` evaluated in correctly rounded 53-bit arithmetic (mpmath), or None if it fails there."""
    with mpmath.workprec(FLOAT64_BITS):
        try:
            value = f(*(mpmath.mpf(x) for x in args))
        except (ZeroDivisionError, ValueError, OverflowError):
            return None
    return value if _in_float64_range(value) else None


# ---- quadrature -------------------------------------------------------------------------------------------
def _choose_quadrature(step: ERSDEStep, quantities: tuple[Quantity, ...]) -> tuple[int, int, float]:
    """The smallest node count whose truncation error is below TRUNCATION_TARGET for every quantity, plus a
    fifth as a margin; returns (the count used, the largest truncation error of the smallest passing rule).

    Truncation errors are computed in mpmath against a 96-point rule at 30 digits; the integrands' values at
    the ends of the longest steps are checked against float64's range. All quantities are evaluated together
    (one CSE'd function), counts are tried in increasing order and each on the longest steps first, so a rule
    that fails is usually rejected after a few evaluations."""
    integrands = tuple(q.integrand for q in quantities)
    prefactors = tuple(q.prefactor for q in quantities)
    longest = RATIO_GRID[-1]
    for q in quantities:
        bad = _range_failure(
            q.integrand,
            (sigma, v),
            [(sg, vv) for sg in (SIGMA_GRID[0], SIGMA_GRID[-1]) for vv in (0.0, math.log(longest))],
        ) or _range_failure(
            q.prefactor, (sigma, sigma_next), [(sg, sg * longest) for sg in (SIGMA_GRID[0], SIGMA_GRID[-1])]
        )
        if bad is not None:
            raise ArithmeticError(f"the integrand or prefactor of {q.label} leaves float64's range at {bad}")
    for count in QUADRATURE_NODES:
        worst = _truncation_error(integrands, prefactors, count)
        if worst <= TRUNCATION_TARGET:
            # a fifth more nodes for steps between the sampled ones
            margin = next((c for c in QUADRATURE_NODES if c >= count * 6 // 5), QUADRATURE_NODES[-1])
            return margin, count, worst
    raise ArithmeticError(
        f"Gauss-Legendre quadrature did not reach {TRUNCATION_TARGET:g} with {QUADRATURE_NODES[-1]} nodes"
    )


def _points() -> list[tuple[float, float]]:
    """The sampled steps (sigma, sigma_next), longest first."""
    return [(sg, sg * rho) for rho in reversed(RATIO_GRID) for sg in SIGMA_GRID]


@functools.cache
def _joint_functions(
    integrands: tuple[sp.Expr, ...], prefactors: tuple[sp.Expr, ...]
) -> tuple[Callable, Callable]:
    return (
        sp.lambdify((sigma, v), list(integrands), modules="mpmath", cse=True),
        sp.lambdify((sigma, sigma_next), list(prefactors), modules="mpmath", cse=True),
    )


def _rule_values(integrands, prefactors, nodes, weights, a: float, b: float) -> list[mpmath.mpf]:
    """prefactor * the Gauss-Legendre rule (nodes, weights on [-1, 1]) in v over [log(b/a), 0], per quantity."""
    f, pre = _joint_functions(integrands, prefactors)
    with mpmath.workdps(REFERENCE_DPS):
        A, B = mpmath.mpf(a), mpmath.mpf(b)
        half = mpmath.log(A / B) / 2
        samples = [f(A, half * (xk - 1)) for xk in nodes]
        factors = pre(A, B)
        return [
            factors[i] * half * mpmath.fsum(wk * row[i] for wk, row in zip(weights, samples))
            for i in range(len(integrands))
        ]


@functools.cache
def _quadrature_reference(integrands: tuple[sp.Expr, ...], prefactors: tuple[sp.Expr, ...]) -> tuple:
    """prefactor * integral at every sampled step by the 96-point rule at 30 digits (cached on disk)."""
    points = _points()
    key = (
        repr([sp.srepr(e) for e in integrands]),
        repr([sp.srepr(e) for e in prefactors]),
        repr(points),
        f"{REFERENCE_DPS}/{PLAN_REFERENCE_NODES}",
        mpmath.__version__,
    )
    values = cache.load("reference", key)
    nodes, weights = _mp_rule(PLAN_REFERENCE_NODES, REFERENCE_DPS)
    shape_ok = isinstance(values, list) and len(values) == len(points)
    if shape_ok and all(
        isinstance(row, list) and len(row) == len(integrands) and all(isinstance(x, str) for x in row)
        for row in values
    ):
        try:
            with mpmath.workdps(REFERENCE_DPS):
                cached = tuple(tuple(mpmath.mpf(x) for x in row) for row in values)
        except (ValueError, TypeError):
            cached = None
        # a cheap re-check: the longest step (the first) and one short step recomputed must agree to 25 digits
        if cached is not None and all(
            _agrees(cached[i], _rule_values(integrands, prefactors, nodes, weights, *points[i]))
            for i in (0, len(points) - 1)
        ):
            return cached
        warnings.warn(
            "derive: a cached quadrature reference failed its re-check; it was recomputed", stacklevel=2
        )
    result = tuple(tuple(_rule_values(integrands, prefactors, nodes, weights, *p)) for p in points)
    cache.store("reference", key, [[mpmath.nstr(x, REFERENCE_DPS + 5) for x in row] for row in result])
    return result


def _agrees(cached, computed) -> bool:
    with mpmath.workdps(REFERENCE_DPS):
        return all(
            mpmath.isfinite(a) and abs(a - b) <= mpmath.mpf("1e-25") * max(abs(b), mpmath.mpf("1e-300"))
            for a, b in zip(cached, computed)
        )


@functools.cache
def _candidate_rule(count: int):
    from derive.quadrature import gauss_legendre_mp

    return gauss_legendre_mp(count, REFERENCE_DPS + 10)


def _truncation_error(integrands, prefactors, count: int) -> float:
    """Largest relative truncation error of the ``count``-point rule over the sampled steps and quantities,
    in mpmath; stops at the first step whose error exceeds TRUNCATION_TARGET (the longest steps come first)."""
    reference = _quadrature_reference(integrands, prefactors)
    nodes, weights = _candidate_rule(count)
    worst = 0.0
    for point, exact_row in zip(_points(), reference):
        values = _rule_values(integrands, prefactors, nodes, weights, *point)
        for value, exact in zip(values, exact_row):
            error = float(abs(value - exact) / abs(exact)) if exact != 0 else float(abs(value))
            worst = max(worst, error)
        if worst > TRUNCATION_TARGET:
            break
    return worst


# ---- closed forms -----------------------------------------------------------------------------------------
@functools.cache
def _plan_closed(step: ERSDEStep, q: Quantity, *, allow_series: bool = True) -> Quantity:
    """Measure the closed form's rounding error; keep it (with a series below the switch point) or fall back
    to quadrature. The rounding error is that of emulated float64 (see the module docstring)."""
    if q.closed is None:
        return q
    if q.closed == 0:
        return dataclasses.replace(q, kind="closed")
    corners = [
        (sg, sg * ratio)
        for sg in (SIGMA_GRID[0], SIGMA_GRID[-1])
        for ratio in (1 - T_GRID[0], MIN_STEP_RATIO)
    ]
    if _range_failure(q.closed, (sigma, sigma_next), corners) is not None:
        return q
    f53 = sp.lambdify((sigma, sigma_next), q.closed, "mpmath", cse=True)
    fmp = sp.lambdify((sigma, sigma_next), q.closed, "mpmath")
    errors = []
    exacts = {}
    for t in T_GRID:
        worst = 0.0
        for sg in SIGMA_GRID:
            nxt = sg * (1 - t)
            # the closed form may lose up to (power) log10(1/t) digits to cancellation: evaluate with more
            extra = int(((q.series_power or 2) + 1) * math.log10(1 / t)) + 5
            with mpmath.workdps(REFERENCE_DPS + extra):
                exact = +fmp(mpmath.mpf(sg), mpmath.mpf(nxt))
            exacts[(t, sg)] = exact
            value = _emulated_float64(f53, sg, nxt)
            if value is None or not _in_float64_range(exact):
                err = math.inf
            elif exact == 0:
                err = float(abs(value))
            else:
                with mpmath.workdps(REFERENCE_DPS):
                    err = float(abs(value - exact) / abs(exact))
            worst = max(worst, err)
        errors.append(worst)
    # long steps, up to the longest a module accepts: some closed forms lose digits there instead
    long_error = 0.0
    for ratio in LONG_RATIO_GRID:
        for sg in SIGMA_GRID:
            with mpmath.workdps(REFERENCE_DPS + 30):
                exact = +fmp(mpmath.mpf(sg), mpmath.mpf(sg * ratio))
            value = _emulated_float64(f53, sg, sg * ratio)
            if value is None or not _in_float64_range(exact):
                long_error = math.inf
            elif exact != 0:
                with mpmath.workdps(REFERENCE_DPS):
                    long_error = max(long_error, float(abs(value - exact) / abs(exact)))
    if not long_error <= ROUNDING_TARGET:
        reason = (
            f"the closed form's rounding error reaches {long_error:.1e} on long steps"
            if math.isfinite(long_error)
            else "the closed form leaves float64's range on long steps"
        )
        return dataclasses.replace(q, fallback=reason)
    ok = [e <= ROUNDING_TARGET for e in errors]
    if not ok[-1]:
        return q
    first = len(T_GRID) - 1
    while first > 0 and ok[first - 1]:
        first -= 1
    if first == 0:
        return dataclasses.replace(q, kind="closed", closed_error=max(*errors, long_error))
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
                closed_error=max(*errors[first:], long_error),
                series_error=worst,
            )
    return q


def evaluation_notes(plan: CoefficientPlan) -> list[str]:
    """One line per coefficient saying how it is evaluated in float64, and why (plain text, no markup).

    Every figure is computed in mpmath (see the module docstring), so the lines are the same on every machine.
    """
    notes = []
    for q in plan.quantities:
        if q.kind == "closed" and q.closed == 0:
            notes.append(f"{q.label} = 0.")
        elif q.kind == "closed" and q.series:
            notes.append(
                f"{q.label}: closed form for h/sigma >= {q.threshold:.3g} (rounding error {q.closed_error:.1e}), below "
                f"it a {len(q.series)}-term series (truncation error {q.series_error:.1e} at the switch)."
            )
        elif q.kind == "closed":
            notes.append(f"{q.label}: closed form (rounding error {q.closed_error:.1e}).")
        else:
            reason = q.fallback if q.closed is not None else "no closed form"
            notes.append(f"{q.label}: {plan.quadrature_nodes}-point Gauss-Legendre in log s ({reason}).")
    if plan.uses_quadrature:
        notes.append(
            f"Quadrature: truncation error {plan.quadrature_error:.1e} already with {plan.truncation_nodes} nodes, over "
            f"sigma in [{SIGMA_GRID[0]:g}, {SIGMA_GRID[-1]:g}] and sigma_next/sigma in [{MIN_STEP_RATIO:g}, 1 - 1e-9]; the "
            "integrands are smooth and one-signed "
            "in log s, so float64 rounding adds only a few ulp."
        )
    if any(q.kind == "closed" and q.closed != 0 for q in plan.quantities):
        notes.append(
            "Rounding errors are those of correctly rounded float64 arithmetic, emulated in mpmath, over sigma in "
            f"[{SIGMA_GRID[0]:g}, {SIGMA_GRID[-1]:g}] and sigma_next/sigma in [{MIN_STEP_RATIO:g}, 1)."
        )
    return notes

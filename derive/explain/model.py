"""The explanation's data model (formulas, checks, steps), the symbols that only name things in the
walk-through, how checks are run, and the context: what the derivation holds for a spec."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import sympy as sp
from sympy.codegen.cfunctions import expm1

from derive import checks as _checks
from derive import coefficients as _coefficients
from derive.errors import DerivationError
from derive.families import FAMILIES as SPEC_FAMILIES
from derive.spec import Spec
from derive.symbolic import admissibility as _admissibility
from derive.symbolic import ersde as _ersde
from derive.symbolic import families as _families
from derive.symbolic import interpolation as _interpolation
from derive.symbolic.expression import parse_expression

SOURCE = "derive.explain.steps"
#: mpmath precision of the numerical checks made here, in digits.
CHECK_DPS = 50
#: relative step sizes h/s_i at which the local order is measured.
ORDER_STEPS = (2.0**-5, 2.0**-6)
#: the measured local order must be within this of K + 1.
ORDER_TOLERANCE = 0.3

s, sigma, sigma_next = _ersde.s, _ersde.sigma, _ersde.sigma_next
t = _families.t

# ---- symbols that only name things in the walk-through ---------------------------------------------------
Y_I = sp.Symbol("y_i", real=True)
Y_NEXT = sp.Symbol("y_i+1", real=True)
X_I = sp.Symbol("x_i", real=True)
X_NEXT = sp.Symbol("x_i+1", real=True)
Z = sp.Symbol("z", real=True)
R = sp.Symbol("r", real=True)
V = sp.Symbol("v", real=True)
#: the variance of the noise-form step (v_epsilon; v is the data form's)
W_VAR = sp.Symbol("v_epsilon", real=True)
#: the diffusion coefficient of the reverse-time SDE (the injected noise); h is the step
H = sp.Symbol("gamma", real=True)
G = sp.Symbol("g", real=True)
B = sp.Symbol("b", real=True)
Y_0 = sp.Symbol("y_0", real=True)
XHAT = sp.Function("xhat_0")
EPSHAT = sp.Function("epsilonhat")
XHAT_SYMBOL = sp.Symbol("xhat_0", real=True)
EPSHAT_SYMBOL = sp.Symbol("epsilonhat", real=True)
OUTPUT = sp.Symbol("output", real=True)
U = sp.Symbol("u", real=True)
U_I = sp.Symbol("u_i", real=True)
LAMBDA = sp.Symbol("lambda", real=True)
WEIGHTS = sp.IndexedBase("w")
PREDICTIONS = sp.IndexedBase("P")
J = sp.Symbol("j", integer=True, nonnegative=True)
I_INDEX = sp.Symbol("i", integer=True, nonnegative=True)
S_OF_T = sp.Function("s")(t)
C_0 = sp.Symbol("c_0", real=True)


@dataclasses.dataclass(frozen=True)
class Formula:
    """``lhs relation rhs``: a SymPy expression the derivation holds (``rhs``) and what it is (``lhs``)."""

    lhs: sp.Basic
    rhs: sp.Basic
    note: str = ""
    relation: str = "="  # "=" or "~" (approximately)


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One check that ran: what it states, how it was decided, the residual it left and whether it passed.

    ``source`` names the function that ran it (a check of :mod:`derive.checks`, the coefficient plan, or this
    module). ``equations`` are the identities asserted, as SymPy objects, when the check states any.
    """

    name: str
    statement: str
    method: str
    residual: str
    passed: bool
    source: str
    equations: tuple[Formula, ...] = ()


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of the walk-through: ``body`` holds paragraphs (str) and formulas in reading order."""

    number: int
    key: str
    title: str
    body: tuple[str | Formula, ...]
    checks: tuple[CheckResult, ...]
    #: measurements and facts that are not formulas (e.g. how a coefficient is evaluated)
    notes: tuple[str, ...] = ()

    @property
    def prose(self) -> tuple[str, ...]:
        return tuple(block for block in self.body if isinstance(block, str))

    @property
    def formulas(self) -> tuple[Formula, ...]:
        """The SymPy expressions the derivation holds at this step."""
        return tuple(block for block in self.body if isinstance(block, Formula))


class _Body(list):
    """Paragraphs and formulas of a step, in reading order."""

    def say(self, *paragraphs: str) -> None:
        self.extend(paragraph for paragraph in paragraphs if paragraph)

    def show(self, *formulas: Formula) -> None:
        self.extend(formulas)


@dataclasses.dataclass(frozen=True)
class Explanation:
    """The walk-through of one spec: its steps, and the derivation's results it was built from."""

    spec: Spec
    command: str
    title: str
    legend: tuple[str, ...]
    steps: tuple[Step, ...]
    #: phi, the one-step solution and the coefficient plan (the same as derive_spec(spec) holds)
    phi: sp.Expr | None = None
    step: _ersde.ERSDEStep | None = None
    plan: _coefficients.CoefficientPlan | None = None

    @property
    def checks(self) -> tuple[CheckResult, ...]:
        return tuple(check for step in self.steps for check in step.checks)

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(check for check in self.checks if not check.passed)

    @property
    def passed(self) -> bool:
        return not self.failed


# ---- running checks ----------------------------------------------------------------------------------------
def _uncached(function: Callable) -> Callable:
    """The function behind an ``lru_cache`` (so the check runs now), or the function itself."""
    return getattr(function, "__wrapped__", function)


#: the statements of derive.checks in the pages' notation (docs/notation.md), by check name: s_i, s_i+1 for
#: sigma, sigma_next (s'), gamma for the reverse diffusion h, xhat_0 for the prediction x0
NOTATION_STATEMENTS = {
    "drift": "dy/ds = (phi'/phi)(y - xhat_0) plus the noise gamma dWbar, gamma^2 = 2 s (s phi'/phi - 1)",
    "exact mean": "y(s) = r(s) y_i + (1 - r(s)) xhat_0 solves the drift for a constant xhat_0",
    "variance": "V(s) = s^2 - s_i^2 r(s)^2 solves dV/ds = 2 (phi'/phi) V - gamma^2 with V(s_i) = 0",
    "integration by parts": "c_n = (s_i+1 - s_i)^n/n! + phi(s_i+1) int (s - s_i)^(n-1)/((n-1)! phi) ds",
    "ratio and variance": "r = phi(s_i+1)/phi(s_i) and v = s_i+1^2 - s_i^2 r^2 solve the SDE for this phi",
}


def _run_derive_checks(source: str, function: Callable, *args) -> list[CheckResult]:
    """Run a check of :mod:`derive.checks` (returns Check records, raises DerivationError on failure)."""
    try:
        out = _uncached(function)(*args)
    except (DerivationError, ArithmeticError) as error:
        return [
            CheckResult(
                source.rsplit(".", 1)[-1],
                "the identities checked by this function",
                "",
                str(error),
                False,
                source,
            )
        ]
    if isinstance(out, _checks.Check):
        out = (out,)
    return [
        CheckResult(c.name, NOTATION_STATEMENTS.get(c.name, c.statement), c.method, c.residual, True, source)
        for c in out
    ]


def _short(expr) -> str:
    text = sp.sstr(expr)
    return text if len(text) <= 200 else text[:197] + "..."


def _identity(
    name: str,
    statement: str,
    residual: sp.Expr,
    *,
    equations: Iterable[Formula] = (),
    points: Iterable[dict] = (),
    source: str = SOURCE,
) -> CheckResult:
    """``residual == 0``: symbolically (:func:`derive.checks._is_zero`), else at 50 digits at ``points``."""
    equations = tuple(equations)
    try:
        if _checks._is_zero(residual):
            return CheckResult(name, statement, "symbolic", "0", True, source, equations)
        points = list(points)
        if points:
            worst = _checks._numerically_zero(residual, points)
            if worst < 1e-40:
                return CheckResult(
                    name,
                    statement,
                    f"mpmath-{CHECK_DPS} at {len(points)} points",
                    f"{worst:.1e}",
                    True,
                    source,
                    equations,
                )
    except (ArithmeticError, TypeError, ValueError) as error:  # a residual SymPy cannot even evaluate
        return CheckResult(
            name, statement, "symbolic", f"{type(error).__name__}: {error}", False, source, equations
        )
    return CheckResult(name, statement, "symbolic", _short(sp.simplify(residual)), False, source, equations)


def _numeric(
    name: str, statement: str, method: str, value: float, limit: float, *, source: str = SOURCE, equations=()
) -> CheckResult:
    passed = math.isfinite(value) and value <= limit
    return CheckResult(name, statement, method, f"{value:.1e}", passed, source, tuple(equations))


def _schedule_points(schedule: _families.Schedule) -> list[dict]:
    """Sample points (time and parameters at their defaults) for a numerical fallback."""
    base = {symbol: value for symbol, value in schedule.parameters}
    times = (0.25, 0.5, 0.75) if not schedule.discrete else (0.2, 0.5, 0.8)
    variable = _families.table_value if schedule.discrete else t
    return [{**base, variable: value} for value in times]


#: steps (s_i, s_{i+1}) at which phi-dependent identities are compared numerically (dyadic, as in checks)
STEP_POINTS = tuple((a, a * rho) for a in (0.0625, 1.0, 32.0) for rho in (0.875, 0.375))


def _step_points() -> list[dict]:
    return [{sigma: a, sigma_next: b} for a, b in STEP_POINTS]


# ---- the context: what the derivation holds for a spec ------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Context:
    spec: Spec
    phi: sp.Expr
    step: _ersde.ERSDEStep
    plan: _coefficients.CoefficientPlan
    derivation: _families.FamilyDerivation
    variable: str
    #: s phi'/phi (ERSDEStep.noise_density simplifies on every access: computed once here)
    noise_density: sp.Expr
    #: results of generic_checks and step_checks, distributed over the steps by name
    generic: tuple[CheckResult, ...]
    specific: tuple[CheckResult, ...]

    @property
    def form(self) -> str:
        return self.spec.form

    @property
    def order(self) -> int:
        return self.spec.order

    @property
    def normalized(self) -> bool:
        """A normalized-coordinate family (ersde): the process is the EDM process with t = s."""
        return SPEC_FAMILIES[self.spec.family].normalized

    @property
    def mean_reverting(self) -> bool:
        return self.derivation.family.mean_reverting

    @property
    def weight_symbol(self) -> str:
        return "c" if self.form == "data" else "e"


def _spec_variable(spec: Spec) -> str:
    return getattr(spec, "variable", "s")


def _context(spec: Spec) -> _Context:
    phi = parse_expression(spec.phi_text)
    # AdmissibilityError is bad input (exit code 2), not a failed identity: let it through
    _admissibility.check_phi(phi, s)
    step = _ersde.derive_step(phi)
    variable = _spec_variable(spec)
    generic = tuple(_run_derive_checks("derive.checks.generic_checks", _checks.generic_checks))
    try:
        plan = _coefficients.plan_coefficients(step, spec.order, spec.form, variable)
    except ArithmeticError as error:
        raise DerivationError(f"derived identity failed: coefficient plan: {error}") from None
    closed = {}
    if spec.form == "data" and variable == "s":
        closed = {int(q.name[1:]): q.closed for q in plan.weights if q.closed is not None}
    specific = tuple(
        _run_derive_checks(
            "derive.checks.step_checks",
            _checks.step_checks,
            step,
            closed,
            lambda n, a, b: _coefficients._mp_quad_weight(step, n, a, b),
        )
    )
    if SPEC_FAMILIES[spec.family].normalized:
        derivation = _families.derive_family("edm")
    else:
        derivation = _families.derive_family(spec.family, spec.resolved_schedule)
    return _Context(spec, phi, step, plan, derivation, variable, step.noise_density, generic, specific)


def _pick(
    results: Iterable[CheckResult], *names: str, prefix: str | None = None, failures: bool = False
) -> list[CheckResult]:
    """The results with these names (or name prefix); with ``failures`` also every failed one."""
    out = []
    for result in results:
        named = result.name in names or (prefix is not None and result.name.startswith(prefix))
        if named or (failures and not result.passed):
            out.append(result)
    return out


# ---- helpers that build expressions from the derivation -----------------------------------------------------
def _time_to_s(expr: sp.Basic) -> sp.Basic:
    """For family ersde: the EDM process with its time t renamed to the noise level s."""
    return expr.subs(t, s)


def _expansion_factor_in_s(n: int, variable: str) -> sp.Expr:
    """(u(s) - u(s_i))^n / n! as a function of s, from :func:`derive.symbolic.ersde.expansion_factor`."""
    expr = _ersde.expansion_factor(n, variable).subs(_ersde.v, sp.log(s / sigma))
    expr = expr.replace(lambda e: isinstance(e, expm1), lambda e: sp.exp(e.args[0]) - 1)
    return sp.factor(sp.expand(expr)) if variable == "s" else expr


def _u_symbols(variable: str) -> tuple[sp.Symbol, sp.Symbol]:
    return (s, sigma) if variable == "s" else (LAMBDA, sp.Symbol("lambda_i", real=True))


def _derivative_at(function, n: int, variable: str) -> sp.Expr:
    u, u_i = _u_symbols(variable)
    if n == 0:
        return function(u_i)
    return sp.Subs(sp.Derivative(function(u), (u, n)), u, u_i)


def _weight_integral(ctx: _Context, n: int) -> sp.Expr:
    """c_n (or e_n) as the definite integral the derivation defines, unevaluated."""
    factor = _expansion_factor_in_s(n, ctx.variable)
    if ctx.form == "data":
        return ctx.phi.subs(s, sigma_next) * sp.Integral(
            ctx.step.weight_density * factor, (s, sigma_next, sigma)
        )
    return sp.Integral(ctx.noise_density * factor, (s, sigma_next, sigma))


def _history_sum(order: int) -> sp.Expr:
    return sp.Sum(WEIGHTS[J] * PREDICTIONS[I_INDEX - J], (J, 0, order - 1))


def _weight_symbols(ctx: _Context) -> list[sp.Symbol]:
    return [sp.Symbol(f"{ctx.weight_symbol}_{n}", real=True) for n in range(ctx.order)]


def _history_weights(ctx: _Context) -> list[sp.Expr]:
    """w_j = sign * sum_n c_n D[n][j] (sign -1 in the noise form: the update subtracts the eps terms)."""
    D = _interpolation.derivative_weights(ctx.order)
    c = _weight_symbols(ctx)
    sign = 1 if ctx.form == "data" else -1
    return [sp.factor(sign * sum(c[n] * D[n][j] for n in range(ctx.order))) for j in range(ctx.order)]

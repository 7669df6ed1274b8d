r"""The derivation of one solver as data: ten steps, each with prose, the SymPy expressions held at that point
and the checks that ran, with their results.

:func:`build_explanation` re-runs the derivation of a :class:`~derive.spec.Spec` the way
:func:`derive.derivation.derive` does (parse and admit phi, derive the step, the generic and the
phi-specific checks, the coefficient plan, the interpolation checks), but one check at a time, so that a
failing identity is recorded where it occurs instead of stopping the walk-through. Checks are called through
their modules and never through a cache, so every call of :func:`build_explanation` runs every check again.

Besides the checks of :mod:`derive.checks`, the walk-through states and checks (symbolically, or with mpmath
where SymPy cannot decide) what the derivation code relies on without asserting it:

* the forward process: the prediction conversions invert the marginal; f, g^2 and lambda solve the mean and
  variance equations; ``y = (x - mu)/alpha`` has no drift and the variance-exploding diffusion in ``s``;
* the reverse dynamics: ``phi = s`` gives ``gamma = 0`` and ``phi = s^2`` gives ``gamma = g``; in the noise form the
  drift is ``(s phi'/phi) eps``; the closed forms of the noise-form weights equal their quadrature;
* the family update maps back to the normalized update;
* the special cases (:func:`special_cases`): DDIM, DDPM ancestral sampling, mean reversion as a shift, VP as
  VE under ``y = x/alpha``;
* the order conditions: the weights integrate polynomials of degree < K exactly, and the local defect on
  degree K shrinks like ``h^(K+1)`` (measured with the reference quadrature of the coefficient plan).

Nothing here is printed: :mod:`derive.explain.render` prints the expressions with SymPy's printers.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Iterable

import mpmath
import sympy as sp
from sympy.codegen.cfunctions import expm1

from derive import checks as _checks
from derive import coefficients as _coefficients
from derive.errors import DerivationError
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
        """Family ersde: the process is given in normalized coordinates (the EDM process with t = s)."""
        return self.spec.family == "ersde"

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
    if spec.family == "ersde":
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


# ---- 1. the forward process ---------------------------------------------------------------------------------
def _forward(ctx: _Context) -> Step:
    d = ctx.derivation
    family, schedule = d.family, d.schedule
    body = _Body()
    sub = {}
    if ctx.normalized:
        body.say(
            "Family ersde works directly in normalized coordinates (the k-diffusion convention): the state is y and "
            "the time is the noise level s. This is the EDM process with its time t renamed to s, so the "
            "walk-through uses the EDM family as the derivation code defines it (derive_family('edm')). "
            "The marginal at noise level s:",
        )
        sub = {_families.alpha: schedule.alpha, _families.sigma_t: _time_to_s(schedule.sigma)}
        body.show(Formula(sp.Symbol("y_s", real=True), d.marginal.subs(sub)))
    else:
        body.say(
            f"The {family.title}, schedule '{schedule.name}': {schedule.description}.",
            f"Time: {family.time_doc}." if family.time_doc else "",
            "The family is defined by its forward marginal:",
        )
        body.show(Formula(sp.Symbol("x_t", real=True), d.marginal))
        if family.mean_reverting:
            body.say("mu is the mean the process reverts to (e.g. the degraded image).")
        variable = _families.table_value if schedule.discrete else t
        body.say(
            "with the schedule"
            + (" (value: the table's entry at the index)" if schedule.discrete else "")
            + ":"
        )
        body.show(
            Formula(sp.Function("alpha")(variable), schedule.alpha),
            Formula(sp.Function("sigma")(variable), schedule.sigma),
        )
        if schedule.parameters:
            body.say("and its parameters' defaults:")
            body.show(*(Formula(symbol, sp.Float(value, 6)) for symbol, value in schedule.parameters))
        if family.velocity is not None:
            body.say(f"The velocity is defined as {family.velocity_doc}:")
            body.show(Formula(sp.Symbol("xdot_t", real=True), family.velocity))
    body.say(
        "The model's output (output) is converted to the data and the noise prediction by solving the marginal"
        + (" and the velocity's definition" if family.velocity is not None else "")
        + " with SymPy:"
    )
    checks = []
    for prediction in family.predictions:
        value = {"data": _families.x0, "noise": _families.eps, "velocity": family.velocity}[prediction]
        to_data, to_noise, marginal = d.to_data[prediction], d.to_noise[prediction], d.marginal
        if sub:
            to_data, to_noise, marginal = (e.subs(sub) for e in (to_data, to_noise, marginal))
        body.show(
            Formula(XHAT_SYMBOL, to_data, f"from a {prediction} prediction"),
            Formula(EPSHAT_SYMBOL, to_noise, f"from a {prediction} prediction"),
        )
        at = {_families.x: marginal, OUTPUT: value}
        residual = (to_data.subs(at) - _families.x0) ** 2 + (to_noise.subs(at) - _families.eps) ** 2
        # the conversions at the exact output, shown unevaluated: (conversion)|_{x = marginal, output = value}
        variables, points = (_families.x, OUTPUT), (marginal, value)
        checks.append(
            _identity(
                f"{prediction} conversion",
                f"the conversion of a {prediction} prediction returns x0 and eps when the output is exact",
                residual,
                equations=(
                    Formula(sp.Subs(to_data, variables, points), _families.x0),
                    Formula(sp.Subs(to_noise, variables, points), _families.eps),
                ),
            )
        )
    return Step(1, "forward", "The forward process and its marginal", tuple(body), tuple(checks))


# ---- 2. f, g^2, lambda --------------------------------------------------------------------------------------
def _coefficients_step(ctx: _Context) -> Step:
    d = ctx.derivation
    schedule = d.schedule
    body, checks = _Body(), []
    title = "Drift, diffusion and log-SNR"
    if schedule.discrete:
        a, sg = schedule.alpha, schedule.sigma
        s_value = sp.simplify(sg / a)
        lam = sp.log(a / sg)
        body.say(
            "A discrete schedule gives alpha and sigma at the indices of a table, so there is no continuous-time "
            "SDE to derive. What the sampler needs is the normalized noise level s = sigma/alpha and the half "
            "log-SNR lambda = log(alpha/sigma) at each index:",
        )
        body.show(Formula(sp.Symbol("s", positive=True), s_value), Formula(LAMBDA, lam))
        checks.append(
            _identity(
                "half log-SNR",
                "lambda = log(alpha/sigma) = -log s",
                sp.exp(-lam) - s_value,
                equations=(Formula(sp.exp(-LAMBDA), s_value),),
                points=_schedule_points(schedule),
            )
        )
        return Step(2, "sde", title, tuple(body), tuple(checks))
    a, sg = schedule.alpha, schedule.sigma
    f, g2, lam, s_t = d.drift, d.diffusion2, d.log_snr_half, d.normalized_sigma
    body.say(
        "SymPy derives the forward SDE dx = f(t) (x - mu) dt + g(t) dW whose marginals are the family's "
        "(mu = 0 unless the family is mean-reverting): f = alpha'/alpha from the mean and g^2 from the variance, "
        "together with the half log-SNR lambda = log(alpha/sigma) and the normalized noise level s = sigma/alpha "
        "(derive_family):",
    )
    if ctx.normalized:
        f, g2, lam, s_t, a, sg = (_time_to_s(e) for e in (f, g2, lam, s_t, a, sg))
        body.show(Formula(sp.Function("f")(s), f), Formula(G**2, g2), Formula(LAMBDA, lam))
        body.say(
            "For family ersde the time is s itself: the variance-exploding process, as drift_and_diffusion assumes."
        )
        residuals = {
            "mean ODE": (sp.diff(a, s) - f * a, "alpha' = f alpha: the mean decays with f"),
            "variance ODE": (sp.diff(sg**2, s) - (2 * f * sg**2 + g2), "(sigma^2)' = 2 f sigma^2 + g^2"),
            "g^2 of the ER SDE": (g2 - sp.diff(s**2, s), "g^2 = d(s^2)/ds, as drift_and_diffusion assumes"),
            "half log-SNR": (sp.exp(-lam) - s, "lambda = log(alpha/sigma) = -log s"),
        }
        for name, (residual, statement) in residuals.items():
            checks.append(_identity(name, statement, residual))
        return Step(2, "sde", title, tuple(body), tuple(checks))
    body.show(
        Formula(sp.Function("f")(t), f),
        Formula(sp.Function("g")(t) ** 2, g2),
        Formula(sp.Function("lambda")(t), lam),
        Formula(S_OF_T, s_t),
    )
    points = _schedule_points(schedule)
    residuals = {
        "mean ODE": (sp.diff(a, t) - f * a, "alpha' = f alpha: the mean of x - mu decays with f"),
        "variance ODE": (sp.diff(sg**2, t) - (2 * f * sg**2 + g2), "(sigma^2)' = 2 f sigma^2 + g^2"),
        "normalized variance": (sp.diff(s_t**2, t) - g2 / a**2, "(s^2)' = g^2 / alpha^2"),
        "half log-SNR": (sp.exp(-lam) - s_t, "lambda = log(alpha/sigma) = -log s"),
    }
    for name, (residual, statement) in residuals.items():
        checks.append(_identity(name, statement, residual, points=points))
    return Step(2, "sde", title, tuple(body), tuple(checks))


# ---- 3. the reverse dynamics ----------------------------------------------------------------------------------
def _at_phi(expr: sp.Expr, phi: sp.Expr) -> sp.Expr:
    """``expr`` (in the generic phi(s)) with phi and phi' replaced, left unsimplified: the substitution shown."""
    derivative = sp.diff(phi, s)
    with sp.evaluate(False):
        return expr.xreplace(
            {sp.Derivative(_ersde.phi_generic(s), s): derivative, _ersde.phi_generic(s): phi}
        )


def _reverse(ctx: _Context) -> Step:
    phi_g = _ersde.phi_generic(s)
    drift_g, h2_g = _ersde.drift_and_diffusion(phi_g)
    g2 = sp.diff(s**2, s)
    fraction_g = sp.simplify(h2_g / g2)
    _, h2 = _ersde.drift_and_diffusion(ctx.phi)
    _, h2_ode = _ersde.drift_and_diffusion(s)
    _, h2_sde = _ersde.drift_and_diffusion(s**2)
    body = _Body()
    body.say(
        "Reverse time is described by the extended reverse-time SDE (ER SDE), dy = b ds + gamma dWbar in "
        "decreasing s (gamma: the diffusion coefficient of the reverse SDE, Wbar: a reverse-time Wiener process): "
        "every member has the forward process's marginals, and a noise-scale function phi chooses how much noise "
        "it injects. With the score written through the data prediction, (xhat_0 - y)/s^2, the drift is linear "
        "in y. For a generic phi (drift_and_diffusion):",
    )
    body.show(Formula(B, drift_g.subs(_families.x0, XHAT_SYMBOL)), Formula(H**2, h2_g))
    body.say(
        "So the fraction of the forward diffusion g^2 = 2s that is re-injected depends on phi alone:",
    )
    body.show(Formula(H**2 / G**2, fraction_g))
    body.say(
        "phi = s injects none (gamma = 0: the probability-flow ODE, sampled by DDIM); phi = s^2 injects all of "
        "it (gamma = g: the reverse SDE, sampled by DDPM with the posterior variance betatilde). Any other phi is "
        "admissible when it is positive and finite with phi(s)/s non-decreasing, i.e. gamma^2 >= 0; check_phi "
        f"verifies this before anything is derived, on s in [{_admissibility.DEFAULT_S_LO:g}, "
        f"{_admissibility.DEFAULT_S_HI:g}] only (outside that range nothing is checked).",
        f"This spec's phi ({ctx.spec.resolved_dynamics} dynamics) and its noise fraction (noise_fraction):",
    )
    body.show(
        Formula(sp.Function("phi")(s), ctx.phi),
        Formula(H**2 / G**2, ctx.step.noise_fraction),
        Formula(H**2, h2),
    )
    d = ctx.derivation
    if not ctx.normalized and not d.schedule.discrete:
        body.say("In the family's time t the injected noise is the same fraction of its own g(t)^2:")
        body.show(
            Formula(
                sp.Function("gamma")(t) ** 2,
                d.diffusion2 * ctx.step.noise_fraction.subs(s, d.normalized_sigma),
            )
        )
    checks = _pick(ctx.generic, "drift", failures=True)
    method = (
        "symbolic proof"
        if _admissibility._proves_nonnegative(s * sp.diff(ctx.phi, s) - ctx.phi)
        else (f"mpmath-{_admissibility.DIGITS} on {_admissibility.GRID_POINTS} log-spaced points")
    )
    checks.append(
        CheckResult(
            "admissibility",
            f"phi is positive, finite and phi(s)/s is non-decreasing on [{_admissibility.DEFAULT_S_LO:g}, "
            f"{_admissibility.DEFAULT_S_HI:g}] (gamma^2 >= 0); outside that range it is not checked",
            method,
            "none",
            True,
            "derive.symbolic.admissibility.check_phi",
        )
    )
    checks.append(
        _identity(
            "phi = s is the ODE",
            "phi = s gives gamma^2 = 0",
            h2_ode,
            equations=(Formula(_at_phi(h2_g, s), h2_ode, "the generic gamma^2 with phi = s, phi' = 1"),),
        )
    )
    checks.append(
        _identity(
            "phi = s^2 is the SDE",
            "phi = s^2 gives gamma^2 = g^2",
            h2_sde - g2,
            equations=(
                Formula(_at_phi(h2_g, s**2), g2, "the generic gamma^2 with phi = s^2, phi' = 2s; g^2 = 2s"),
            ),
        )
    )
    checks.append(
        _identity(
            "noise fraction",
            "noise_fraction = gamma^2/g^2 for this phi",
            ctx.step.noise_fraction - h2 / g2,
            points=[{s: a} for a, _ in STEP_POINTS],
        )
    )
    return Step(3, "reverse", "The reverse dynamics: the ER SDE", tuple(body), tuple(checks))


# ---- 4. normalized coordinates ---------------------------------------------------------------------------------
def _normalize(ctx: _Context) -> Step:
    d = ctx.derivation
    schedule = d.schedule
    m = _families.mu if d.family.mean_reverting else sp.Integer(0)
    x, alpha, sigma_f, x0, eps = _families.x, _families.alpha, _families.sigma_t, _families.x0, _families.eps
    y_of_x = (x - m) / alpha
    y_marginal = sp.expand(sp.simplify(y_of_x.subs(x, d.marginal)))
    body = _Body()
    if ctx.normalized:
        body.say(
            "For family ersde alpha = 1 and mu = 0: the state already is y and the time already is s. These are "
            "the coordinates every other family is mapped into:",
        )
    else:
        body.say(
            "Every family becomes the variance-exploding process in y = (x - mu)/alpha with noise level "
            "s = sigma/alpha; the data prediction maps to y_0 = x0 - mu, the noise prediction is unchanged:",
        )
    body.show(
        Formula(sp.Symbol("y", real=True), y_of_x),
        Formula(sp.Symbol("s", positive=True), sigma_f / alpha),
        Formula(sp.Symbol("y_s", real=True), y_marginal),
        Formula(Y_0, x0 - m),
    )
    checks = [
        _identity(
            "variance-exploding marginal",
            "y = (x - mu)/alpha is y_0 + s eps with y_0 = x0 - mu and s = sigma/alpha",
            y_marginal - ((x0 - m) + sigma_f / alpha * eps),
            equations=(Formula(sp.Symbol("y_s", real=True), Y_0 + (sigma_f / alpha) * eps),),
        )
    ]
    if schedule.discrete:
        body.say("With a discrete schedule the sampler only ever uses s at the table's indices.")
        return Step(4, "normalize", "Normalized coordinates", tuple(body), tuple(checks))
    a, f, g2, s_t = schedule.alpha, d.drift, d.diffusion2, d.normalized_sigma
    if ctx.normalized:
        a, f, g2, s_t = (_time_to_s(e) for e in (a, f, g2, s_t))
        time = s
    else:
        time = t
    body.say(
        "By Ito's formula y has drift (f - alpha'/alpha)(x - mu)/alpha and diffusion g/alpha. The drift "
        "vanishes, and per unit of s the squared diffusion g^2/(alpha^2 ds/dt) is 2s = d(s^2)/ds: the "
        "variance-exploding process the ER SDE step is derived for. The injected noise gamma transforms the same "
        "way, so the ER SDE in x is the ER SDE in y:"
    )
    y_drift = sp.simplify(f - sp.diff(a, time) / a)
    y_diffusion = sp.simplify(g2 / a**2 / sp.diff(s_t, time))
    body.show(
        Formula(sp.Symbol("f_y"), y_drift, "Ito drift of y, per (x - mu)/alpha"),
        Formula(sp.Symbol("g_y") ** 2, y_diffusion, "squared diffusion of y per unit of s"),
    )
    points = _schedule_points(schedule) if not ctx.normalized else [{s: value} for value in (0.25, 1.0, 4.0)]
    fraction = sp.Symbol("N", real=True)  # h^2/g^2 at s(t), whatever phi is
    checks += [
        _identity("y has no drift", "f - alpha'/alpha = 0", y_drift, points=points),
        _identity(
            "y is variance-exploding in s", "g^2/(alpha^2 ds/dt) = 2s", y_diffusion - 2 * s_t, points=points
        ),
        _identity(
            "injected noise transforms",
            "gamma_t^2/alpha^2 dt = gamma_s^2 ds for every phi (N = gamma^2/g^2 at s(t))",
            fraction * (g2 / a**2 - 2 * s_t * sp.diff(s_t, time)),
            points=[{**p, fraction: 1} for p in points],
        ),
    ]
    return Step(4, "normalize", "Normalized coordinates", tuple(body), tuple(checks))


# ---- 5. the exact solution ---------------------------------------------------------------------------------
def _exact(ctx: _Context) -> Step:
    step = ctx.step
    phi_g = _ersde.phi_generic
    checks: list[CheckResult] = []
    body = _Body()
    title = "The exact solution of one step"
    if ctx.form == "data":
        r_g = phi_g(sigma_next) / phi_g(sigma)
        generic = (
            r_g * Y_I
            + phi_g(sigma_next)
            * sp.Integral(sp.diff(phi_g(s), s) / phi_g(s) ** 2 * XHAT(s), (s, sigma_next, sigma))
            + sp.sqrt(sigma_next**2 - sigma**2 * r_g**2) * Z
        )
        specific = (
            R * Y_I
            + ctx.phi.subs(s, sigma_next) * sp.Integral(step.weight_density * XHAT(s), (s, sigma_next, sigma))
            + sp.sqrt(V) * Z
        )
        body.say(
            "The drift is linear in y, so variation of constants solves the step from s_i down to s_i+1 exactly, "
            "whatever the data prediction does along the way. Divide y by phi: by the product rule and the "
            "drift dy/ds = (phi'/phi)(y - xhat_0), the terms in y cancel,",
        )
        y_of_s = sp.Function("y")(s)
        drift_g = sp.diff(phi_g(s), s) / phi_g(s) * (y_of_s - XHAT(s))
        quotient = sp.diff(y_of_s / phi_g(s), s)
        integrating = -sp.diff(phi_g(s), s) / phi_g(s) ** 2 * XHAT(s)
        with sp.evaluate(False):
            shown = quotient.subs(sp.Derivative(y_of_s, s), drift_g)
        body.show(Formula(sp.Derivative(y_of_s / phi_g(s), s), shown), Formula(shown, integrating))
        body.say(
            "so integrating from s_i to s_i+1 and multiplying by phi(s_i+1) gives the mean of the step. The noise "
            "adds to y/phi the increments gamma dWbar/phi, independent Gaussians whose variances add up to the "
            "integral of gamma^2/phi^2, an exact derivative:"
        )
        gamma2_g = _ersde.drift_and_diffusion(phi_g(s))[1]
        body.show(
            Formula(H**2 / phi_g(s) ** 2, gamma2_g / phi_g(s) ** 2),
            Formula(gamma2_g / phi_g(s) ** 2, -sp.Derivative(s**2 / phi_g(s) ** 2, s)),
        )
        body.say(
            "so the variance of the step is phi(s_i+1)^2 (s_i+1^2/phi(s_i+1)^2 - s_i^2/phi(s_i)^2) = "
            "s_i+1^2 - s_i^2 r^2 (z ~ N(0, I)). For any phi:"
        )
        body.show(Formula(Y_NEXT, generic))
        checks.append(
            _identity(
                "integrating factor",
                "d/ds (y/phi) = -(phi'/phi^2) xhat_0 along the drift, for a generic phi",
                sp.simplify(quotient.subs(sp.Derivative(y_of_s, s), drift_g) - integrating),
            )
        )
        checks.append(
            _identity(
                "variance as a derivative",
                "gamma^2/phi^2 = -d/ds (s^2/phi^2), for a generic phi",
                sp.simplify(gamma2_g / phi_g(s) ** 2 + sp.diff(s**2 / phi_g(s) ** 2, s)),
            )
        )
        body.say("For this phi, with weight_density = phi'/phi^2, the ratio r and the noise_variance v:")
        body.show(Formula(Y_NEXT, specific), Formula(R, step.ratio), Formula(V, step.noise_variance))
        checks += _pick(ctx.generic, "exact mean", "variance")
        checks += _pick(ctx.specific, "ratio and variance", failures=True)
        return Step(5, "exact", title, tuple(body), tuple(checks))
    y, x0 = sp.symbols("y x0", real=True)
    eps = _families.eps
    drift, _ = _ersde.drift_and_diffusion(ctx.phi)
    w_closed = ctx.plan.noise_variance.closed  # closed_form_noise_variance(step), as the plan holds it
    h2 = 2 * s * step.noise_fraction
    body.say(
        "With eps = (y - x0)/s the same SDE has no term linear in y; its drift is (s phi'/phi) eps "
        "(noise_density):",
    )
    body.show(Formula(B, sp.simplify(drift.subs(y, x0 + s * eps))))
    body.say(
        "Holding the noise prediction as a function of s over the step (the noise-prediction form, as in "
        "DPM-Solver) the step integrates directly, and the noise adds the integral of gamma^2 (z ~ N(0, I)):",
    )
    body.show(
        Formula(
            Y_NEXT,
            Y_I - sp.Integral(ctx.noise_density * EPSHAT(s), (s, sigma_next, sigma)) + sp.sqrt(W_VAR) * Z,
        ),
        Formula(W_VAR, sp.Integral(h2, (s, sigma_next, sigma))),
    )
    if w_closed is not None:
        body.say("SymPy's closed form of v_epsilon:")
        body.show(Formula(W_VAR, w_closed))
    else:
        body.say("SymPy finds no closed form of v_epsilon; it is integrated numerically (step 6).")
    body.say("(The data form of the same step has ratio r:)")
    body.show(Formula(R, step.ratio))
    checks.append(
        _identity(
            "noise-form drift",
            "phi'/phi (y - x0) = (s phi'/phi) eps at y = x0 + s eps",
            drift.subs(y, x0 + s * eps) - ctx.noise_density * eps,
            points=[{s: a, x0: 0.5, eps: 1.5} for a, _ in STEP_POINTS],
        )
    )
    checks += _pick(ctx.generic, "exact mean", "variance")
    checks += _pick(ctx.specific, "ratio and variance", failures=True)
    if w_closed is not None:
        checks.append(
            _identity(
                "noise-form variance",
                "v_epsilon(s_i, s_i+1) is the integral of gamma^2: its derivative in s_i is gamma^2(s_i) and it is "
                "0 when s_i+1 = s_i",
                (sp.diff(w_closed, sigma) - h2.subs(s, sigma)) ** 2 + w_closed.subs(sigma_next, sigma) ** 2,
                points=_step_points(),
            )
        )
    return Step(5, "exact", title, tuple(body), tuple(checks))


# ---- 6. expansion and weights ---------------------------------------------------------------------------------
def _label(q: _coefficients.Quantity) -> str:
    """The quantity's name in the pages' notation (the plan calls the noise form's variance w; here v_epsilon)."""
    return "v_epsilon" if q.label == "w" else q.label


def _quantity_notes(ctx: _Context, q: _coefficients.Quantity) -> str:
    plan = ctx.plan
    if q.kind == "closed" and q.closed == 0:
        return f"{_label(q)} = 0 exactly."
    if q.kind == "closed" and q.series:
        return (
            f"{_label(q)}: closed form for relative steps (s_i - s_i+1)/s_i >= {q.threshold:.3g} (rounding error "
            f"{q.closed_error:.1e}); below that a {len(q.series)}-term small-step series (truncation error "
            f"{q.series_error:.1e} at the switch), because the closed form cancels for short steps."
        )
    if q.kind == "closed":
        return f"{_label(q)}: closed form (rounding error {q.closed_error:.1e})."
    if q.closed is None:
        reason = "SymPy found no closed form"
        if ctx.variable != "s" and q.label[-1] != "0" and q.label not in ("v", "w"):
            reason = "expanded in lambda, only the quadrature is used"
    elif "long steps" in q.fallback:
        reason = f"SymPy's closed form is not used: {q.fallback}"
    else:
        reason = "SymPy's closed form loses accuracy to cancellation for short steps and no small-step series repaired it"
    return (
        f"{_label(q)}: {plan.quadrature_nodes}-point Gauss-Legendre quadrature in log s ({reason}); the integrand is "
        f"smooth and one-signed in log s."
    )


def _why_no_closed_form(ctx: _Context, n: int) -> Formula | None:
    """The integrand SymPy was asked to integrate (and could not), as the derivation code poses it."""
    if ctx.variable != "s":
        return None
    if ctx.form == "data" and n >= 1:
        return Formula(sp.Symbol("integrand"), sp.expand((s - sigma) ** (n - 1)) / ctx.phi)
    if ctx.form == "noise":
        return Formula(
            sp.Symbol("integrand"), sp.expand(ctx.noise_density * (s - sigma) ** n / sp.factorial(n))
        )
    return None


def _weights(ctx: _Context) -> Step:
    order, variable = ctx.order, ctx.variable
    u, u_i = _u_symbols(variable)
    predicted = XHAT if ctx.form == "data" else EPSHAT
    name = "data prediction" if ctx.form == "data" else "noise prediction"
    symbol = ctx.weight_symbol
    body = _Body()
    taylor = sum(
        _expansion_factor_in_s(n, "s").subs({s: u, sigma: u_i}) * _derivative_at(predicted, n, variable)
        for n in range(order)
    )
    body.say(
        f"The {name} is replaced by its Taylor polynomial of degree K - 1 = {order - 1} in the expansion variable "
        f"u = {'s' if variable == 's' else 'lambda = -log s'} about the current step:",
    )
    body.show(Formula(predicted(u), taylor, relation="~"))
    if variable != "s":
        body.show(Formula(LAMBDA, -sp.log(s)))
    c = _weight_symbols(ctx)
    if ctx.form == "data":
        update = (
            R * Y_I + sum(c[n] * _derivative_at(XHAT, n, variable) for n in range(order)) + sp.sqrt(V) * Z
        )
    else:
        update = (
            Y_I - sum(c[n] * _derivative_at(EPSHAT, n, variable) for n in range(order)) + sp.sqrt(W_VAR) * Z
        )
    body.say(f"The step then needs only the integrals of the powers, the weights {symbol}_n:")
    body.show(Formula(Y_NEXT, update))
    if ctx.form == "data" and variable == "s":
        body.say(
            "SymPy integrates c_n by parts (closed_form_weight), which needs antiderivatives of powers of (s - s_i) "
            "divided by phi only; the identity behind it is checked for a generic phi."
        )
    for n, q in enumerate(ctx.plan.weights):
        body.say(f"{_label(q)}, by definition:")
        body.show(Formula(c[n], _weight_integral(ctx, n)))
        if q.closed is not None:
            body.say("SymPy's closed form:")
            body.show(Formula(c[n], q.closed))
        else:
            why = _why_no_closed_form(ctx, n)
            if why is not None and ctx.form == "data" and n > 1 and ctx.plan.weights[1].closed is None:
                body.say(
                    "No closed form: without an antiderivative of 1/phi (see c_1) there is none for higher n."
                )
            elif why is not None:
                body.say("SymPy finds no antiderivative of:")
                body.show(why)
            elif variable != "s" and n > 0:
                body.say("Expanded in lambda, the weights with n > 0 are only integrated numerically.")
        for m, coefficient in enumerate(q.series[:2]):
            body.say(
                f"Small-step series of {_label(q)} (series_coefficients), coefficient {m} of {len(q.series)}:"
            )
            body.show(Formula(sp.Symbol(f"a_{m}"), coefficient))
    if any(q.kind == "quadrature" for q in ctx.plan.quantities):
        body.say(
            "Where there is no usable closed form the coefficient is integrated numerically: in tau = log(s/s_i) the "
            "integrand is smooth and one-signed over the whole step, so a fixed Gauss-Legendre rule is accurate "
            "at every step size."
        )
    body.say(
        "How each coefficient is evaluated in float64 was decided in mpmath (plan_coefficients): rounding errors are "
        "those of correctly rounded float64 arithmetic, emulated at 53 bits; truncation errors are computed at 30 "
        "digits. Nothing is measured on the machine that generates the page, so it is the same everywhere:"
    )
    notes = [_quantity_notes(ctx, q) for q in ctx.plan.quantities]
    if ctx.plan.uses_quadrature:
        low, high = _coefficients.SIGMA_GRID[0], _coefficients.SIGMA_GRID[-1]
        notes.append(
            f"Quadrature: {ctx.plan.quadrature_nodes} nodes; the truncation error is {ctx.plan.quadrature_error:.1e} "
            f"already with {ctx.plan.truncation_nodes} nodes, over s_i in [{low:g}, {high:g}] and step ratios "
            f"s_i+1/s_i in [{_coefficients.MIN_STEP_RATIO:g}, 1 - 1e-9] (longer steps are refused)."
        )
    checks = []
    if ctx.form == "data" and variable == "s":
        checks += _pick(ctx.generic, "integration by parts")
    checks += _pick(ctx.specific, prefix="c_")
    if ctx.form == "noise" and variable == "s":
        checks += _noise_closed_form_checks(ctx)
    for q in ctx.plan.quantities:
        if q.kind == "closed" and q.closed == 0:
            continue
        if q.kind == "closed":
            error, limit = max(q.closed_error, q.series_error), _coefficients.ROUNDING_TARGET
            how = "closed form" + (" and series" if q.series else "")
            method = "correctly rounded float64 emulated in mpmath, against 30+ digits"
        else:
            error, limit = ctx.plan.quadrature_error, _coefficients.TRUNCATION_TARGET
            how = f"quadrature, truncation with {ctx.plan.truncation_nodes} of {ctx.plan.quadrature_nodes} nodes"
            method = "mpmath at 30 digits, against a 96-point rule"
        checks.append(
            _numeric(
                f"{_label(q)} in float64",
                f"the float64 evaluation of {_label(q)} ({how}) is accurate to {limit:g} relative",
                method,
                error,
                limit,
                source="derive.coefficients.plan_coefficients",
            )
        )
    return Step(
        6, "weights", "Expanding the prediction: the weights", tuple(body), tuple(checks), tuple(notes)
    )


def _noise_closed_form_checks(ctx: _Context) -> list[CheckResult]:
    """The noise form's closed forms against the quadrature of their definitions (step_checks covers data only)."""
    out = []
    for q in ctx.plan.quantities:
        if q.closed is None:
            continue
        worst = 0.0
        for a, b in STEP_POINTS:
            with mpmath.workdps(CHECK_DPS):
                value = mpmath.mpf(
                    str(sp.N(q.closed.subs({sigma: sp.Rational(a), sigma_next: sp.Rational(b)}), CHECK_DPS))
                )
                # the plan's integrand and prefactor, integrated by the reference rule (the closed form unused)
                exact = _coefficients.mp_quantity(q, a, b)
                scale = abs(exact) if exact != 0 else 1
                worst = max(worst, float(abs(value - exact) / scale))
        out.append(
            _numeric(
                f"{_label(q)} closed form",
                f"SymPy's closed form of {_label(q)} equals the quadrature of its integral",
                "mpmath (Gauss-Legendre reference quadrature)",
                worst,
                1e-25,
            )
        )
    return out


# ---- 7. derivative estimates --------------------------------------------------------------------------------
def _derivatives(ctx: _Context) -> Step:
    order, variable = ctx.order, ctx.variable
    D = _interpolation.derivative_weights(order)
    deltas = _interpolation.offset_symbols(order)
    predicted = XHAT if ctx.form == "data" else EPSHAT
    previous = [sp.Symbol(f"s_i-{j}", positive=True) for j in range(1, order)]
    body = _Body()
    body.say(
        f"The derivatives are estimated from the last K = {order} predictions P[i], P[i-1], ...: the n-th "
        "derivative at the current node of the polynomial through them. D[n][j] is the n-th derivative of the "
        "j-th Lagrange basis polynomial (derivative_weights); unlike plain backward differences these estimates "
        "are exact for every polynomial of degree < K.",
    )
    if order > 1:
        body.say("The offsets of the stored nodes in the expansion variable (node_offset):")
        body.show(
            *(
                Formula(delta, _ersde.node_offset(variable).subs(sigma_next, node))
                for delta, node in zip(deltas, previous)
            )
        )
    body.show(Formula(sp.Symbol("D"), sp.Matrix(D)))
    body.say("so that")
    for n in range(order):
        body.show(
            Formula(
                _derivative_at(predicted, n, variable),
                sum(D[n][j] * PREDICTIONS[I_INDEX - j] for j in range(order)),
                relation="~",
            )
        )
    checks = []
    for k in range(1, order + 1):
        checks += _run_derive_checks("derive.checks.interpolation_check", _checks.interpolation_check, k)
    return Step(7, "derivatives", "Multistep derivative estimates", tuple(body), tuple(checks))


# ---- 8. the final update ------------------------------------------------------------------------------------
def _update(ctx: _Context) -> Step:
    order = ctx.order
    weights = _history_weights(ctx)
    std = sp.sqrt(V if ctx.form == "data" else W_VAR)
    ratio = R if ctx.form == "data" else sp.Integer(1)
    normalized = ratio * Y_I + _history_sum(order) + std * Z
    body = _Body()
    body.say(
        "Substituting the derivative estimates into the expanded step collects one weight per stored prediction"
        + (":" if ctx.form == "data" else " (the noise form subtracts the eps terms):"),
    )
    body.show(*(Formula(sp.Symbol(f"w_{j}", real=True), weights[j]) for j in range(order)))
    body.say("In normalized coordinates the update is")
    body.show(Formula(Y_NEXT, normalized))
    d = ctx.derivation
    family = d.family
    checks = []
    title = "The final update"
    try:
        update = _families.family_update(ctx.form, family.mean_reverting)
    except (ArithmeticError, DerivationError) as error:
        checks.append(
            CheckResult(
                "family update",
                "the family update reproduces the normalized one",
                "symbolic",
                str(error),
                False,
                "derive.symbolic.families.family_update",
            )
        )
        return Step(8, "update", title, tuple(body), tuple(checks))
    alpha, mu = _families.alpha, _families.mu
    total = sp.Symbol("Sigma_wP", real=True)  # sum_j w_j P_{i-j}
    m = mu if family.mean_reverting else sp.Integer(0)
    family_expr = update.A * X_I + update.B * total + update.C * Z + update.M * m
    # the normalized update with y = (x - mu)/alpha and, in the data form, predictions shifted by mu
    shifted = total - (m * _families.weight_sum if ctx.form == "data" else 0)
    expected_y = ratio * (X_I - m) / alpha + shifted + std * Z
    residual = (
        family_expr.subs({_families.ratio: ratio, _families.std: std}) - m
    ) / _families.alpha_next - expected_y
    if ctx.normalized:
        body.say(
            "Family ersde samples in these coordinates: the family update (family_update) at alpha = 1 and mu = 0 "
            "is this update, which the check confirms."
        )
        residual = residual.subs({alpha: 1, _families.alpha_next: 1})
    else:
        body.say(
            "In the family's own coordinates family_update substitutes y = (x - mu)/alpha into the normalized "
            "update and collects (alpha_next is alpha at the next step, Sigma_wP = sum_j w_j P_i-j and "
            "Sigma_w = sum_j w_j):"
        )
        body.show(Formula(X_NEXT, family_expr.subs({_families.ratio: ratio, _families.std: std})))
        prediction = ctx.spec.resolved_prediction
        if prediction == "velocity":
            body.say("The stored predictions are the model's velocity output converted to x0:")
            body.show(Formula(PREDICTIONS[I_INDEX], d.to_data[prediction]))
    checks.append(
        _identity(
            "family update",
            "mapping the family update back with y = (x - mu)/alpha gives the normalized update",
            residual,
        )
    )
    body.extend(_sample_step(ctx, weights))
    return Step(8, "update", title, tuple(body), tuple(checks))


#: the sample step whose coefficients the walk-through shows as numbers: s_i = 1 down to s_i+1 = 1/2
SAMPLE_STEP = (1.0, 0.5)


def _sample_nodes(variable: str, order: int) -> list[float]:
    """s_i, s_i-1, ... for equally spaced stored outputs in the expansion variable (the step's own spacing)."""
    a, b = SAMPLE_STEP
    if variable == "s":
        return [a + j * (a - b) for j in range(order)]
    return [a * (a / b) ** j for j in range(order)]


def _sample_step(ctx: _Context, weights: list[sp.Expr]) -> list:
    """The coefficients of one step as numbers (mpmath, 30 digits, printed to 10)."""
    a, b = SAMPLE_STEP
    order, variable = ctx.order, ctx.variable
    nodes = _sample_nodes(variable, order)
    digits = 10
    with mpmath.workdps(30):
        values = {
            q.label: _coefficients.mp_quantity(q, a, b) for q in (*ctx.plan.weights, ctx.plan.noise_variance)
        }
        offset = sp.lambdify((sigma, sigma_next), _ersde.node_offset(variable), "mpmath")
        deltas = [offset(mpmath.mpf(a), mpmath.mpf(node)) for node in nodes[1:]]
        ratio = mpmath.mpf(str(sp.N(ctx.step.ratio.subs({sigma: a, sigma_next: b}), 30)))

    def number(value) -> sp.Float:
        return sp.Float(mpmath.nstr(value, digits), digits)

    c = _weight_symbols(ctx)
    subs = {c[n]: sp.Float(mpmath.nstr(values[q.label], 25), 25) for n, q in enumerate(ctx.plan.weights)}
    subs.update(
        {
            delta: sp.Float(mpmath.nstr(value, 25), 25)
            for delta, value in zip(_interpolation.offset_symbols(order), deltas)
        }
    )
    variance = W_VAR if ctx.form == "noise" else V
    out: list = [
        (
            f"A sample step, as numbers: s_i = {a:g} down to s_i+1 = {b:g}, the stored outputs at "
            + ", ".join(f"s_i-{j} = {node:g}" for j, node in enumerate(nodes[1:], start=1))
            + (f" (equally spaced in {'s' if variable == 's' else 'lambda'})" if order > 1 else "")
            + f"; mpmath at 30 digits, printed to {digits}."
        )
    ]
    shown = [Formula(R, number(ratio))] if ctx.form == "data" else []
    shown.append(Formula(variance, number(values[ctx.plan.noise_variance.label])))
    shown += [Formula(c[n], number(values[q.label])) for n, q in enumerate(ctx.plan.weights)]
    shown += [
        Formula(sp.Symbol(f"w_{j}", real=True), number(sp.N(weights[j].subs(subs), 25))) for j in range(order)
    ]
    out.extend(shown)
    total = sum(sp.N(weights[j].subs(subs), 25) for j in range(order))
    out.append(
        "The weights sum to "
        + ("c_0" if ctx.form == "data" else "-e_0")
        + f" = {mpmath.nstr(sp.N(total, 25), digits)}: a constant prediction is carried exactly."
    )
    return out


# ---- 9. special cases ----------------------------------------------------------------------------------------
def _std_symbol(form: str) -> sp.Expr:
    """sqrt(v) (data form) or sqrt(v_epsilon) (noise form): the standard deviation of the injected noise."""
    return sp.sqrt(V if form == "data" else W_VAR)


def special_cases() -> tuple[CheckResult, ...]:
    """The solutions the ER SDE step reduces to, stated as identities and checked with SymPy (never cached).

    * phi = s is DDIM: r = s_{i+1}/s_i, no noise, and the first-order update is DDIM's
      x0 + s_{i+1} eps with eps = (y - x0)/s_i;
    * phi = s^2 is DDPM ancestral sampling: mean and variance of the first-order step are those of the
      posterior of y_{s_{i+1}} given y_{s_i} and x0, derived here by Gaussian conditioning;
    * the mean-reverting update is the plain one in x - mu (predictions shifted by mu in the data form);
    * VP is VE under y = x/alpha: the VP family's s(t) gives the EDM process at the same s, and the VP update
      divided by alpha_next is the VE (alpha = 1) update of y = x/alpha.
    """
    y, x0 = sp.symbols("y x0", real=True)
    out = []

    # DDIM
    step = _ersde.derive_step(s)
    c0 = _ersde.closed_form_weight(step, 0)
    mean = step.ratio * y + c0 * x0
    ddim = _families.derive_family("edm").marginal.subs(
        {_families.alpha: 1, _families.sigma_t: sigma_next, _families.x0: x0}
    )
    ddim = ddim.subs(_families.eps, (y - x0) / sigma)  # DDIM (eta = 0): x0_hat + s_{i+1} eps_hat
    equations = (
        Formula(R, step.ratio, "derived: derive_step(s).ratio"),
        Formula(V, step.noise_variance, "derived: noise_variance"),
        Formula(H**2 / G**2, step.noise_fraction, "derived: noise_fraction"),
        Formula(R * y + C_0 * x0, mean, "derived: the first-order step, c_0 = closed_form_weight(step, 0)"),
        Formula(Y_NEXT, ddim, "DDIM (eta = 0): x0 + s_i+1 eps with eps = (y - x0)/s_i"),
    )
    residual = (
        (step.ratio - sigma_next / sigma) ** 2
        + step.noise_variance**2
        + step.noise_fraction**2
        + (mean - ddim) ** 2
    )
    out.append(
        _identity(
            "phi = s is DDIM",
            "phi = s: r = s_i+1/s_i, no noise (gamma = 0, v = 0), and r y + c_0 x0 = x0 + s_i+1 (y - x0)/s_i, "
            "the DDIM update",
            residual,
            equations=equations,
            points=_step_points(),
        )
    )

    # DDPM ancestral sampling: the posterior of y' = x0 + s' e1 given y = y' + sqrt(s^2 - s'^2) e2
    e1, e2 = sp.symbols("e1 e2", real=True)
    y_next_noise = sigma_next * e1
    y_noise = y_next_noise + sp.sqrt(sigma**2 - sigma_next**2) * e2
    covariance = sum(sp.expand(y_next_noise).coeff(e) * sp.expand(y_noise).coeff(e) for e in (e1, e2))
    variance_y = sp.expand(sum(sp.expand(y_noise).coeff(e) ** 2 for e in (e1, e2)))
    variance_next = sum(sp.expand(y_next_noise).coeff(e) ** 2 for e in (e1, e2))
    posterior_mean = x0 + covariance / variance_y * (y - x0)
    posterior_variance = sp.factor(variance_next - covariance**2 / variance_y)
    step = _ersde.derive_step(s**2)
    c0 = _ersde.closed_form_weight(step, 0)
    mean = step.ratio * y + c0 * x0
    equations = (
        Formula(
            sp.Symbol("y_i"),
            sp.Symbol("y_i+1") + sp.sqrt(sigma**2 - sigma_next**2) * e2,
            "forward: y_i+1 = x0 + s_i+1 e1, then noise of variance s_i^2 - s_i+1^2 added (e1, e2 ~ N(0, 1))",
        ),
        Formula(sp.Symbol("Cov(y_i+1, y_i)"), covariance, "given x0"),
        Formula(sp.Symbol("Var(y_i)"), variance_y, "given x0"),
        Formula(
            sp.Symbol("mean_posterior"),
            x0 + sp.Mul(sp.UnevaluatedExpr(covariance / variance_y), y - x0, evaluate=False),
            "x0 + Cov/Var (y - x0)",
        ),
        Formula(R * y + C_0 * x0, mean, "derived: the mean of the first-order step for phi = s^2"),
        Formula(sp.Symbol("mean_posterior"), posterior_mean, "posterior mean, by Gaussian conditioning"),
        Formula(V, step.noise_variance, "derived: noise_variance"),
        Formula(
            sp.Symbol("var_posterior"), posterior_variance, "posterior variance, by Gaussian conditioning"
        ),
        Formula(H**2 / G**2, step.noise_fraction, "derived: noise_fraction"),
    )
    residual = (
        (mean - posterior_mean) ** 2
        + (step.noise_variance - posterior_variance) ** 2
        + (step.noise_fraction - 1) ** 2
    )
    out.append(
        _identity(
            "phi = s^2 is DDPM ancestral sampling",
            "phi = s^2: the first-order step has the mean and variance of the posterior of y at s_i+1 given y at "
            "s_i and x0 (Gaussian conditioning): the variance is DDPM's posterior variance betatilde (not beta), "
            "and gamma = g",
            residual,
            equations=equations,
            points=_step_points(),
        )
    )

    # mean reversion is a shift
    p = sp.Symbol("P", real=True)
    mu, alpha, alpha_next = _families.mu, _families.alpha, _families.alpha_next
    for form in ("data", "noise"):
        mr = _families.family_update(form, True)
        plain = _families.family_update(form, False)
        shown = {_families.ratio: R if form == "data" else sp.Integer(1), _families.std: _std_symbol(form)}
        mr_x = (mr.A * X_I + mr.B * _families.weight_sum * p + mr.C * Z + mr.M * mu).subs(shown)
        shifted_prediction = p - mu if form == "data" else p
        plain_x = (
            plain.A * (X_I - mu) + plain.B * _families.weight_sum * shifted_prediction + plain.C * Z + mu
        ).subs(shown)
        out.append(
            _identity(
                f"MR is a shift ({form} form)",
                "the mean-reverting update is the plain update applied to x - mu"
                + (" with predictions P - mu" if form == "data" else ""),
                mr_x - plain_x,
                equations=(
                    Formula(X_NEXT, mr_x, "family_update(form, mean_reverting=True)"),
                    Formula(
                        X_NEXT,
                        plain_x,
                        "family_update(form, mean_reverting=False) applied to x - mu, plus mu",
                    ),
                ),
            )
        )

    # VP is VE under y = x/alpha
    vp = _families.derive_family("vpsde")
    edm = _families.derive_family("edm")
    s_vp = vp.normalized_sigma
    s_edm_at = edm.normalized_sigma.subs(t, s_vp)
    out.append(
        _identity(
            "VP has the noise levels of VE",
            "the EDM (variance-exploding) process at time s_VP(t) has normalized noise level s_VP(t)",
            s_edm_at - s_vp,
            equations=(
                Formula(S_OF_T, s_vp, "the VP family's s(t) (linear schedule)"),
                Formula(sp.Function("s_EDM")(S_OF_T), s_edm_at, "the EDM family's s at time s(t)"),
            ),
            points=_schedule_points(vp.schedule),
        )
    )
    for form in ("data", "noise"):
        update = _families.family_update(form, False)
        shown = {_families.ratio: R if form == "data" else sp.Integer(1), _families.std: _std_symbol(form)}
        vp_x = (update.A * X_I + update.B * _families.weight_sum * p + update.C * Z).subs(shown)
        ve_y = (update.A * Y_I + update.B * _families.weight_sum * p + update.C * Z).subs(
            {alpha: 1, alpha_next: 1, **shown}
        )
        vp_y = (vp_x / alpha_next).subs(X_I, alpha * Y_I)
        out.append(
            _identity(
                f"VP update is the VE update ({form} form)",
                "the VP update divided by alpha_next, at x = alpha y, is the VE (alpha = 1) update of y",
                vp_y - ve_y,
                equations=(
                    Formula(Y_NEXT, sp.simplify(vp_y), "the VP update / alpha_next at x_i = alpha y_i"),
                    Formula(Y_NEXT, ve_y, "the VE update (alpha = alpha_next = 1)"),
                ),
            )
        )
    step = _ersde.derive_step(s)
    free = set().union(*(e.free_symbols for e in (step.ratio, step.noise_variance)))
    out.append(
        _identity(
            "coefficients depend on s only",
            "r and v are functions of s_i and s_i+1 alone, so every family with the same s takes the same step",
            sp.Integer(len(free - {sigma, sigma_next})),
        )
    )
    return tuple(out)


def _special(ctx: _Context) -> Step:
    phi = ctx.phi
    body = _Body()
    body.say(
        "The ER SDE step contains the classical samplers. These identities are derived and checked again for "
        "every spec (special_cases):",
        "phi = s is DDIM; phi = s^2 is DDPM ancestral sampling, whose step is the Gaussian posterior of the "
        "forward process; the mean-reverting family is the plain one shifted by mu; and VP is VE under "
        "y = x/alpha: any two families with the same s take the same step.",
        "This spec's phi:",
    )
    body.show(Formula(sp.Function("phi")(s), phi))
    if _checks._is_zero(phi - s):
        body.say(
            f"It is phi = s: at order 1 this solver is DDIM, at order {ctx.order} a multistep DDIM (a DPM-Solver-type ODE solver)."
        )
    elif _checks._is_zero(phi - s**2):
        body.say(
            f"It is phi = s^2: at order 1 this solver is DDPM ancestral sampling, at order {ctx.order} its multistep extension."
        )
    else:
        body.say("It lies between the two: it re-injects part of the forward noise.")
    if ctx.mean_reverting:
        body.say("This family is mean-reverting: its update is the plain one in x - mu.")
    elif not ctx.normalized:
        body.say("This family takes the VE step at its own s = sigma/alpha.")
    checks = list(special_cases())
    return Step(9, "special", "Special cases", tuple(body), tuple(checks))


# ---- 10. order conditions ------------------------------------------------------------------------------------
def _order_conditions(ctx: _Context) -> Step:
    order = ctx.order
    weights = _history_weights(ctx)
    c = _weight_symbols(ctx)
    deltas = (sp.Integer(0), *_interpolation.offset_symbols(order))
    sign = 1 if ctx.form == "data" else -1
    conditions = [
        Formula(
            sum(sp.Symbol(f"w_{j}", real=True) * deltas[j] ** p for j in range(order)),
            sign * sp.factorial(p) * c[p],
        )
        for p in range(order)
    ]
    body = _Body()
    body.say(
        f"The step is exact when the prediction is a polynomial of degree < K = {order} in u: the weights must "
        "integrate every power u^p, p < K, as the exact solution does (delta_0 = 0). These are the order "
        "conditions:",
    )
    body.show(*conditions)
    if ctx.form == "noise":
        body.say(
            "(The minus sign: the noise form's update subtracts the eps terms, y_i+1 = y_i - sum_n e_n "
            "epsilonhat^(n) + ..., so the weights w_j carry it.)"
        )
    body.say(
        f"With them the local error of one step is O(h^{order + 1}) in the step h = u_i+1 - u_i, so the multistep "
        f"method has order {order}. The conditions are checked exactly; the local order is measured with the "
        f"reference quadrature of the weights: the defect on the degree-{order} polynomial at two step sizes, "
        "with equally spaced history. Why the local order gives the global one: each step adds its local error "
        "and carries the earlier ones along multiplied by r = phi(s_i+1)/phi(s_i) < 1 (phi increases, since "
        "phi/s does not decrease), so the O(1/h) local errors of a run add up to O(h^K) at most. (The "
        "convergence studies of derive verify measure the global order of the emitted modules.)",
    )
    if ctx.spec.resolved_dynamics != "ode" and not _checks._is_zero(ctx.phi - s):
        body.say(
            f"This phi injects noise, so order {order} is the order of the drift only: the step's conditional mean "
            "(its noise set to zero) is exact for polynomial predictions of degree < K. As an SDE solver the "
            "sampler converges more slowly, because the model is evaluated at noisy states: derive verify "
            "measures strong order about 1 and weak order about min(K, 2) for the catalogue's SDE modules "
            "(docs/claims.md)."
        )
    checks = []
    # exact, with the weights symbolic and rational offsets
    rng = random.Random(order)
    values = [sp.Integer(0)] + sorted(
        {sp.Rational(rng.randint(1, 997), rng.randint(1, 97)) for _ in range(order - 1)}
    )
    while len(values) < order:
        values.append(values[-1] + 1)
    subs = dict(zip(deltas[1:], values[1:]))
    residual = sum(
        (sum(weights[j].subs(subs) * values[j] ** p for j in range(order)) - sign * sp.factorial(p) * c[p])
        ** 2
        for p in range(order)
    )
    checks.append(
        _identity(
            "order conditions",
            f"sum_j w_j delta_j^p = {'' if sign == 1 else '-'}p! {ctx.weight_symbol}_p for p < {order} "
            f"({ctx.weight_symbol}_n symbolic, exact rational offsets)",
            sp.expand(residual),
        )
    )
    checks.append(_local_order(ctx))
    return Step(10, "order", "Order conditions", tuple(body), tuple(checks))


def _local_order(ctx: _Context) -> CheckResult:
    """Defect of the step on (u - u_i)^K with history at equal spacing, at two step sizes: slope ~ K + 1."""
    order, variable, form = ctx.order, ctx.variable, ctx.form
    D = _interpolation.derivative_weights(order)
    deltas = _interpolation.offset_symbols(order)
    offset = sp.lambdify((sigma, sigma_next), _ersde.node_offset(variable), "mpmath")
    # the reference quadrature of c_0 .. c_K (the plan's integrands for n < K)
    quantities = [
        *ctx.plan.weights,
        _coefficients.weight_quantity_quadrature_only(ctx.step, order, form, variable),
    ]
    defects = []
    try:
        for relative in ORDER_STEPS:
            with mpmath.workdps(_coefficients.REFERENCE_DPS):
                a = mpmath.mpf(1)
                b = a * (1 - mpmath.mpf(relative))
                weights = [_coefficients.mp_quantity(q, float(a), float(b)) for q in quantities]
                nodes = [mpmath.mpf(0)] + [
                    offset(a, a * (1 + j * mpmath.mpf(relative))) for j in range(1, order)
                ]
                subs = {
                    deltas[j - 1]: sp.Float(nodes[j], _coefficients.REFERENCE_DPS) for j in range(1, order)
                }
                D_values = [
                    [
                        mpmath.mpf(str(sp.N(D[n][j].subs(subs), _coefficients.REFERENCE_DPS)))
                        for j in range(order)
                    ]
                    for n in range(order)
                ]
                estimate = mpmath.fsum(
                    weights[n] * D_values[n][j] * nodes[j] ** order
                    for n in range(order)
                    for j in range(order)
                )
                exact = math.factorial(order) * weights[order]
                defects.append(abs(exact - estimate))
        slope = float(mpmath.log(defects[0] / defects[1]) / mpmath.log(ORDER_STEPS[0] / ORDER_STEPS[1]))
    except (ArithmeticError, ValueError, ZeroDivisionError) as error:
        return CheckResult("local order", "", "", f"{type(error).__name__}: {error}", False, SOURCE)
    passed = abs(slope - (order + 1)) <= ORDER_TOLERANCE
    return CheckResult(
        "local order",
        f"the defect on a degree-{order} prediction shrinks like h^{order + 1} (measured slope within "
        f"{ORDER_TOLERANCE} of {order + 1}; h/s_i = {ORDER_STEPS[0]:g}, {ORDER_STEPS[1]:g})",
        f"mpmath-{_coefficients.REFERENCE_DPS}",
        f"slope {slope:.3f}",
        passed,
        SOURCE,
    )


# ---- the whole walk-through ----------------------------------------------------------------------------------
def _command(spec: Spec) -> str:
    from derive.spec import command_args

    return f"derive explain {command_args(spec)}"


def build_explanation(spec: Spec) -> Explanation:
    """Run the derivation of ``spec`` again, step by step, recording expressions and checks.

    Raises :class:`~derive.errors.DeriveError` subclasses for bad input (an unparsable or inadmissible phi);
    a failed identity does not raise but is recorded (``Explanation.failed``).
    """
    ctx = _context(spec)
    builders = (
        _forward,
        _coefficients_step,
        _reverse,
        _normalize,
        _exact,
        _weights,
        _derivatives,
        _update,
        _special,
        _order_conditions,
    )
    steps = tuple(builder(ctx) for builder in builders)
    dynamics = {"ode": "probability-flow ODE", "sde": "reverse SDE", "er": "ER SDE"}[spec.resolved_dynamics]
    where = "normalized coordinates" if spec.family == "ersde" else _families.FAMILIES[spec.family].title
    if spec.resolved_dynamics == "ode" or _checks._is_zero(ctx.phi - s):
        order_text = f"of order {spec.order}"
    else:
        order_text = f"of drift order {spec.order} (as an SDE solver: strong order about 1, weak about 2)"
    title = f"{dynamics} solver {order_text} for the {where} ({spec.resolved_prediction} prediction)"
    legend = (
        (
            "Notation (docs/notation.md): s_i and s_i+1 are the normalized noise levels at the start and the end of "
            "a step (s_i+1 < s_i; sigma and sigma_next in the derivation code); u is the expansion variable and "
            "h = u_i+1 - u_i the step in it; gamma is the reverse SDE's diffusion coefficient, g the forward one; "
            "xhat_0 and epsilonhat are the model's data and noise predictions, x0 and epsilon the true ones; "
            "c_n (e_n) the Taylor weights, w_j the weight of the stored prediction P_i-j; v (v_epsilon) the "
            "variance of the injected noise; z ~ N(0, I)."
        ),
    )
    return Explanation(spec, _command(spec), title, legend, steps, ctx.phi, ctx.step, ctx.plan)

"""Steps 6-8 of the walk-through: the expansion and its weights, the derivative estimates, the final update."""

from __future__ import annotations

import mpmath
import sympy as sp

from derive import checks as _checks
from derive import coefficients as _coefficients
from derive.errors import DerivationError
from derive.explain.model import (
    CHECK_DPS,
    EPSHAT,
    I_INDEX,
    LAMBDA,
    PREDICTIONS,
    STEP_POINTS,
    W_VAR,
    X_I,
    X_NEXT,
    XHAT,
    Y_I,
    Y_NEXT,
    CheckResult,
    Formula,
    R,
    Step,
    V,
    Z,
    _Body,
    _Context,
    _derivative_at,
    _expansion_factor_in_s,
    _history_sum,
    _history_weights,
    _identity,
    _numeric,
    _pick,
    _run_derive_checks,
    _u_symbols,
    _weight_integral,
    _weight_symbols,
    s,
    sigma,
    sigma_next,
)
from derive.symbolic import ersde as _ersde
from derive.symbolic import families as _families
from derive.symbolic import interpolation as _interpolation


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

"""Steps 9-10 of the walk-through: the special cases (DDIM, DDPM, mean reversion, VP as VE) and the order
conditions."""

from __future__ import annotations

import math
import random

import mpmath
import sympy as sp

from derive import checks as _checks
from derive import coefficients as _coefficients
from derive.explain.model import (
    C_0,
    ORDER_STEPS,
    ORDER_TOLERANCE,
    S_OF_T,
    SOURCE,
    W_VAR,
    X_I,
    X_NEXT,
    Y_I,
    Y_NEXT,
    CheckResult,
    Formula,
    G,
    H,
    R,
    Step,
    V,
    Z,
    _Body,
    _Context,
    _history_weights,
    _identity,
    _schedule_points,
    _step_points,
    _weight_symbols,
    s,
    sigma,
    sigma_next,
    t,
)
from derive.symbolic import ersde as _ersde
from derive.symbolic import families as _families
from derive.symbolic import interpolation as _interpolation


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

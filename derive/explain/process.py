"""Steps 1-5 of the walk-through: the forward process, f, g^2 and lambda, the reverse dynamics, normalized
coordinates and the exact solution of one step."""

from __future__ import annotations

import sympy as sp

from derive.explain.model import (
    EPSHAT,
    EPSHAT_SYMBOL,
    LAMBDA,
    OUTPUT,
    S_OF_T,
    STEP_POINTS,
    W_VAR,
    XHAT,
    XHAT_SYMBOL,
    Y_0,
    Y_I,
    Y_NEXT,
    B,
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
    _identity,
    _pick,
    _schedule_points,
    _step_points,
    _time_to_s,
    s,
    sigma,
    sigma_next,
    t,
)
from derive.symbolic import admissibility as _admissibility
from derive.symbolic import ersde as _ersde
from derive.symbolic import families as _families


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

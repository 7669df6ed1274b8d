r"""``derive explain --variant NAME``: a published sampler derived as a special case of the derivation, or as
a stated departure from it.

A variant (:mod:`derive.variants`) fixes, as its authors published it, how the derivatives of the prediction
are estimated from the stored outputs and which weight multiplies each estimate. Written out, every stage is
``y_{i+1} = r y_i + sum_j W_j P_{i-j} + sqrt(v) z`` with weights ``W_j`` that are rational functions of the
framework's Taylor weights ``c_n`` (``e_n`` in the noise form), the node offsets ``delta_j = u_{i-j} - u_i``
and the step ``h = u_{i+1} - u_i``. The walk-through

1. compares the ``W_j`` with the derived weights ``w_j = sum_n c_n D_nj`` (equal: the variant is a special
   case; different: a departure, and the difference is shown);
2. evaluates the order conditions ``sum_j W_j delta_j^p = p! c_p`` (``-p! e_p`` in the noise form) and prints
   each defect ``d_p``; a step is exact for a prediction ``sum_p a_p (u - u_i)^p / p!`` up to
   ``sum_p a_p d_p / p!``;
3. expands a nonzero defect in the step for equally spaced nodes (``delta_j = -j h``): exactly where SymPy
   integrates the weights (phi = s and phi = s^2 in lambda), else with the leading term
   ``c_n = kappa h^(n+1)/(n+1)! (1 + O(h))`` that every exponential-integrator weight has.

For DDPM the posterior variance ``beta~`` of the published sampler is compared with the ER SDE's ``v``, and
the variance ``beta`` (diffusers' ``fixed_large``) is shown as the departure it is. Nothing here prints: the
result is an :class:`~derive.explain.model.Explanation`, printed by :mod:`derive.explain.render`.
"""

from __future__ import annotations

import functools
import random

import sympy as sp

from derive import variants as _variants
from derive.errors import DerivationError
from derive.explain.model import (
    Y_I,
    Y_NEXT,
    CheckResult,
    Explanation,
    Formula,
    R,
    Step,
    V,
    Z,
    _Body,
    _identity,
)
from derive.symbolic import ersde as _ersde
from derive.symbolic.interpolation import derivative_weights

SOURCE = "derive.explain.variant"
H = _variants.step
KAPPA = sp.Symbol("kappa", real=True)
_DELTAS = (sp.Integer(0), _variants.delta1, _variants.delta2)
_W, _DELTA = sp.IndexedBase("W"), sp.IndexedBase("delta")
_J = sp.Symbol("j", integer=True, nonnegative=True)


def _weight_symbols(form: str, count: int) -> tuple[sp.Symbol, ...]:
    return _variants.taylor_symbols(form)[:count]


def _sign(form: str) -> int:
    return 1 if form == "data" else -1


def _derived_weights(k: int, form: str) -> list[sp.Expr]:
    """w_j = sign sum_n c_n D_nj for k stored outputs (the derived multistep update)."""
    D = derivative_weights(k)
    c = _weight_symbols(form, k)
    return [sp.factor(_sign(form) * sum(c[n] * D[n][j] for n in range(k))) for j in range(k)]


def _defect(weights, form: str, p: int) -> sp.Expr:
    """d_p = sum_j W_j delta_j^p - sign p! c_p (0 when the stage integrates u^p exactly)."""
    c = _variants.taylor_symbols(form)
    total = sum(w * _DELTAS[j] ** p for j, w in enumerate(weights))
    return sp.factor(sp.cancel(sp.together(total - _sign(form) * sp.factorial(p) * c[p])))


@functools.lru_cache(maxsize=8)
def _exact_weights(phi_text: str, form: str, variable: str) -> tuple[sp.Expr, ...] | None:
    """c_0..c_3 (e_0..e_3) as functions of the step h where SymPy integrates them (phi = s, s^2 in lambda)."""
    if variable != "lambda" or phi_text not in ("s", "s**2"):
        return None
    from derive.coefficients import weight_quantity

    step = _ersde.derive_step(sp.sympify(phi_text, locals={"s": _ersde.s}))
    out = []
    for n in range(4):
        q = weight_quantity(step, n, form, closed=False, variable="lambda")
        value = sp.integrate(q.integrand.rewrite(sp.exp), (_ersde.v, -H, 0)) * q.prefactor
        out.append(sp.simplify(value.subs(_ersde.sigma_next, _ersde.sigma * sp.exp(-H))))
    return tuple(out)


def _equal_steps(expr: sp.Expr) -> sp.Expr:
    return expr.subs({_variants.delta1: -H, _variants.delta2: -2 * H})


def _leading(expr: sp.Expr, exact: tuple[sp.Expr, ...] | None, form: str) -> tuple[sp.Expr, str]:
    """The leading term in h of a defect at equal steps, and how the weights were substituted."""
    c = _variants.taylor_symbols(form)
    expr = _equal_steps(expr)
    if exact is not None:
        values, how = dict(zip(c, exact)), "the weights integrated by SymPy"
    else:
        values = {c[n]: KAPPA * H ** (n + 1) / sp.factorial(n + 1) for n in range(4)}
        how = "the leading terms c_n = kappa h^(n+1)/(n+1)!"
    value = sp.simplify(expr.subs(values))
    for order in range(1, 8):
        term = sp.series(value, H, 0, order + 1).removeO()
        term = sp.simplify(term)
        if term != 0:
            return sp.factor(term), how
    return sp.Integer(0), how


def _numeric_defect(stage: _variants.Stage, form: str, p: int) -> tuple[sp.Expr, dict]:
    """d_p by another route: the published update (estimates substituted) applied to outputs on u^p at
    rational offsets, minus sign p! c_p (to be compared with the defect of the collected weights there)."""
    first, second = _numeric_nodes(stage.k, p)
    nodes = {_variants.delta1: first, _variants.delta2: second}
    values = {_variants.outputs[j]: _DELTAS[j].subs(nodes) ** p for j in range(stage.k)}
    c = _variants.taylor_symbols(form)
    applied = stage.prediction_term.subs(values).subs(nodes)
    return sp.expand(applied - _sign(form) * sp.factorial(p) * c[p]), nodes


def _stage_step(number: int, variant: _variants.Variant, stage: _variants.Stage) -> Step:
    form, k = variant.form, stage.k
    weights = stage.output_weights()
    derived = _derived_weights(k, form)
    exact = _exact_weights(variant.base_spec.phi_text, form, variant.variable)
    body = _Body()
    body.say(f"With {k} stored output(s): the published prediction term and its derivative estimates:")
    body.show(Formula(sp.Symbol("P_pub"), stage.published, "as published"))
    for estimate in stage.estimates:
        body.show(Formula(estimate.symbol, estimate.expr, f"~ {estimate.scale} x d^{estimate.derivative}/du"))
    body.say("Collected per stored output P_{i-j} (m_j), the published weights W_j and the derived ones w_j:")
    for j in range(k):
        body.show(
            Formula(sp.Symbol(f"W_{j}"), weights[j], "published"),
            Formula(sp.Symbol(f"w_{j}"), derived[j], "derived"),
        )
    difference = [sp.factor(sp.cancel(sp.together(weights[j] - derived[j]))) for j in range(k)]
    checks: list[CheckResult] = []
    same = all(d == 0 for d in difference)
    if same:
        body.say(
            f"W_j = w_j for every j: with {k} stored output(s) this sampler is the derived update itself, a special "
            "case of the derivation (same phi, same expansion variable, same polynomial)."
        )
    else:
        body.say("W_j - w_j, the departure from the derived update:")
        body.show(*(Formula(sp.Symbol(f"W_{j} - w_{j}"), difference[j]) for j in range(k)))
    sign_text = "" if form == "data" else "-"
    symbol = "c" if form == "data" else "e"
    body.say(
        f"The order conditions sum_j W_j delta_j^p = {sign_text}p! {symbol}_p (delta_0 = 0): the defect "
        f"d_p = sum_j W_j delta_j^p - ({sign_text}p! {symbol}_p) for p = 0 ... {k}. A k-point rule can satisfy "
        f"p < k; p = {k} is shown to say where the derived update's own error starts."
    )
    first_failure = None
    for p in range(k + 1):
        defect = _defect(weights, form, p)
        body.show(Formula(sp.Symbol(f"d_{p}"), defect))
        applied, nodes = _numeric_defect(stage, form, p)
        residual = applied - defect.subs(nodes)
        checks.append(
            _identity(
                f"d_{p} (k = {k})",
                f"the published update applied to outputs on u^{p} at rational offsets leaves d_{p}",
                sp.expand(residual),
                source=SOURCE,
            )
        )
        if defect != 0 and p < k and first_failure is None:
            first_failure = (p, defect)
    if first_failure is None:
        body.say(
            f"Every condition p < {k} holds exactly: the step integrates polynomials of degree < {k} exactly, its "
            f"local error is O(h^{k + 1}) and the multistep method has order {k}."
        )
        leading, how = _leading(_defect(weights, form, k), exact, form)
        body.say(f"The first defect, d_{k}, at equal steps (delta_j = -j h), with {how}:")
        body.show(Formula(sp.Symbol(f"d_{k}"), leading, relation="~"))
        order = k
    else:
        p, defect = first_failure
        leading, how = _leading(defect, exact, form)
        power = sp.degree(sp.factor(leading).as_numer_denom()[0], H) - sp.degree(
            sp.factor(leading).as_numer_denom()[1], H
        )
        c = _variants.taylor_symbols(form)
        exact_term = _sign(form) * sp.factorial(p) * c[p]
        fraction = sp.cancel(sp.together((defect + exact_term) / exact_term))
        if fraction.is_Rational:
            body.say(
                f"The condition p = {p} fails, and by a constant factor: the update carries {fraction} of the "
                f"p = {p} Taylor term where the exact step needs all of it,"
            )
            body.show(
                Formula(
                    sp.Sum(_W[_J] * _DELTA[_J] ** p, (_J, 0, k - 1)),
                    sp.Mul(fraction, sp.UnevaluatedExpr(exact_term), evaluate=False),
                    f"instead of {exact_term}",
                )
            )
            body.say(
                f"so the weight of the published estimate of the derivative of order {p} is {fraction} times the "
                f"one the Taylor expansion asks for: multiplied by {1 / fraction} it is the derived update "
                "(the departure W_j - w_j above is that missing part)."
            )
        u = sp.Symbol("u")
        outputs = {_variants.outputs[j]: _DELTAS[j] ** p for j in range(k)}
        for estimate in stage.estimates:
            value = sp.factor(sp.cancel(sp.together(estimate.expr.subs(outputs))))
            wanted = sp.diff(u**p, u, estimate.derivative).subs(u, 0) * estimate.scale
            if sp.cancel(value - wanted) != 0:
                body.say(
                    f"Why: on the prediction (u - u_i)^{p} the estimate {estimate.symbol} gives the value below "
                    f"instead of {wanted}, and its weight carries the difference into the step:"
                )
                body.show(Formula(estimate.symbol, value, f"on (u - u_i)^{p}"))
        body.say(
            f"The step is off by d_{p}/{p}! times the derivative of order {p} of the prediction. At equal steps "
            f"(delta_j = -j h), with {how}:"
        )
        body.show(
            Formula(sp.Symbol(f"d_{p}"), leading, relation="~"),
            Formula(sp.Symbol(f"d_{p}/{p}!"), sp.factor(leading / sp.factorial(p)), relation="~"),
        )
        order = min(k, int(power) - 1)
        body.say(
            f"A local error O(h^{power}) accumulates over O(1/h) steps to O(h^{power - 1}): order {order}"
            + (f", not {k}." if order < k else f"; the defect changes the error constant, not the order {k}.")
        )
    title = f"{k} stored output(s): " + ("the derived update" if same else "a departure")
    return Step(number, f"stage{k}", title, tuple(body), tuple(checks), (f"order {order}",))


@functools.lru_cache(maxsize=16)
def _numeric_nodes(k: int, p: int) -> tuple[sp.Rational, sp.Rational]:
    rng = random.Random(1000 + 10 * k + p)
    first = -sp.Rational(rng.randint(1, 90), rng.randint(91, 99))
    return first, first - sp.Rational(rng.randint(1, 90), rng.randint(91, 99))


def _shared_step(variant: _variants.Variant) -> Step:
    spec = variant.base_spec
    body = _Body()
    body.say(
        f"{variant.title}. Published in: " + "; ".join(variant.source) + ".",
        f"What it shares with the derivation: phi = {spec.phi_text}, the {variant.form} form, expansion in "
        f"u = {'s' if variant.variable == 's' else 'lambda = -log s'}, the ratio r, the noise variance and the "
        f"Taylor weights {'c_n' if variant.form == 'data' else 'e_n'} of the exact step (derive explain "
        f"{'--family ersde --order ' + str(variant.order) + ' --phi ' + spec.phi_text}"
        + (" --prediction noise" if variant.form == "noise" else "")
        + (" --variable lambda" if variant.variable == "lambda" else "")
        + " derives them). What it fixes itself: the derivative estimates and the weight of each.",
        f"h = u_i+1 - u_i is the step in u, delta_j = u_i-j - u_i the offsets of the stored outputs; claimed order: "
        f"{variant.claim.order} ({variant.claim.where}).",
    )
    if variant.correctors:
        body.say(
            "This sampler also corrects each step with the output at the predicted state (UniC); only its predictor "
            "stages are analysed below (the corrector's order conditions are checked by derive verify --variant)."
        )
    checks = [
        CheckResult(
            name="transcription",
            statement=text,
            method="symbolic",
            residual="0",
            passed=True,
            source=("derive.variants.check_variant"),
        )
        for text in _checked_transcription(variant.key)
    ]
    return Step(1, "published", "The published update", tuple(body), tuple(checks))


def _checked_transcription(key: str) -> tuple[str, ...]:
    try:
        return _variants.check_variant(key)
    except DerivationError as error:  # recorded as a failed check by the caller
        return (f"FAILED: {error}",)


def _ddpm_step(number: int) -> Step:
    """DDPM's posterior variance beta~ is the ER SDE's v at phi = s^2; beta is a departure."""
    s_i, s_n = _ersde.sigma, _ersde.sigma_next
    abar = 1 / (1 + s_i**2)  # alpha_bar_t = alpha^2 with s^2 = (1 - alpha_bar)/alpha_bar
    abar_next = 1 / (1 + s_n**2)
    beta = 1 - abar / abar_next
    beta_tilde = (1 - abar_next) / (1 - abar) * beta
    step = _ersde.derive_step(_ersde.s**2)
    beta_sym, beta_tilde_sym = sp.Symbol("beta_t"), sp.Symbol("betatilde_t")
    abar_sym, abar_next_sym = sp.Symbol("alphabar_t"), sp.Symbol("alphabar_t-1")
    body = _Body()
    body.say(
        "DDPM (Ho et al. 2020) samples x_t-1 = mean + sigma_t z in the process's own coordinates, with "
        "beta_t = 1 - alphabar_t/alphabar_t-1 and either the posterior variance betatilde_t (diffusers' "
        "variance_type='fixed_small', the variance of q(x_t-1 | x_t, x_0)) or beta_t itself ('fixed_large'). "
        "In normalized coordinates y = x/alpha the variance is divided by alphabar_t-1 = alpha_t-1^2, and "
        "alphabar = 1/(1 + s^2):"
    )
    body.show(
        Formula(beta_sym, 1 - abar_sym / abar_next_sym),
        Formula(beta_tilde_sym, (1 - abar_next_sym) / (1 - abar_sym) * beta_sym),
        Formula(sp.Symbol("alphabar"), 1 / (1 + _ersde.s**2)),
    )
    v_tilde = sp.factor(sp.simplify(beta_tilde / abar_next))
    v_beta = sp.factor(sp.simplify(beta / abar_next))
    body.say("Substituted, the two normalized variances and the ER SDE's v at phi = s^2:")
    body.show(
        Formula(beta_tilde_sym / abar_next_sym, v_tilde),
        Formula(beta_sym / abar_next_sym, v_beta),
        Formula(V, sp.factor(step.noise_variance), "derived: noise_variance at phi = s^2"),
        Formula(beta_sym / beta_tilde_sym, sp.factor(sp.simplify(beta / beta_tilde))),
    )
    body.say(
        "So DDPM with betatilde is the ER SDE step at phi = s^2 (its mean, the posterior mean, is checked in the "
        "special cases). DDPM with beta keeps that mean, whose factor r = s_i+1^2/s_i^2 fixes phi = s^2 (up to "
        "a constant, which cancels) and with it v; its variance is larger by the factor beta_t/betatilde_t > 1 "
        "above, so no phi gives it: DDPM with beta is a departure from the ER SDE step (more noise than the "
        "reverse SDE's own), not a member of the family."
    )
    checks = [
        _identity(
            "betatilde is v",
            "betatilde_t/alphabar_t-1 = v(phi = s^2) = s_i+1^2 (1 - s_i+1^2/s_i^2)",
            v_tilde - step.noise_variance,
            equations=(Formula(beta_tilde / abar_next, step.noise_variance, "substituted, unsimplified"),),
            source=SOURCE,
        ),
        _identity(
            "beta is not v",
            "beta_t/alphabar_t-1 - v = (s_i^2 - s_i+1^2)^2/(s_i^2 (1 + s_i^2)), nonzero for every step",
            v_beta - step.noise_variance - (s_i**2 - s_n**2) ** 2 / (s_i**2 * (1 + s_i**2)),
            source=SOURCE,
        ),
    ]
    return Step(number, "ddpm", "DDPM: the posterior variance betatilde", tuple(body), tuple(checks))


def _summary_step(number: int, variant: _variants.Variant, stages: list[Step]) -> Step:
    orders = [int(step.notes[0].split()[-1]) for step in stages]
    order = orders[-1]
    body = _Body()
    body.say(
        f"Claimed order {variant.claim.order}; by the order conditions above, order {order} with exact starting "
        "values (the last stage is the one used once enough outputs are stored). "
        + (
            "The claim holds."
            if order >= variant.claim.order
            else f"The claim does not hold: the stage that should give order {variant.claim.order} gives {order}."
        ),
        "derive verify --variant " + variant.key + " measures the order of the emitted module "
        "(docs/claims.md lists every published sampler).",
    )
    body.show(Formula(Y_NEXT, R * Y_I + sp.Symbol("P_pub") + sp.sqrt(V) * Z))
    return Step(number, "summary", "Verdict", tuple(body), ())


def build_variant_explanation(key: str) -> Explanation:
    """The walk-through of a published sampler (``derive explain --variant KEY``); SpecError if unknown."""
    variant = _variants.get_variant(key)
    steps = [_shared_step(variant)]
    for stage in variant.stages:
        steps.append(_stage_step(len(steps) + 1, variant, stage))
    stage_steps = steps[1:]
    if variant.key == "ddpm":
        steps.append(_ddpm_step(len(steps) + 1))
    steps.append(_summary_step(len(steps) + 1, variant, stage_steps))
    failed = [text for text in _checked_transcription(variant.key) if text.startswith("FAILED")]
    if failed:
        steps[0] = Step(
            1,
            "published",
            steps[0].title,
            steps[0].body,
            (CheckResult("transcription", failed[0], "symbolic", failed[0], False, "derive.variants"),),
        )
    legend = (
        "s_i and s_i+1 are the noise levels at both ends of a step; u is the expansion variable, h = u_i+1 - u_i "
        "the step in it and delta_j = u_i-j - u_i the offset of the j-th stored output m_j = P_i-j; c_n (e_n in "
        "the noise form) are the Taylor weights of the exact step, kappa = c_0/h to leading order.",
    )
    return Explanation(
        variant.base_spec, f"derive explain --variant {variant.key}", variant.title, legend, tuple(steps)
    )

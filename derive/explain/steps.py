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

from derive import checks as _checks
from derive.explain.model import (
    CheckResult,
    Explanation,
    Formula,
    Step,
    _context,
    s,
)
from derive.explain.process import (
    _coefficients_step,
    _exact,
    _forward,
    _normalize,
    _reverse,
)
from derive.explain.special import (
    _order_conditions,
    _special,
    special_cases,
)
from derive.explain.weights import (
    _derivatives,
    _update,
    _weights,
)
from derive.families import DYNAMICS
from derive.families import FAMILIES as SPEC_FAMILIES
from derive.spec import Spec


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
    dynamics = DYNAMICS[spec.resolved_dynamics].text
    where = SPEC_FAMILIES[spec.family].title
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


__all__ = ["CheckResult", "Explanation", "Formula", "Step", "build_explanation", "special_cases"]

"""Variant -> module text: the base derivation's routines plus one printed routine per published stage."""

from __future__ import annotations

import sympy as sp

from derive.derivation import derive_spec
from derive.emit.printer import make_routine
from derive.emit.render import (
    _environment,
    _routines,
    _runtime_text,
    format_source,
    shared_context,
    step_text,
)
from derive.variants import Variant, check_variant, delta1, delta2, step, taylor_symbols

_OFFSETS = (delta1, delta2)


def _stage_lines(variant: Variant) -> list[str]:
    """The published update of each stage, and its estimates, as text for the module docstring."""
    lines = []
    for stage in variant.stages:
        lines.append(f"k = {stage.k}: P = {sp.sstr(stage.published)}")
        for estimate in stage.estimates:
            lines.append(f"       {estimate.symbol} = {sp.sstr(estimate.expr)}")
    for p, stage in enumerate(variant.correctors, 1):
        lines.append(f"corrector after k = {p}: P = {sp.sstr(stage.published)}")
    return lines


def render_variant(variant: Variant) -> str:
    """The text of the generated module for ``variant`` (formatted)."""
    check_variant(variant.key)
    spec = variant.base_spec
    step_derivation, plan = derive_spec(spec)
    routines, weight_calls, variance_call, _ = _routines(spec, step_derivation, plan)
    routines = [r for r in routines if not r.name.startswith("_derivative_weights_")]
    weights = taylor_symbols(variant.form)[: variant.weights_needed]
    stage_routines, corrector_routines = [], []
    for stage in variant.stages:
        name = f"_stage_{stage.k}"
        routines.append(
            make_routine(
                name,
                [*weights, step, *_OFFSETS[: stage.k - 1]],
                list(stage.output_weights()),
                f"Weights of the stored outputs m0 (newest) .. m{stage.k - 1} in P with {stage.k} outputs.",
                prefix="w",
            )
        )
        stage_routines.append((stage.k, name))
    for p, stage in enumerate(variant.correctors, 1):
        name = f"_corrector_{p}"
        routines.append(
            make_routine(
                name,
                [*weights, step, *_OFFSETS[: p - 1]],
                list(stage.output_weights()),
                f"Weights of mt (the output at the predicted state), m0 .. m{p - 1} in the corrected P after {p} outputs.",
                prefix="w",
            )
        )
        corrector_routines.append((p, name))
    context = shared_context(variant.as_dict(), variant.digest, plan, routines, weight_calls, variance_call)
    context |= {
        "key": variant.key,
        "title": variant.title,
        "source": list(variant.source),
        "claim_order": variant.claim.order,
        "claim_where": variant.claim.where,
        "peer": None if variant.peer is None else f"{variant.peer.name}({variant.peer.config})",
        "derived": variant.derived,
        "form": variant.form,
        "order": variant.order,
        "phi_text": sp.sstr(step_derivation.phi),
        "ratio_text": step_text(step_derivation.ratio) if variant.form == "data" else "1",
        "variance_text": step_text(step_derivation.noise_variance)
        if variant.form == "data"
        else "int_{s_{i+1}}^{s_i} h(s)^2 ds",
        "variable_text": "s" if variant.variable == "s" else "lambda = log(alpha/sigma) = -log s",
        "weight_names": [str(w) for w in weights],
        "stage_lines": _stage_lines(variant),
        "stage_routines": stage_routines,
        "corrector_routines": corrector_routines,
    }
    context["runtime"] = _runtime_text(
        [
            "contract",
            "variant",
            *(["quadrature"] if context["quadrature_nodes"] else []),
            *(["series"] if context["any_series"] else []),
        ]
    )
    text = _environment().get_template("variant.py.jinja").render(**context)
    return format_source(text)

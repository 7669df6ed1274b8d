"""Spec -> module text. Builds the template context from the derivation; the template only lays it out."""

from __future__ import annotations

import functools
import json
import pathlib
import shutil
import subprocess

import jinja2
import sympy as sp

from derive.checks import generic_checks, interpolation_check, step_checks
from derive.coefficients import CoefficientPlan, Quantity, _mp_quad_weight, plan_coefficients
from derive.emit.printer import Polyval, Routine, make_routine
from derive.quadrature import gauss_legendre
from derive.spec import Spec
from derive.symbolic.admissibility import check_phi
from derive.symbolic.ersde import ERSDEStep, derive_step, h, s, sigma, sigma_next, v
from derive.symbolic.expression import parse_expression
from derive.symbolic.interpolation import derivative_weights, offset_symbols

TEMPLATE_DIR = pathlib.Path(__file__).resolve().parent.parent.parent / "templates"
LINE_LENGTH = 110


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    loader = jinja2.FileSystemLoader(str(template_dir()))
    return jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def template_dir() -> pathlib.Path:
    """templates/ of a source checkout, or the copy installed as package data."""
    if TEMPLATE_DIR.is_dir():
        return TEMPLATE_DIR
    from importlib import resources

    return pathlib.Path(str(resources.files("derive._templates")))


@functools.lru_cache(maxsize=None)
def derive_spec(spec: Spec) -> tuple[ERSDEStep, CoefficientPlan]:
    """Parse and admit phi, derive the step, run every check, plan the float64 evaluation."""
    phi = parse_expression(spec.phi_text)
    check_phi(phi, s)
    step = derive_step(phi)
    generic_checks()
    plan = plan_coefficients(step, spec.order)
    closed = {int(q.name[1:]): q.closed for q in plan.weights if q.closed is not None}
    step_checks(step, closed, lambda n, a, b: _mp_quad_weight(step, n, a, b))
    for k in range(1, spec.order + 1):
        interpolation_check(k)
    return step, plan


def _series_expression(q: Quantity) -> sp.Expr:
    """prefactor h^p sum_m a_m(sigma) h^m: the small-step series (summed by Horner's rule)."""
    return q.prefactor * h**q.series_power * Polyval(h, *q.series)


def _quantity_routines(q: Quantity) -> tuple[list[Routine], str]:
    """The routines for one coefficient and the call that evaluates it for all steps at once."""
    if q.kind == "closed" and q.closed == 0:
        return [], "torch.zeros_like(sigma)"
    if q.kind == "closed":
        closed = make_routine(f"_{q.name}_closed", [sigma, sigma_next], [q.closed], f"{q.label} in closed form.", tensor_like="sigma")
        if not q.series:
            return [closed], f"{closed.name}(sigma, sigma_next)"
        series = make_routine(
            f"_{q.name}_series",
            [sigma, sigma_next, h],
            [_series_expression(q)],
            f"{q.label} by its small-step series ({len(q.series)} terms), h = sigma - sigma_next.",
            tensor_like="sigma",
        )
        return [closed, series], f"_switch(sigma, sigma_next, {q.threshold!r}, {closed.name}, {series.name})"
    integrand = make_routine(
        f"_{q.name}_integrand", [sigma, v], [q.integrand], f"Integrand of {q.label} in v = log(s / sigma).", tensor_like="v"
    )
    prefactor = make_routine(
        f"_{q.name}_prefactor", [sigma, sigma_next], [q.prefactor], f"Factor in front of the integral of {q.label}.", tensor_like="sigma"
    )
    return [integrand, prefactor], f"_quadrature({integrand.name}, {prefactor.name}, sigma, sigma_next)"


def _routines(spec: Spec, step: ERSDEStep, plan: CoefficientPlan):
    routines: list[Routine] = [
        make_routine("noise_scale_fn", [s], [step.phi], "phi(s), the noise-scale function.", tensor_like="s"),
        make_routine("_ratio", [sigma, sigma_next], [step.ratio], "r = phi(sigma_next) / phi(sigma).", tensor_like="sigma"),
    ]
    weight_calls = []
    for q in plan.weights:
        extra, call = _quantity_routines(q)
        routines.extend(extra)
        weight_calls.append(call)
    extra, variance_call = _quantity_routines(plan.noise_variance)
    routines.extend(extra)
    derivative_routines = []
    for k in range(1, spec.order + 1):
        D = derivative_weights(k)
        name = f"_derivative_weights_{k}"
        routines.append(
            make_routine(
                name,
                list(offset_symbols(k)),
                [D[n][j] for n in range(k) for j in range(k)],
                f"Row n: n-th derivative at s_i of the polynomial through {k} outputs; delta_j = s_(i-j) - s_i.",
                prefix="d",
                row_length=k,
            )
        )
        derivative_routines.append((k, name))
    return routines, weight_calls, variance_call, derivative_routines


def _evaluation_notes(plan: CoefficientPlan) -> list[str]:
    notes = []
    for q in plan.quantities:
        if q.kind == "closed" and q.closed == 0:
            notes.append(f"{q.label} = 0.")
        elif q.kind == "closed" and q.series:
            notes.append(
                f"{q.label}: closed form for h/sigma >= {q.threshold:.3g} (max rel. error {q.closed_error:.1e}), "
                f"below it a {len(q.series)}-term series (rel. error {q.series_error:.1e} at the switch)."
            )
        elif q.kind == "closed":
            notes.append(f"{q.label}: closed form (max rel. error {q.closed_error:.1e}).")
        else:
            reason = "no closed form" if q.closed is None else "the closed form cancels for short steps"
            notes.append(f"{q.label}: {plan.quadrature_nodes}-point Gauss-Legendre in log s ({reason}).")
    if plan.uses_quadrature:
        notes.append(f"Quadrature: max rel. error {plan.quadrature_error:.1e} over sigma in [1e-4, 1e4] and step")
        notes.append("ratios sigma_next/sigma in [1e-4, 1 - 1e-9]; the integrands are smooth and one-signed in log s.")
    return notes


def render(spec: Spec) -> str:
    """The text of the generated module for ``spec`` (formatted)."""
    step, plan = derive_spec(spec)
    routines, weight_calls, variance_call, derivative_routines = _routines(spec, step, plan)
    xs, ws = gauss_legendre(plan.quadrature_nodes) if plan.uses_quadrature else ((), ())
    spec_dict = spec.as_dict()
    context = {
        "title": f"ER-SDE solver of order {spec.order} (multistep Taylor, one model call per step).",
        "command_args": command_args(spec),
        "spec_json": json.dumps(spec_dict, sort_keys=True),
        "spec_python": repr(dict(sorted(spec_dict.items()))),
        "spec_digest": spec.digest,
        "family": spec.family,
        "order": spec.order,
        "phi_text": sp.sstr(step.phi),
        "ratio_text": sp.sstr(step.ratio).replace("sigma_next", "s_{i+1}").replace("sigma", "s_i"),
        "variance_text": sp.sstr(step.noise_variance).replace("sigma_next", "s_{i+1}").replace("sigma", "s_i"),
        "evaluation_notes": _evaluation_notes(plan),
        "quadrature_nodes": plan.quadrature_nodes if plan.uses_quadrature else 0,
        "quadrature_x": [repr(x) for x in xs],
        "quadrature_w": [repr(w) for w in ws],
        "routines": routines,
        "weight_calls": weight_calls,
        "variance_call": variance_call,
        "any_series": any(q.series for q in plan.quantities),
        "derivative_routines": derivative_routines,
    }
    text = _environment().get_template("ersde.py.jinja").render(**context)
    return format_source(text)


def command_args(spec: Spec) -> str:
    args = [f"--family {spec.family}", f"--order {spec.order}"]
    if spec.phi != "default":
        args.append(f"--phi {json.dumps(spec.phi) if ' ' in spec.phi else spec.phi}")
    if spec.method != "taylor":
        args.append(f"--method {spec.method}")
    return " ".join(args)


def format_source(text: str) -> str:
    """Format with ruff (cache off, fixed settings), so output does not depend on any project config."""
    ruff = shutil.which("ruff")
    if ruff is None:
        try:
            from ruff.__main__ import find_ruff_bin

            ruff = find_ruff_bin()
        except Exception as exc:  # pragma: no cover - ruff is a dependency
            raise RuntimeError("ruff is required to format generated code") from exc
    result = subprocess.run(
        [ruff, "format", "--no-cache", "--isolated", f"--line-length={LINE_LENGTH}", "-"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"ruff could not format the generated module: {result.stderr.strip()}")
    return result.stdout

"""Spec -> module text. Builds the template context from the derivation; the template only lays it out."""

from __future__ import annotations

import functools
import json
import shutil
import string
import subprocess
import textwrap

import jinja2
import sympy as sp

from derive.coefficients import (
    HISTORY_AMPLIFICATION_FACTOR,
    MIN_STEP_RATIO,
    SIGMA_GRID,
    CoefficientPlan,
    Quantity,
    evaluation_notes,
)
from derive.derivation import derive_spec
from derive.emit.printer import Polyval, Routine, make_routine
from derive.families import DYNAMICS
from derive.families import FAMILIES as SPEC_FAMILIES
from derive.methods import METHODS
from derive.provenance import template_dir
from derive.quadrature import gauss_legendre
from derive.runtime import inlined
from derive.spec import Spec, command_args
from derive.symbolic.ersde import (
    ERSDEStep,
    expansion_factor,
    h,
    node_offset,
    s,
    sigma,
    sigma_next,
    v,
)
from derive.symbolic.families import alpha as fam_alpha
from derive.symbolic.families import (
    alpha_next,
    derive_family,
    family_update,
    pure_noise_limits,
    pure_noise_step,
    ratio,
    sigma_next_t,
    std,
    table_value,
    weight_sum,
)
from derive.symbolic.families import mu as fam_mu
from derive.symbolic.families import sigma_t as fam_sigma
from derive.symbolic.families import t as family_t
from derive.symbolic.families import x as fam_x
from derive.symbolic.interpolation import (
    adams_bashforth_lebesgue,
    corrector_derivative_weights,
    derivative_weights,
    lagrange_basis,
    next_offset,
    offset_symbols,
)

output_symbol = sp.Symbol("output", real=True)

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


def _series_expression(q: Quantity) -> sp.Expr:
    """prefactor h^p sum_m a_m(sigma) h^m: the small-step series (summed by Horner's rule)."""
    return q.prefactor * h**q.series_power * Polyval(h, *q.series)


def _quantity_routines(q: Quantity) -> tuple[list[Routine], str]:
    """The routines for one coefficient and the call that evaluates it for all steps at once."""
    if q.kind == "closed" and q.closed == 0:
        return [], "torch.zeros_like(sigma)"
    if q.kind == "closed":
        closed = make_routine(
            f"_{q.name}_closed",
            [sigma, sigma_next],
            [q.closed],
            f"{q.label} in closed form.",
            tensor_like="sigma",
        )
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
        f"_{q.name}_integrand",
        [sigma, v],
        [q.integrand],
        f"Integrand of {q.label} in v = log(s / sigma).",
        tensor_like="v",
    )
    prefactor = make_routine(
        f"_{q.name}_prefactor",
        [sigma, sigma_next],
        [q.prefactor],
        f"Factor in front of the integral of {q.label}.",
        tensor_like="sigma",
    )
    return [integrand, prefactor], f"_quadrature({integrand.name}, {prefactor.name}, sigma, sigma_next)"


def _routines(spec: Spec, step: ERSDEStep, plan: CoefficientPlan):
    routines: list[Routine] = [
        make_routine("noise_scale_fn", [s], [step.phi], "phi(s), the noise-scale function.", tensor_like="s"),
        make_routine(
            "_ratio",
            [sigma, sigma_next],
            [step.ratio],
            "r = phi(sigma_next) / phi(sigma).",
            tensor_like="sigma",
        )
        if spec.form == "data"
        else make_routine(
            "_ratio",
            [sigma, sigma_next],
            [sp.Integer(1)],
            "1: the noise form has no linear term in y.",
            tensor_like="sigma",
        ),
    ]
    weight_calls = []
    for q in plan.weights:
        extra, call = _quantity_routines(q)
        routines.extend(extra)
        weight_calls.append(call)
    extra, variance_call = _quantity_routines(plan.noise_variance)
    routines.extend(extra)
    routines.append(
        make_routine(
            "_node_offset",
            [sigma, sigma_next],
            [node_offset(spec.variable)],
            f"u(sigma_next) - u(sigma) in the expansion variable u = {'s' if spec.variable == 's' else 'lambda = -log s'}.",
        )
    )
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


def _adams_routines(spec: Spec, step: ERSDEStep) -> tuple[list[Routine], list[tuple[int, str]]]:
    """Density, prefactor, expansion offset and Lagrange bases 1 .. K of the direct (Adams) weights."""
    if not METHODS[spec.method].direct_weights:
        return [], []
    from derive.coefficients import weight_quantity
    from derive.symbolic.interpolation import x as basis_x

    q = weight_quantity(step, 0, spec.form, closed=False, variable=spec.variable)
    routines = [
        make_routine(
            "_adams_density",
            [sigma, v],
            [q.integrand],
            "The weight density in v = log(s / sigma) (ds = s dv included).",
            tensor_like="v",
        ),
        make_routine(
            "_adams_prefactor",
            [sigma, sigma_next],
            [q.prefactor],
            "Factor in front of the weight integrals.",
            tensor_like="sigma",
        ),
        make_routine(
            "_expansion_offset",
            [sigma, v],
            [expansion_factor(1, spec.variable)],
            "u(s) - u_i at s = sigma e^v.",
            tensor_like="v",
        ),
    ]
    names = []
    for k in range(1, spec.order + 1):
        name = f"_lagrange_basis_{k}"
        routines.append(
            make_routine(
                name,
                [basis_x, *offset_symbols(k)],
                list(lagrange_basis(k)),
                f"l_j(x), j < {k}: the Lagrange basis on the nodes {', '.join(['0', *map(str, offset_symbols(k))])} (x = u - u_i).",
                prefix="b",
                row_length=k,
                tensor_like="x",
            )
        )
        names.append((k, name))
    return routines, names


def _corrector_routines(spec: Spec) -> tuple[list[Routine], list[tuple[int, str]]]:
    """The corrector's derivative matrices D' for each stored-output count it may use, plus the new output."""
    routines, names = [], []
    for k in METHODS[spec.method].corrector_sizes(spec.order):
        D = corrector_derivative_weights(k)
        name = f"_corrector_weights_{k}"
        routines.append(
            make_routine(
                name,
                [next_offset, *offset_symbols(k)],
                [D[n][j] for n in range(k + 1) for j in range(k + 1)],
                f"Row n: n-th derivative at u_i of the polynomial through the new output and {k} stored ones; "
                "delta_next = u_(i+1) - u_i.",
                prefix="d",
                row_length=k + 1,
            )
        )
        names.append((k, name))
    return routines, names


def _wrapped(lines: list[str], width: int = 106) -> list[str]:
    """Docstring lines: each note wrapped, continuation lines indented by two spaces."""
    out = []
    for line in lines:
        out.extend(
            textwrap.wrap(line, width, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
        )
    return out


def _native_runtime(spec: Spec, native: dict | None) -> list[str]:
    """The runtime files of a process family's own coordinates (none for ersde)."""
    if native is None:
        return []
    times = "discrete" if native["discrete"] else "continuous"
    return ["native", times, *(["noise_start"] if spec.form == "noise" else [])]


def _runtime_text(names: list[str]) -> str:
    """The runtime files' inlined parts (derive/runtime/), in this order, separated as top-level code is."""
    return "\n\n\n".join(inlined(name) for name in names)


def step_text(expr: sp.Expr) -> str:
    """A step expression as docstring text, with s_i and s_{i+1} for sigma and sigma_next."""
    return sp.sstr(expr).replace("sigma_next", "s_{i+1}").replace("sigma", "s_i")


def shared_context(
    spec_dict: dict, digest: str, plan: CoefficientPlan, routines, weight_calls, variance_call
) -> dict:
    """Template values every generated module has: its spec, the printed routines and the evaluation plan."""
    xs, ws = gauss_legendre(plan.quadrature_nodes) if plan.uses_quadrature else ((), ())
    return {
        "spec_json": json.dumps(spec_dict, sort_keys=True),
        "spec_python": repr(dict(sorted(spec_dict.items()))),
        "spec_digest": digest,
        "evaluation_notes": _wrapped(evaluation_notes(plan)),
        "quadrature_nodes": plan.quadrature_nodes if plan.uses_quadrature else 0,
        "quadrature_x": [repr(x) for x in xs],
        "quadrature_w": [repr(w) for w in ws],
        "routines": routines,
        "weight_calls": weight_calls,
        "variance_call": variance_call,
        "any_series": any(q.series for q in plan.quantities),
        "checked_sigmas": repr((SIGMA_GRID[0], SIGMA_GRID[-1])),
        "min_step_ratio": repr(MIN_STEP_RATIO),
    }


def render(spec: Spec) -> str:
    """The text of the generated module for ``spec`` (formatted)."""
    step, plan = derive_spec(spec)
    routines, weight_calls, variance_call, derivative_routines = _routines(spec, step, plan)
    extra, corrector_routines = _corrector_routines(spec)
    routines.extend(extra)
    extra, basis_routines = _adams_routines(spec, step)
    routines.extend(extra)
    context = shared_context(spec.as_dict(), spec.digest, plan, routines, weight_calls, variance_call)
    context |= {
        "title": _title(spec),
        "intro": _intro(spec),
        "prediction": spec.resolved_prediction,
        "form": spec.form,
        "weight_sign": "-1.0" if spec.form == "noise" else "1.0",
        "y_text": "x / alpha" if spec.family != "mrsde" else "(x - mu) / alpha",
        "command_args": command_args(spec),
        "family": spec.family,
        "order": spec.order,
        "phi_text": sp.sstr(step.phi),
        "ratio_text": step_text(step.ratio),
        "variance_text": step_text(step.noise_variance),
        "noise_scale_limit": repr(float(pure_noise_limits(step.phi, s)[0])),
        "variable": spec.variable,
        "variable_text": "s" if spec.variable == "s" else "lambda = log(alpha/sigma) = -log s",
        "derivative_routines": derivative_routines,
        "corrector_routines": corrector_routines,
        "basis_routines": basis_routines,
        "method": spec.method,
        "method_order": spec.method_order,
        "corrector_drop": METHODS[spec.method].corrector_drop,
        "method_doc": _method_doc(spec),
        "method_order_text": "ORDER"
        + (f" + {gain}: the corrector" if (gain := METHODS[spec.method].order_gain) else ""),
        "amplification_limits": [
            (k, repr(float(HISTORY_AMPLIFICATION_FACTOR * adams_bashforth_lebesgue(k))))
            for k in range(2, spec.method_order + 1)
        ],
        "amplification_factor": HISTORY_AMPLIFICATION_FACTOR,
    }
    context.update(_native_context(spec, step, routines))
    context["runtime"] = _runtime_text(
        [
            "contract",
            "history",
            "table",
            *METHODS[spec.method].runtime,
            "loop",
            *(["quadrature"] if context["quadrature_nodes"] else []),
            *(["series"] if context["any_series"] else []),
            *_native_runtime(spec, context["native"]),
        ]
    )
    text = _environment().get_template("solver.py.jinja").render(**context)
    return format_source(text)


def _method_doc(spec: Spec) -> str:
    """The method's paragraph of the module docstring (its registry entry's text, for this spec's form)."""
    data = spec.form == "data"
    return string.Template(METHODS[spec.method].doc).substitute(
        order=spec.order,
        method_order=spec.method_order,
        weight_integral=(
            "phi(s_{i+1}) int_{s_{i+1}}^{s_i} phi'(s)/phi(s)^2 l_j(u(s) - u_i) ds"
            if data
            else "-int_{s_{i+1}}^{s_i} (s phi'(s)/phi(s)) l_j(u(s) - u_i) ds"
        ),
        c="c" if data else "e",
    )


def _title(spec: Spec) -> str:
    dynamics = DYNAMICS[spec.resolved_dynamics].text
    where = SPEC_FAMILIES[spec.family].title
    method = METHODS[spec.method].title.format(order=spec.order, method_order=spec.method_order)
    return (
        f"{dynamics} {method} for the {where} "
        f"({spec.resolved_prediction} prediction; multistep, one model call per step)."
    )


def _intro(spec: Spec) -> list[str]:
    lines = [
        "Entry points: sample(model, x, sigmas, ...) in the k-diffusion / ComfyUI convention (normalized"
    ]
    lines.append("sigmas, a denoiser model)")
    if not SPEC_FAMILIES[spec.family].normalized:
        lines[-1] += "; sample_native(model, x, timesteps, ...) with the family's own time and a model"
        lines.append(f"that returns its {spec.resolved_prediction} prediction")
    lines[-1] += "."
    return lines


def _native_context(spec: Spec, step: ERSDEStep, routines: list[Routine]) -> dict:
    """Schedule, conversions and the family-coordinate update of a process family."""
    if SPEC_FAMILIES[spec.family].normalized:
        return {"native": None}
    derivation = derive_family(spec.family, spec.resolved_schedule)
    family, schedule = derivation.family, derivation.schedule
    variable = table_value if schedule.discrete else family_t
    parameters = [symbol for symbol, _ in schedule.parameters]
    routines.append(
        make_routine(
            "_alpha",
            [variable, *parameters],
            [schedule.alpha],
            "alpha of the schedule.",
            tensor_like=str(variable),
        )
    )
    routines.append(
        make_routine(
            "_sigma",
            [variable, *parameters],
            [schedule.sigma],
            "sigma of the schedule.",
            tensor_like=str(variable),
        )
    )
    prediction = spec.resolved_prediction
    quantity = derivation.to_data[prediction] if spec.form == "data" else derivation.to_noise[prediction]
    routines.append(
        make_routine(
            "to_prediction",
            [fam_x, output_symbol, fam_alpha, fam_sigma, fam_mu],
            [derivation.to_data[prediction], quantity],
            f"(data prediction, {'data' if spec.form == 'data' else 'noise'} prediction) from the model's {prediction} output.",
        )
    )
    update = family_update(spec.form, family.mean_reverting)
    routines.append(
        make_routine(
            "_family_coefficients",
            [fam_alpha, alpha_next, ratio, weight_sum, std],
            [update.A, update.B, update.C, update.M],
            "(A, B, C, M) of the update in family coordinates: substitute y = (x - mu)/alpha (derived).",
        )
    )
    limit, _ = pure_noise_limits(step.phi, s)
    if spec.form == "data":
        routines.append(
            make_routine(
                "_pure_noise_step",
                [fam_sigma, alpha_next, sigma_next_t],
                list(pure_noise_step(step.phi, s, update)),
                "(A, B, C, M) of a first step from alpha = 0 (s = oo): the limit of the update (derived).",
            )
        )
    keyword = [(str(symbol), repr(float(default))) for symbol, default in schedule.parameters]
    if schedule.discrete:
        table = "alphas_cumprod" if spec.family == "vpsde" else "theta_bar"
        keyword = [(table, None), *keyword]
    signature = (
        ", ".join(
            ["t", "*", *[name if default is None else f"{name}={default}" for name, default in keyword]]
        )
        if keyword
        else "t"
    )
    prediction_doc = {
        "data": "data prediction x0",
        "noise": "noise prediction eps",
        "velocity": f"velocity prediction ({family.velocity_doc})",
    }[prediction]
    return {
        "native": {
            "schedule": schedule.name,
            "schedule_doc": schedule.description,
            "parameters_python": repr({str(k): float(v) for k, v in schedule.parameters}),
            "time_range": repr(schedule.domain),
            "parameter_conditions": repr(
                {
                    str(k): "positive" if k.is_positive else "nonnegative" if k.is_nonnegative else "real"
                    for k, _ in schedule.parameters
                }
            ),
            "limit": repr(float(limit)),
            "discrete": schedule.discrete,
            "table": "alphas_cumprod" if spec.family == "vpsde" else "theta_bar",
            "schedule_signature": signature,
            "parameter_call": "".join(f", {symbol}" for symbol in parameters),
            "keyword_parameters": keyword,
            "keyword_call": "".join(f", {name}={name}" for name, _ in keyword),
            "mean_reverting": family.mean_reverting,
            "prediction_doc": prediction_doc,
            "time_doc": family.time_doc,
            "mu_doc": "``mu`` is the mean the process reverts to (e.g. the degraded image)."
            if family.mean_reverting
            else "",
            "family_update": update.text,
        }
    }


@functools.cache
def _ruff_binary() -> str:
    """The ruff of the installed ``ruff`` distribution (the pinned version), else the one on PATH."""
    try:
        from ruff.__main__ import find_ruff_bin

        return str(find_ruff_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("ruff")
        if found is None:
            raise RuntimeError("ruff is required to format generated code (pip install ruff)") from None
        return found


def format_source(text: str) -> str:
    """Format with ruff (cache off, fixed settings), so output does not depend on any project config."""
    ruff = _ruff_binary()
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

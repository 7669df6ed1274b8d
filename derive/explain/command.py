"""The ``derive explain`` command: the derivation of one solver, step by step, with every check it runs.

Wired into the CLI group with ``main.add_command(explain)``. Bad input raises :class:`~derive.errors.SpecError`
(or the expression and admissibility errors of phi), which the group prints as one line with exit code 2.
When a derived identity fails its check the walk-through is still written, with the check marked FAILED,
and the command then raises :class:`~derive.errors.DerivationError` (exit code 3).
"""

from __future__ import annotations

import pathlib

import click

from derive import options
from derive.errors import DerivationError, SpecError
from derive.explain.render import FORMATS, render
from derive.explain.steps import build_explanation
from derive.spec import DYNAMICS, FAMILIES, MAX_ORDER, METHODS, PHI_PRESETS, PREDICTIONS, Spec

try:  # the expansion variable (s or lambda), where the derivation code offers one
    from derive.symbolic.ersde import VARIABLES
except ImportError:  # pragma: no cover - older derivation code
    VARIABLES = ("s",)


def _order(text: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise SpecError(f"order must be a whole number between 1 and {MAX_ORDER}, got {text!r}") from None
    return value


def _choice(name: str, value: str | None, choices) -> None:
    if value is not None and value not in choices:
        raise SpecError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def make_spec(
    family, order, phi, dynamics=None, prediction=None, schedule=None, variable="s", method="taylor"
) -> Spec:
    """The spec ``derive explain`` (and ``derive gen``) means by these options; raises SpecError when invalid."""
    _choice("family", family, FAMILIES)
    _choice("dynamics", dynamics, DYNAMICS)
    _choice("prediction", prediction, PREDICTIONS)
    _choice("expansion variable", variable, VARIABLES)
    _choice("method", method, METHODS)
    if method != "taylor":
        raise SpecError(
            f"explain walks through the taylor derivation; --method {method} is not explained yet "
            "(adams has the same weights as taylor; pc adds a corrector of order K + 1)"
        )
    return Spec.from_options(
        family=family,
        order=_order(order),
        phi=phi,
        dynamics=dynamics,
        prediction=prediction,
        schedule=schedule,
        variable=variable,
    )


@click.command()
@click.option(
    "--family",
    type=options.Choice(FAMILIES, "family"),
    default="ersde",
    show_default=True,
    help="Process family.",
)
@click.option(
    "--order",
    type=options.Order(MAX_ORDER),
    default=3,
    show_default=True,
    help=f"Multistep order K (1-{MAX_ORDER}).",
)
@click.option(
    "--phi",
    default="default",
    show_default=True,
    help=f"Noise-scale function phi(s): a preset ({', '.join(PHI_PRESETS)}) or an expression in s.",
)
@click.option(
    "--method",
    type=options.Choice(METHODS, "method"),
    default="taylor",
    show_default=True,
    help="The method whose derivation is shown (the walk-through covers taylor).",
)
@click.option(
    "--dynamics",
    type=options.Choice(DYNAMICS, "dynamics"),
    default=None,
    help="ode (phi = s), sde (phi = s^2) or er (--phi); process families only (default ode).",
)
@click.option(
    "--prediction",
    type=options.Choice(PREDICTIONS, "prediction"),
    default=None,
    help="What the model predicts (default: the family's usual one).",
)
@click.option(
    "--schedule", default=None, help="The family's schedule (e.g. linear, cosine, discrete for vpsde)."
)
@click.option(
    "--variable",
    type=options.Choice(VARIABLES, "expansion variable"),
    default="s",
    show_default=True,
    help="Expansion variable.",
)
@click.option(
    "--variant",
    default=None,
    help="A published sampler (see derive list): derived as a special case of the derivation or as a stated "
    "departure from it, with its order conditions. Takes no other derivation option.",
)
@click.option(
    "--format",
    "fmt",
    type=options.Choice(FORMATS, "format"),
    default="text",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    default=None,
    help="Write to FILE instead of stdout.",
)
@click.pass_context
def explain(
    ctx, family, order, phi, method, dynamics, prediction, schedule, variable, variant, fmt, out
) -> None:
    """Walk through the derivation of one solver: each step's SymPy expressions and the checks that ran.

    Exits 3 (after writing the walk-through, with the failure marked) if a derived identity fails its check.
    """
    _choice("format", fmt, FORMATS)
    if out is not None:
        options.check_output_file(out, "--out")
    if variant is not None:
        given = [
            name
            for name in ("family", "order", "phi", "method", "dynamics", "prediction", "schedule", "variable")
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            raise SpecError(
                f"--variant takes no derivation options (the variant fixes them), got --{given[0]}"
            )
        from derive.explain.variant import build_variant_explanation

        with options.status(f"deriving and checking {variant} ..."):
            explanation = build_variant_explanation(variant)
            text = render(explanation, fmt)
        spec = explanation.spec
    else:
        spec = make_spec(family, order, phi, dynamics, prediction, schedule, variable, method)
        with options.status(f"deriving and checking {spec.name} ..."):
            explanation = build_explanation(spec)
            text = render(explanation, fmt)
    if out is None:
        click.echo(text, nl=False)
    else:
        from derive.files import atomic_write

        atomic_write(out, text)
        click.echo(str(out))
    if explanation.failed:
        details = "; ".join(f"{check.name}: {check.residual}" for check in explanation.failed)
        raise DerivationError(
            f"{len(explanation.failed)} check(s) failed in the derivation of {spec.name}: {details}"
        )

"""The ``derive`` command line.

Exit codes: 0 success; 1 ``--check`` found drift or a verification fell short; 2 bad input (unknown option
value, inadmissible phi, refused overwrite); 3 a derived identity failed its check (a bug: please report).
"""

from __future__ import annotations

import pathlib
import sys

import click

from derive.errors import DeriveError, DriftError, SpecError
from derive.spec import (
    CATALOGUE,
    DYNAMICS,
    FAMILIES,
    MAX_ORDER,
    METHODS,
    PHI_PRESETS,
    PREDICTIONS,
    VARIABLES,
    Spec,
)


def _fail(error: DeriveError) -> None:
    click.echo(f"derive: error: {error}", err=True)
    sys.exit(error.exit_code)


#: subcommands defined in their own modules, imported only when used (``verify`` needs torch and scipy,
#: which ``gen`` does not): name -> (module, attribute)
_LAZY = {
    "verify": ("derive.verify.command", "verify"),
    "explain": ("derive.explain.command", "explain"),
    "compare": ("derive.verify.blackbox_command", "compare"),
    "schedule": ("derive.schedules.command", "schedule"),
}


class _Group(click.Group):
    """Turns every DeriveError into one line on stderr and its exit code; never a traceback."""

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *_LAZY})

    def get_command(self, ctx, name):
        if name in _LAZY and name not in self.commands:
            import importlib

            module, attribute = _LAZY[name]
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DeriveError as error:
            _fail(error)
        except OSError as error:
            click.echo(f"derive: error: cannot write output: {error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("derive: interrupted; files already written are complete, others untouched", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="derive")
def main() -> None:
    """Derive diffusion-model samplers symbolically and emit standalone torch modules."""


@main.command()
@click.option(
    "--family", type=click.Choice(FAMILIES), default="ersde", show_default=True, help="Process family."
)
@click.option(
    "--order", type=click.IntRange(1, MAX_ORDER), default=None, help=f"Multistep order K (1-{MAX_ORDER})."
)
@click.option(
    "--phi",
    default="default",
    show_default=True,
    help=f"Noise-scale function phi(s): a preset ({', '.join(PHI_PRESETS)}) or an expression in s.",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="taylor",
    show_default=True,
    help="taylor (interpolated derivatives), adams (integrated Lagrange basis, same weights) or pc (corrector: order K + 1).",
)
@click.option(
    "--dynamics",
    type=click.Choice(DYNAMICS),
    default=None,
    help="ode (phi = s), sde (phi = s^2) or er (--phi); process families only.",
)
@click.option(
    "--prediction",
    type=click.Choice(PREDICTIONS),
    default=None,
    help="What the model predicts; selects the update form (default: the family's usual one).",
)
@click.option(
    "--variable",
    type=click.Choice(VARIABLES),
    default="s",
    show_default=True,
    help="Expansion variable: s = sigma/alpha or lambda = log(alpha/sigma) (t, the family's own time, is refused with the reason).",
)
@click.option(
    "--schedule", default=None, help="The family's schedule (e.g. linear, cosine, discrete for vpsde)."
)
@click.option(
    "--variant",
    default=None,
    help="A published sampler (see `derive list`), written with the derivation's pieces.",
)
@click.option(
    "--all",
    "all_",
    is_flag=True,
    help="Regenerate the whole catalogue of checked-in modules (variants included).",
)
@click.option(
    "--check", is_flag=True, help="Write nothing; exit 1 with a diff if files differ from the derivation."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default=pathlib.Path("generated"),
    show_default=True,
    help="Output folder.",
)
@click.option("--force", is_flag=True, help="Overwrite files that were edited by hand.")
def gen(
    family, order, phi, method, dynamics, prediction, variable, schedule, variant, all_, check, out, force
) -> None:
    """Derive and emit solver modules (prints the paths written)."""
    from derive.emit.render import render
    from derive.emit.variant import render_variant
    from derive.emit.write import diff_modules, module_path, write_modules
    from derive.variants import Variant, get_variant, variant_table

    if variant is not None:
        _reject_with_variant(click.get_current_context(), "gen", allowed={"variant", "check", "out", "force"})
        specs = [get_variant(variant)]
    elif all_:
        spec_options = ("family", "order", "phi", "method", "dynamics", "prediction", "variable", "schedule")
        given = given_options(click.get_current_context(), spec_options)
        if given:
            raise SpecError(f"--all regenerates the whole catalogue and takes no {', '.join(given)}")
        specs = [*CATALOGUE, *variant_table().values()]
    else:
        if order is None:
            raise click.UsageError("give --order K (or --all)")
        specs = [
            Spec.from_options(
                family=family,
                order=order,
                phi=phi,
                method=method,
                dynamics=dynamics,
                prediction=prediction,
                schedule=schedule,
                variable=variable,
            )
        ]
    rendered = {spec: render_variant(spec) if isinstance(spec, Variant) else render(spec) for spec in specs}
    if check:
        diff = diff_modules(rendered, out, manifest_complete=all_)
        if diff:
            click.echo(diff, nl=False)
            raise DriftError(
                f"{out} differs from what the derivation produces; run `derive gen --all` to update"
            )
        click.echo(f"{len(rendered)} module(s) in {out} match the derivation")
        return
    write_modules(rendered, out, force=force)
    for spec in specs:
        click.echo(str(module_path(out, spec)))


def given_options(ctx: click.Context, names) -> list[str]:
    """The options among ``names`` (parameter names) that were given on the command line, as ``--flag`` text."""
    from click.core import ParameterSource

    flags = {param.name: max(param.opts, key=len) for param in ctx.command.params}
    return [
        flags[name] for name in names if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
    ]


def _reject_with_variant(ctx: click.Context, command: str, allowed: set[str]) -> None:
    """A variant fixes its whole spec: any other spec option given with --variant is a conflict."""
    given = given_options(ctx, [name for name in ctx.params if name not in allowed])
    if given:
        raise SpecError(
            f"{command} --variant fixes the whole spec; it cannot be combined with {', '.join(given)}"
        )


@main.command(name="list")
def list_() -> None:
    """The catalogue of checked-in modules and the published samplers (variants)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="derive catalogue")
    for column in ("module", "family", "order", "method", "dynamics", "phi", "prediction", "schedule"):
        table.add_column(column)
    names = {"ode": "probability-flow ODE", "sde": "reverse SDE", "er": "ER SDE"}
    for spec in CATALOGUE:
        table.add_row(
            spec.name,
            spec.family,
            str(spec.order),
            spec.method if spec.variable == "s" else f"{spec.method} ({spec.variable})",
            names[spec.resolved_dynamics],
            spec.phi_text,
            spec.resolved_prediction,
            spec.resolved_schedule or "-",
        )
    Console().print(table)
    from derive.variants import variant_table

    variants = Table(title="published samplers (derive gen --variant NAME)")
    for column in ("variant", "module", "order", "phi", "prediction", "sampler"):
        variants.add_column(column)
    for variant in variant_table().values():
        variants.add_row(
            variant.key,
            variant.name,
            str(variant.order),
            variant.base_spec.phi_text,
            variant.form,
            variant.title,
        )
    Console().print(variants)


if __name__ == "__main__":  # pragma: no cover
    main()

"""The ``derive`` command line.

Exit codes: 0 success; 1 ``--check`` found drift or a verification fell short; 2 bad input (unknown option
value, inadmissible phi, refused overwrite); 3 a derived identity failed its check (a bug: please report).
"""

from __future__ import annotations

import pathlib
import sys

import click

from derive import options
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

    def main(self, *args, **kwargs):
        # click's own usage errors are four lines (usage, hint, blank, message): one line here, like ours
        if kwargs.get("standalone_mode", True):
            try:
                # without standalone mode click returns a ctx.exit(code) as the value: exit with it, as it would
                result = super().main(*args, **{**kwargs, "standalone_mode": False})
                sys.exit(result if isinstance(result, int) else 0)
            except click.exceptions.Abort:
                click.echo("derive: interrupted", err=True)
                sys.exit(130)
            except click.ClickException as error:
                ctx = getattr(error, "ctx", None)
                hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
                click.echo(f"derive: error: {error.format_message()}{hint}", err=True)
                sys.exit(error.exit_code)
        return super().main(*args, **kwargs)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DeriveError as error:
            _fail(error)
        except BrokenPipeError:  # `derive list | head`: the reader has all it wanted
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
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
    "--family",
    type=options.Choice(FAMILIES, "family"),
    default="ersde",
    show_default=True,
    help="Process family.",
)
@click.option(
    "--order", type=options.Order(MAX_ORDER), default=None, help=f"Multistep order K (1-{MAX_ORDER})."
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
    help="taylor (interpolated derivatives), adams (integrated Lagrange basis, same weights), pc (corrector: order "
    "K + 1) or am (corrector of the predictor's order K: a smaller error constant; K >= 2).",
)
@click.option(
    "--dynamics",
    type=options.Choice(DYNAMICS, "dynamics"),
    default=None,
    help="ode (phi = s), sde (phi = s^2) or er (--phi); process families only.",
)
@click.option(
    "--prediction",
    type=options.Choice(PREDICTIONS, "prediction"),
    default=None,
    help="What the model predicts; selects the update form (default: the family's usual one).",
)
@click.option(
    "--variable",
    type=options.Choice(VARIABLES, "expansion variable"),
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
    if not check:
        options.check_output_dir(out, "--out")
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
    rendered = {}
    with options.progress(len(specs), "deriving") as tick:
        for spec in specs:
            rendered[spec] = render_variant(spec) if isinstance(spec, Variant) else render(spec)
            tick(spec.name)
    if check:
        diff = diff_modules(rendered, out, manifest_complete=all_)
        if diff:
            click.echo(diff, nl=False)
            raise DriftError(
                f"{out} differs from what the derivation produces; run `derive gen --all` to update"
            )
        click.echo(f"{len(rendered)} module(s) in {out} match the derivation")
        return
    write_modules(rendered, out, force=force, complete=all_)
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


_LIST_COLUMNS = ("module", "family", "order", "method", "dynamics", "phi", "prediction", "schedule")
_VARIANT_COLUMNS = ("variant", "module", "order", "phi", "prediction", "sampler")


def _list_rows() -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    from derive.variants import variant_table

    names = {"ode": "probability-flow ODE", "sde": "reverse SDE", "er": "ER SDE"}
    modules = [
        (
            spec.name,
            spec.family,
            str(spec.order),
            spec.method if spec.variable == "s" else f"{spec.method} ({spec.variable})",
            names[spec.resolved_dynamics],
            spec.phi_text,
            spec.resolved_prediction,
            spec.resolved_schedule or "-",
        )
        for spec in CATALOGUE
    ]
    variants = [
        (v.key, v.name, str(v.order), v.base_spec.phi_text, v.form, v.title) for v in variant_table().values()
    ]
    return modules, variants


@main.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue as JSON (modules and variants).")
def list_(as_json: bool) -> None:
    """The catalogue of checked-in modules and the published samplers (variants).

    On a terminal: two tables. Piped or redirected: one full row per line, tab-separated, with a header line
    per table (modules, then variants), so that every module name is whole.
    """
    modules, variants = _list_rows()
    if as_json:
        import json

        payload = {
            "modules": [{**dict(zip(_LIST_COLUMNS, row)), "order": int(row[2])} for row in modules],
            "variants": [{**dict(zip(_VARIANT_COLUMNS, row)), "order": int(row[2])} for row in variants],
        }
        click.echo(json.dumps(payload, indent=2))
        return
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        for columns, rows in ((_LIST_COLUMNS, modules), (_VARIANT_COLUMNS, variants)):
            click.echo("\t".join(columns))
            for row in rows:
                click.echo("\t".join(row))
        return
    from rich.table import Table

    for title, columns, rows in (
        ("derive catalogue", _LIST_COLUMNS, modules),
        ("published samplers (derive gen --variant NAME)", _VARIANT_COLUMNS, variants),
    ):
        table = Table(title=title)
        for column in columns:
            # the module column is never cut: its names are what --module takes
            table.add_column(column, no_wrap=column in ("module", "variant"), overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="derive")

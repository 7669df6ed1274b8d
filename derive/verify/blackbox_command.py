"""The command-line side of the black-box checks: ``derive verify --sampler TARGET`` and ``derive compare A B``.

Exit status: 0 the claim holds, 1 the measured method order falls short of ``--claimed`` by more than the
tolerance (or ``compare`` found the samplers part), 2 bad input (one line on stderr).
"""

from __future__ import annotations

import sys

import click

from derive.errors import SpecError
from derive.verify import blackbox, tolerances
from derive.verify.targets import parse_target


def _fmt(report: blackbox.BlackBoxReport, kind: str) -> str:
    if not report.find(kind):
        return "-"
    if report.exact(kind):
        return "exact"
    order = report.order(kind)
    text = "n/a" if order is None else f"{order:.2f}"
    if any(s.passed is False for s in report.find(kind)):
        return f"[red]{text}[/red]"
    return text


def reject_with_sampler(ctx: click.Context) -> None:
    """--sampler names the sampler to verify: the options that describe a derive module conflict with it."""
    from derive.cli import given_options

    names = ("family", "order", "phi", "method", "dynamics", "prediction", "family_schedule", "variable")
    given = given_options(ctx, (*names, "modules", "all_", "variants", "plot", "warmup"))
    if given:
        raise SpecError(
            f"--sampler names the sampler to verify; it cannot be combined with {', '.join(given)}"
        )


def sampler_settings(coarse: bool, problems, steps: str | None):
    from derive.verify import harness

    extra = {"steps": harness.parse_steps(steps)} if steps is not None else {}
    return blackbox.settings(coarse, problems=problems, **extra)


def _console():
    import os

    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)  # logs and pipes: room for every column
    return console


def run_samplers(specs, config, claimed, settings, json_path) -> None:
    """Measure each TARGET, print the table, write ``--json``; exit 1 when a method order falls short."""
    console = _console()
    if claimed is not None and claimed <= 0:
        raise SpecError(f"--claimed must be a positive order (got {claimed:g})")
    from rich.table import Table

    reports = []
    status = click.get_text_stream("stderr")
    for spec in specs:
        target = parse_target(spec, config, claimed=claimed)
        status.write(f"measuring {target.name} ...\n")
        reports.append(blackbox.verify_target(target, settings))
    table = Table(
        title="derive verify --sampler",
        caption=(
            f"method: graded grid (the start cannot cap it), checked against the claim (-{tolerances.ODE_ORDER_TOL}); "
            "as-used: uniform in log s; start: order of one step from the exact state; SDE rows: method, as-used "
            f"and start with the noise off (drift ODE), strong and weak as measured; steps {','.join(map(str, settings.steps))}"
        ),
        caption_justify="left",
    )
    for column in ("sampler", "dyn.", "claimed", "method", "as-used", "start", "strong", "weak", "verdict"):
        table.add_column(column, justify="left" if column in ("sampler", "dyn.") else "right", no_wrap=True)
    for r in reports:
        claim = "-" if r.claimed is None else f"{r.claimed:g}"
        verdict = "[green]pass[/green]" if r.passed else "[red]FAIL[/red]"
        if r.claimed is None:
            verdict = "no claim"
        table.add_row(
            r.name,
            r.dynamics.upper(),
            claim,
            *(_fmt(r, k) for k in ("method", "as-used", "start", "strong", "weak")),
            verdict,
        )
    console.print(table)
    for r in reports:
        console.print(f"{r.name}: {r.how.get('method', '')}")
    if json_path is not None:
        from derive.verify.command import _write_json

        _write_json(
            json_path,
            {
                "tool": "derive verify --sampler",
                "passed": all(r.passed for r in reports),
                "settings": settings.as_dict(),
                "tolerances": tolerances.tolerance_table(),
                "samplers": [r.as_dict() for r in reports],
            },
        )
        console.print(f"wrote {json_path}")
    failures = [r for r in reports if not r.passed]
    if failures:
        names = ", ".join(
            f"{r.name} (method {r.order('method') or float('nan'):.2f} < claimed {r.claimed:g})"
            for r in failures
        )
        console.print(f"[red]{len(failures)} sampler(s) fall short of the claim:[/red] {names}")
        sys.exit(1)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("a")
@click.argument("b")
@click.option("--config-a", default=None, help="JSON config (dict or file) of A.")
@click.option("--config-b", default=None, help="JSON config (dict or file) of B.")
@click.option(
    "--steps", type=click.IntRange(1, 1000), default=20, show_default=True, help="Steps of the shared grid."
)
@click.option(
    "--tol", type=float, default=1e-8, show_default=True, help="Relative difference at which they part."
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write every number here."
)
def compare(a, b, config_a, config_b, steps, tol, json_path) -> None:
    """Run two samplers (any TARGETs) on the same model, noise and sigmas; print where they part."""
    import pathlib

    from rich.console import Console
    from rich.table import Table

    from derive.verify.compare import compare as run_compare

    try:
        result = run_compare(parse_target(a, config_a), parse_target(b, config_b), steps=steps, tol=tol)
    except SpecError as error:
        click.echo(f"derive: error: {error}", err=True)
        sys.exit(error.exit_code)
    console = Console(width=120)
    table = Table(title=f"{result['a']['name']} vs {result['b']['name']}")
    for column in ("step", "sigma", "max |A - B|", "relative"):
        table.add_column(column, justify="right")
    for row in result["rows"]:
        cells = ["-", "-"] if row["max_abs"] is None else [f"{row['max_abs']:.3g}", f"{row['relative']:.3g}"]
        table.add_row(str(row["index"]), f"{row['sigma']:.4g}", *cells)
    console.print(table)
    first = result["first_different"]
    if json_path is not None:
        from derive.verify.command import _write_json

        _write_json(pathlib.Path(json_path), result)
        console.print(f"wrote {json_path}")
    if first is None:
        console.print(
            f"[green]they agree to {tol:g} at every level[/green] (largest {result['largest']:.3g})"
        )
        return
    console.print(
        f"[red]they part at step {first}[/red] (sigma {result['sigmas'][first]:.4g}): relative difference "
        f"{result['rows'][first]['relative']:.3g}; largest {result['largest']:.3g}"
    )
    sys.exit(1)

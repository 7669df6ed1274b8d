"""``derive verify``: measure the convergence orders of generated samplers and check them against the claims.

A thin layer over :mod:`derive.verify.harness`: resolves which modules to verify, shows a progress bar,
prints a table, and writes the JSON report and the plot when asked. Exit status: 0 every claim holds, 1 a
measured method, strong or weak order falls short of its claim by more than the tolerance, 2 bad input (one
line on stderr, no traceback).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys

import click

from derive import options
from derive.errors import DeriveError, SpecError
from derive.options import PROBLEM_CHOICES, WARMUPS
from derive.spec import DYNAMICS, FAMILIES, MAX_ORDER, METHODS, PREDICTIONS, VARIABLES


class _Deferred:
    """A module imported on first attribute use: harness and tolerances import torch, numpy and scipy, which
    wait until the arguments and output paths are checked."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute):
        import importlib

        return getattr(importlib.import_module(self._name), attribute)


harness = _Deferred("derive.verify.harness")
tolerances = _Deferred("derive.verify.tolerances")


PLOT_SUFFIXES = (".png", ".svg", ".pdf")


class _Command(click.Command):
    """Bad input becomes one line on stderr and the error's exit code, also when run outside ``derive``."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DeriveError as error:
            click.echo(f"derive: error: {error}", err=True)
            ctx.exit(error.exit_code)


@click.command(cls=_Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--family",
    type=options.Choice(FAMILIES, "family"),
    default="ersde",
    show_default=True,
    help="Family of the spec to render and verify.",
)
@click.option(
    "--order",
    type=options.Order(MAX_ORDER),
    default=None,
    help=f"Multistep order K (1-{MAX_ORDER}) of the spec to render and verify.",
)
@click.option(
    "--phi", default="default", show_default=True, help="Noise-scale function (preset or expression in s)."
)
@click.option(
    "--method",
    type=options.Choice(METHODS, "method"),
    default="taylor",
    show_default=True,
    help="Method of the spec.",
)
@click.option(
    "--dynamics",
    type=options.Choice(DYNAMICS, "dynamics"),
    default=None,
    help="Dynamics of a process-family spec.",
)
@click.option(
    "--prediction",
    type=options.Choice(PREDICTIONS, "prediction"),
    default=None,
    help="What the model of the spec predicts.",
)
@click.option("--schedule", "family_schedule", default=None, help="Noise schedule of a process-family spec.")
@click.option(
    "--variable",
    type=options.Choice(VARIABLES, "expansion variable"),
    default=None,
    help="Expansion variable of the spec.",
)
@click.option(
    "--module",
    "modules",
    multiple=True,
    help="A catalogue module by name (see `derive list`) or a .py file written by `derive gen --out` (repeatable).",
)
@click.option(
    "--all",
    "all_",
    is_flag=True,
    help="Every catalogue module in generated/MANIFEST.json (not the variants).",
)
@click.option(
    "--variant",
    "variants",
    multiple=True,
    help="A published sampler by name (repeatable; see `derive list`): its claimed order is checked.",
)
@click.option(
    "--problem",
    type=options.Choice(PROBLEM_CHOICES, "problem"),
    default="gaussian",
    show_default=True,
    help="Test data: Gaussian (exact references) and/or a Gaussian mixture (DOP853 references).",
)
@click.option(
    "--steps", default=None, help="Comma-separated step counts, at least 4, each dividing the largest."
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    default=None,
    help="Write a log-log plot (.png, .svg, .pdf).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    default=None,
    help="Write every number to this JSON file.",
)
@click.option(
    "--warmup",
    type=options.Choice(WARMUPS, "warm-up"),
    default="none",
    show_default=True,
    help="substep: also measure the sampler started by its own sub-stepped first K-1 steps.",
)
@click.option("--coarse", is_flag=True, help="Three halvings, fewer points and paths (for CI).")
@click.option(
    "--sampler",
    "samplers",
    multiple=True,
    help="Someone else's sampler (repeatable): diffusers:ClassName, package.module:function or a module file.",
)
@click.option("--config", "sampler_config", default=None, help="JSON config of --sampler (a dict or a file).")
@click.option(
    "--claimed", type=float, default=None, help="The method order --sampler claims (checked, -0.2)."
)
def verify(
    family,
    order,
    phi,
    method,
    dynamics,
    prediction,
    family_schedule,
    variable,
    modules,
    all_,
    variants,
    problem,
    steps,
    plot,
    json_path,
    warmup,
    coarse,
    samplers=(),
    sampler_config=None,
    claimed=None,
) -> None:
    """Measure method, as-used, strong and weak orders of generated samplers; exit 1 if a claim fails."""
    from rich.console import Console

    # every argument and output path is checked before torch and scipy are imported
    if plot is not None and plot.suffix.lower() not in PLOT_SUFFIXES:
        raise SpecError(f"--plot must end in one of {', '.join(PLOT_SUFFIXES)} (got {plot.name!r})")
    for path, option in ((plot, "--plot"), (json_path, "--json")):
        if path is not None:
            options.check_output_file(path, option)
    problems = ("gaussian", "gmm") if problem == "both" else (problem,)
    if samplers:
        from derive.verify.blackbox_command import reject_with_sampler, run_samplers, sampler_settings

        reject_with_sampler(click.get_current_context())
        return run_samplers(
            samplers, sampler_config, claimed, sampler_settings(coarse, problems, steps), json_path
        )
    if sampler_config is not None or claimed is not None:
        raise SpecError("--config and --claimed describe a --sampler; give one")
    overrides = {"problems": problems, "warmup": warmup}
    if steps is not None:
        overrides["steps"] = options.parse_steps(steps)
    settings = harness.Settings.coarse(**overrides) if coarse else harness.Settings(**overrides)

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)  # logs and pipes: room for every column instead of rich's 80
    status = Console(stderr=True)
    if variants:
        _reject_with_variant(click.get_current_context())
        targets = [_variant_target(name) for name in variants]
    else:
        targets = _resolve(
            family, order, phi, method, dynamics, prediction, family_schedule, variable, modules, all_, status
        )
    reports = _run(targets, settings, status)
    console.print(_table(reports, settings))
    failures = [r for r in reports if not r.passed]
    try:
        if json_path is not None:
            _write_json(json_path, harness.report_dict(reports, settings))
            console.print(f"wrote {json_path}")
        if plot is not None:
            write_plot(plot, reports)
            console.print(f"wrote {plot}")
    except OSError as error:
        raise SpecError(f"cannot write {error.filename or 'the output'}: {error.strerror or error}") from None
    if failures:
        names = ", ".join(f"{r.name} ({', '.join(s.label for s in r.failures())})" for r in failures)
        console.print(
            f"[red]{len(failures)} of {len(reports)} module(s) fall short of a claim:[/red] {names}"
        )
        sys.exit(1)
    console.print(f"[green]{len(reports)} module(s): every checked order meets its claim[/green]")


# --------------------------------------------------------------------------------------------------
# resolving and running
# --------------------------------------------------------------------------------------------------


def _reject_with_variant(ctx: click.Context) -> None:
    """A variant names its module: options that describe another target conflict with it."""
    from derive.cli import given_options

    targets = (
        "family",
        "order",
        "phi",
        "method",
        "dynamics",
        "prediction",
        "family_schedule",
        "variable",
        "modules",
        "all_",
    )
    given = given_options(ctx, targets)
    if given:
        raise SpecError(
            f"--variant names the module to verify; it cannot be combined with {', '.join(given)}"
        )


def _variant_target(key: str):
    """(name, module) of a published-sampler variant: the checked-in module, else rendered now."""
    from derive.variants import get_variant

    variant = get_variant(key)
    if variant.name in harness.manifest(variants=True):
        return variant.name, harness.load_checked_in(variant.name)
    return variant.name, harness.load_rendered_variant(variant)


def _module_target(name: str):
    """(name, module) of ``--module NAME``: a catalogue name, or a file path (a module written with --out)."""
    if name.endswith(".py") and ("/" in name or "\\" in name or pathlib.Path(name).is_file()):
        path = pathlib.Path(name).expanduser()
        if not path.is_file():
            raise SpecError(f"--module {name}: no such file")
        return path.stem, harness.load_module_file(path)
    return name.removesuffix(".py"), harness.load_checked_in(name)


def _resolve(
    family, order, phi, method, dynamics, prediction, family_schedule, variable, modules, all_, status
):
    """[(name, module)] from --all, --module or the spec options."""
    if all_ and modules:
        raise SpecError("give either --all or --module, not both")
    if all_ or modules:
        if order is not None:
            raise SpecError(
                "--order describes a spec to render; it cannot be combined with --all or --module"
            )
        names = sorted(harness.manifest()) if all_ else list(modules)
        if not names:
            raise SpecError(f"no checked-in modules in {harness.GENERATED_DIR}")
        return [_module_target(name) for name in names]
    if order is None:
        raise SpecError("say what to verify: --module NAME, --all, or a spec with --order K")
    from derive.spec import Spec

    extras = {
        "dynamics": dynamics,
        "prediction": prediction,
        "schedule": family_schedule,
        "variable": variable,
    }
    spec = Spec(
        family=family,
        order=order,
        phi=phi,
        method=method,
        **{k: v for k, v in extras.items() if v is not None},
    )
    with status.status(f"deriving {spec.name} ..."):
        module = harness.load_rendered(spec)
    return [(spec.name, module)]


def _run(targets, settings, status) -> list[harness.ModuleReport]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = sum(harness.count_studies(module, settings) for _, module in targets)
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    reports = []
    with Progress(*columns, console=status, transient=True) as progress:
        task = progress.add_task("verifying", total=total)
        for name, module in targets:

            def tick(label, name=name):
                progress.update(task, advance=1, description=f"{name}: {label}")

            reports.append(harness.verify_module(module, settings, progress=tick, name=name))
    return reports


# --------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------


def _fmt(study: harness.Study) -> str:
    if study.exact:
        text = "exact"
    elif study.order is None:
        text = "n/a"
    else:
        text = f"{study.order:.2f}"
    if study.note:
        text += "*"
    if study.passed is False:
        return f"[red]{text}[/red]"
    return text


def _cell(report: harness.ModuleReport, kind: str) -> str:
    """The orders of one kind of study, per problem in run order, e.g. ``3.00 / 2.98``."""
    studies = report.find(kind)
    return " / ".join(_fmt(s) for s in studies) if studies else "-"


def _table(reports, settings):
    from rich.table import Table

    table = Table(title="derive verify", caption=_caption(reports, settings), caption_justify="left")
    warm = settings.warmup == "substep"
    table.add_column("module", no_wrap=True)
    table.add_column("dyn.")
    table.add_column("K", justify="right")
    for column in (
        ["method", "as-used"]
        + (["+warm-up"] if warm else [])
        + ["strong", "weak"]
        + (["weak+w"] if warm else [])
    ):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("verdict", min_width=7, no_wrap=True)
    for r in reports:
        row = [r.name, r.dynamics.upper(), str(r.order), _cell(r, "method"), _cell(r, "as-used")]
        if warm:
            row.append(_cell(r, "as-used+warmup"))
        row += [_cell(r, "strong"), _cell(r, "weak")]
        if warm:
            row.append(_cell(r, "weak+warmup"))
        row.append("[green]pass[/green]" if r.passed else "[red]FAIL[/red]")
        table.add_row(*row)
    return table


def _caption(reports, settings) -> str:
    claims = (
        f"claims: method K, K+1 for pc (-{tolerances.ODE_ORDER_TOL}), strong min(K,1) (-{tolerances.STRONG_ORDER_TOL}), "
        f"weak min(K,2) (-{tolerances.WEAK_ORDER_TOL}); as-used and warm-up orders: reported, not checked"
    )
    setup = (
        f"steps {','.join(map(str, settings.steps))}, {settings.schedule} in s from {settings.sigma_max:g} to "
        f"{settings.sigma_min:g} (gmm: {settings.gmm_sigma_min:g}); a / b = {' / '.join(settings.problems)}; "
        "weak: exact, Gaussian data"
    )
    lines = [claims, setup, "SDE rows: method and as-used are orders of the drift ODE (noise off)"]
    if any(s.note for r in reports for s in r.studies):
        lines.append("* on gmm: the Gaussian drift study is exact to round-off (degenerate for this phi)")
    return "\n".join(lines)


def _finite(value):
    """JSON has no NaN or infinity: non-finite floats become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _write_json(path: pathlib.Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def write_plot(path: pathlib.Path, reports) -> None:
    """Log-log error against step size, one panel per module, dashed slopes of the claimed orders."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(reports)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    from matplotlib.ticker import NullFormatter

    for ax, report in zip(axes.flat, reports):
        exact = []
        for study in report.studies:
            pts = [(h, e) for h, e in zip(study.step_sizes, study.errors) if math.isfinite(e) and e > 0]
            if study.exact:
                exact.append(study.label)
                continue
            if not pts:
                continue
            hs, es = zip(*pts)
            order = "n/a" if study.order is None else f"{study.order:.2f}"
            claim = "" if study.claim is None else f" (claim {study.claim:g})"
            (line,) = ax.loglog(hs, es, marker="o", markersize=3, label=f"{study.label}: {order}{claim}")
            if study.claim is not None:
                # the claimed slope, through the finest point shifted down by 3x so that it stays visible
                h0, e0 = hs[-1], es[-1] / 3
                ax.loglog(
                    hs,
                    [e0 * (h / h0) ** study.claim for h in hs],
                    "--",
                    linewidth=0.9,
                    color=line.get_color(),
                )
        title = f"{report.name} (K={report.order}, {'pass' if report.passed else 'FAIL'})"
        ax.set_title(title, fontsize=9)
        if exact:
            ax.text(0.02, 0.02, "exact to round-off: " + ", ".join(exact), transform=ax.transAxes, fontsize=6)
        ax.set_xlabel("mean step in log s", fontsize=8)
        ax.set_ylabel("error", fontsize=8)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", linewidth=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("error vs step size (dashed: claimed order)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":  # pragma: no cover
    verify()

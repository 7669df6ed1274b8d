"""The claims table: each published sampler's claimed order against its measured orders, next to the derived
solver of the same cost per step; and the methods table: each registered method's declared order against its
measured orders, with its error relative to the Taylor method of the same K.

    python -m derive.verify.claims [--coarse] [--doc docs/claims.md] [--plot docs/img/claims.png] [--json PATH]
    python -m derive.verify.claims --methods [--coarse] [--doc docs/claims.md] [--json PATH]

Every variant (``derive gen --variant``) and its derived counterpart (the base derivation's own module: same
phi, form and expansion variable, the interpolating polynomial's derivatives instead of the published
estimates) is measured by :func:`derive.verify.harness.verify_module` on Gaussian data (exact references);
the table replaces the block between the markers in ``--doc`` and the plot shows the method-order studies.
"""

from __future__ import annotations

import math
import pathlib

import click

from derive.verify import harness

BEGIN, END = "<!-- claims table: begin -->", "<!-- claims table: end -->"
METHODS_BEGIN, METHODS_END = "<!-- methods table: begin -->", "<!-- methods table: end -->"
#: the methods table: every registered method on the probability-flow ODE (phi = s, expansion in s) for these K
METHOD_ORDERS = (2, 3, 4)


def _derived_module(variant):
    spec = variant.base_spec
    if spec.name in harness.manifest():
        return harness.load_checked_in(spec.name), f"derive verify --module {spec.name}"
    from derive.spec import command_args

    return harness.load_rendered(spec), f"derive verify {command_args(spec)}"


def measure(settings: harness.Settings, keys=None) -> list[dict]:
    """One row per variant: its report and its derived counterpart's (each derived module measured once)."""
    from derive.variants import variant_table

    rows, derived_reports = [], {}
    for variant in variant_table().values():
        if keys and variant.key not in keys:
            continue
        module = harness.load_checked_in(variant.name)
        report = harness.verify_module(module, settings, name=variant.name)
        if variant.derived not in derived_reports:
            derived, command = _derived_module(variant)
            derived_reports[variant.derived] = (
                harness.verify_module(derived, settings, name=variant.derived),
                command,
            )
        rows.append(
            {
                "variant": variant,
                "report": report,
                "command": f"derive verify --variant {variant.key}",
                "derived": derived_reports[variant.derived][0],
                "derived_command": derived_reports[variant.derived][1],
            }
        )
    return rows


def _module_for(spec):
    """The checked-in module of ``spec`` if there is one, else the rendered one; and the verify command."""
    from derive.spec import command_args

    if spec.name in harness.manifest():
        return harness.load_checked_in(spec.name), f"derive verify --module {spec.name}"
    return harness.load_rendered(spec), f"derive verify {command_args(spec)}"


def measure_methods(settings: harness.Settings, orders=METHOD_ORDERS) -> list[dict]:
    """One row per registered method and K: its declared order, its report, and the Taylor module of that K's
    report (the reference for the error ratio). Rows come from the registry, so a new method gets its own."""
    from derive.methods import METHODS
    from derive.spec import Spec

    reports: dict[str, tuple] = {}

    def report(spec):
        if spec.name not in reports:
            module, command = _module_for(spec)
            reports[spec.name] = (harness.verify_module(module, settings, name=spec.name), command)
        return reports[spec.name]

    rows = []
    for method in METHODS.values():
        for k in orders:
            if k < method.min_order:
                continue
            spec = Spec("ersde", k, "ode", method=method.name)
            measured, command = report(spec)
            rows.append(
                {
                    "method": method,
                    "order": k,
                    "declared": method.order(k),
                    "report": measured,
                    "command": command,
                    "taylor": report(Spec("ersde", k, "ode"))[0],
                }
            )
    return rows


def _error_ratio(report, taylor) -> str:
    """The method study's error over the Taylor module's, at the finest step count both resolved."""
    mine, theirs = report.find("method", "gaussian"), taylor.find("method", "gaussian")
    if not mine or not theirs:
        return "-"
    a, b = mine[0], theirs[0]
    pairs = [
        (n, e, f)
        for n, e, f in zip(a.steps, a.errors, b.errors)
        if math.isfinite(e) and math.isfinite(f) and e > 10 * a.floor and f > 10 * b.floor
    ]
    if not pairs:
        return "-"
    n, e, f = pairs[-1]
    return f"{e / f:.2g} (N = {n})"


def methods_table(rows: list[dict]) -> str:
    """The markdown table: a row per registered method and K."""
    lines = [
        "| method | K | declared order | method | as-used | error / Taylor's | what it is | reproduce |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        method, report = row["method"], row["report"]
        verdict = "" if report.passed else " **(falls short)**"
        lines.append(
            f"| `{method.name}`{verdict} | {row['order']} | {row['declared']} | {_order(report, 'method')} | "
            f"{_order(report, 'as-used')} | {_error_ratio(report, row['taylor'])} | {method.summary} | "
            f"`{row['command']}` |"
        )
    return "\n".join(lines)


def _order(report, kind: str) -> str:
    studies = report.find(kind)
    if not studies:
        return "-"
    cells = []
    for study in studies:
        if study.exact:
            cells.append("exact")
        elif study.order is None:
            cells.append("n/a")
        else:
            cells.append(f"{study.order:.2f}" + (" (gmm)" if study.problem == "gmm" else ""))
    return " / ".join(cells)


def table(rows: list[dict]) -> str:
    """The markdown table: a row per published sampler, its derived counterpart in the row below."""
    lines = [
        "| sampler | claim made in | claimed | method | as-used | strong | weak | reproduce |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        variant, report, derived = row["variant"], row["report"], row["derived"]
        verdict = "" if report.passed else " **(falls short)**"
        lines.append(
            f"| {variant.title}{verdict} | {variant.claim.where} | {variant.claim.order} | {_order(report, 'method')} | "
            f"{_order(report, 'as-used')} | {_order(report, 'strong')} | {_order(report, 'weak')} | `{row['command']}` |"
        )
        lines.append(
            f"| ↳ derived `{derived.name}` | this derivation | {derived.order} | {_order(derived, 'method')} | "
            f"{_order(derived, 'as-used')} | {_order(derived, 'strong')} | {_order(derived, 'weak')} | "
            f"`{row['derived_command']}` |"
        )
    return "\n".join(lines)


def write_doc(path: pathlib.Path, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the block between the markers ``begin`` and ``end`` in ``path`` with ``text``."""
    content = path.read_text(encoding="utf-8")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{tail}", encoding="utf-8")


def write_plot(path: pathlib.Path, rows: list[dict]) -> None:
    """Error against step size: the variant's method and as-used studies and the derived method study."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 5
    n = len(rows)
    fig, axes = plt.subplots(
        math.ceil(n / cols), cols, figsize=(3.6 * cols, 2.8 * math.ceil(n / cols)), squeeze=False
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, row in zip(axes.flat, rows):
        curves = [
            (row["report"], "method", "-o", "published, method"),
            (row["report"], "as-used", ":s", "published, as used"),
            (row["derived"], "method", "--^", "derived, method"),
        ]
        for report, kind, style, label in curves:
            studies = report.find(kind)
            # the first study that is not exact to round-off (phi = s^2: the mixture's drift study)
            for study in [s for s in studies if not s.exact][:1] or studies[:1]:
                pts = [(h, e) for h, e in zip(study.step_sizes, study.errors) if math.isfinite(e) and e > 0]
                if not pts:
                    continue
                order = "exact" if study.exact else ("n/a" if study.order is None else f"{study.order:.2f}")
                ax.loglog(*zip(*pts), style, markersize=3, label=f"{label}: {order}")
        ax.set_title(f"{row['variant'].key} (claim {row['variant'].claim.order})", fontsize=9)
        ax.set_xlabel("mean step in log s", fontsize=8)
        ax.set_ylabel("error", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", linewidth=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("published samplers: error vs step size (Gaussian data, exact reference)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=56)
    plt.close(fig)


def report_json(rows: list[dict], settings: harness.Settings) -> dict:
    return {
        "settings": settings.as_dict(),
        "rows": [
            {
                "variant": row["variant"].key,
                "claim": {"order": row["variant"].claim.order, "where": row["variant"].claim.where},
                "report": row["report"].as_dict(),
                "derived": row["derived"].as_dict(),
            }
            for row in rows
        ],
    }


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--coarse", is_flag=True, help="Three halvings (the CI setting) instead of five.")
@click.option("--variant", "keys", multiple=True, help="Only these variants (repeatable).")
@click.option(
    "--doc",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    default=None,
    help="Markdown file whose table block is replaced.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    default=None,
    help="PNG of the convergence studies.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    default=None,
    help="Every number as JSON.",
)
@click.option(
    "--methods",
    is_flag=True,
    help="The methods table instead: every registered method (derive.methods) for K = 2, 3, 4.",
)
def main(coarse, keys, doc, plot, json_path, methods) -> None:
    """Measure every published sampler and its derived counterpart; print (and write) the claims table."""
    settings = harness.Settings.coarse() if coarse else harness.Settings()
    if methods:
        rows = measure_methods(settings)
        text = methods_table(rows)
        click.echo(text)
        if doc is not None:
            write_doc(doc, text, METHODS_BEGIN, METHODS_END)
        if json_path is not None:
            from derive.verify.command import _write_json

            _write_json(
                json_path,
                {
                    "settings": settings.as_dict(),
                    "rows": [
                        {
                            "method": r["method"].name,
                            "order": r["order"],
                            "declared": r["declared"],
                            "report": r["report"].as_dict(),
                        }
                        for r in rows
                    ],
                },
            )
        return
    rows = measure(settings, set(keys) or None)
    text = table(rows)
    click.echo(text)
    if doc is not None:
        write_doc(doc, text)
    if plot is not None:
        write_plot(plot, rows)
    if json_path is not None:
        from derive.verify.command import _write_json

        _write_json(json_path, report_json(rows, settings))


if __name__ == "__main__":  # pragma: no cover
    main()

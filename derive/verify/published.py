"""The table of published implementations: diffusers' schedulers and k-diffusion's samplers, claimed against
measured, each row with the command that reproduces it.

    python -m derive.verify.published [--coarse] [--only KEY ...] [--doc docs/claims.md] [--json PATH]

Every row is measured through the sampler's own interface by :func:`derive.verify.blackbox.verify_target`
(Gaussian data, exact references) and swept by :func:`derive.verify.edges.sweep`; the markdown replaces the block
between the markers in ``--doc``. k-diffusion rows need ``pip install --no-deps k-diffusion`` (its sampling
module is loaded on its own); without it they are listed as not measured.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import click

from derive.errors import SpecError
from derive.verify import blackbox, edges
from derive.verify.targets import parse_target

BEGIN, END = "<!-- published implementations: begin -->", "<!-- published implementations: end -->"

DPM = "diffusers:DPMSolverMultistepScheduler"
KD = "k_diffusion.sampling:"


def _never(t):
    return 0.0


def _always(t):
    return 1.0


@dataclasses.dataclass(frozen=True)
class Row:
    key: str
    target: str
    config: dict
    claimed: float
    claim: str
    #: Python-only config entries (callables) that JSON cannot carry
    extra: tuple = ()

    def full_config(self) -> dict:
        return {**self.config, **dict(self.extra)}

    @property
    def command(self) -> str:
        if self.extra:
            return f"python -m derive.verify.published --only {self.key}"
        config = f" --config '{json.dumps(self.config)}'" if self.config else ""
        return f"derive verify --sampler {self.target}{config} --claimed {self.claimed:g}"


def _dpm(key, order, claim="DPM-Solver(++) of order K (Lu et al. 2022)", **config):
    return Row(key, DPM, {"solver_order": order, **config}, float(order), claim)


ROWS = [
    _dpm("dpmpp_1", 1),
    _dpm("dpmpp_2m", 2),
    _dpm("dpmpp_2m_heun", 2, solver_type="heun"),
    _dpm("dpmpp_3m", 3),
    _dpm("dpm_2m", 2, algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
    _dpm("dpm_3m", 3, algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
    _dpm("sde_dpmpp_2m", 2, "SDE-DPM-Solver++(2M): drift of order 2", algorithm_type="sde-dpmsolver++"),
    _dpm(
        "sde_dpmpp_3m",
        3,
        "SDE-DPM-Solver++ solver_order 3: drift of order 3",
        algorithm_type="sde-dpmsolver++",
    ),
    _dpm(
        "sde_dpm_2m",
        2,
        "SDE-DPM-Solver (noise form), solver_order 2",
        algorithm_type="sde-dpmsolver",
        final_sigmas_type="sigma_min",
    ),
    _dpm(
        "sde_dpm_3m",
        3,
        "SDE-DPM-Solver (noise form), solver_order 3",
        algorithm_type="sde-dpmsolver",
        final_sigmas_type="sigma_min",
    ),
    Row(
        "dpm_singlestep_2",
        "diffusers:DPMSolverSinglestepScheduler",
        {"solver_order": 2},
        2.0,
        "singlestep DPM-Solver-2",
    ),
    Row(
        "dpm_singlestep_3",
        "diffusers:DPMSolverSinglestepScheduler",
        {"solver_order": 3},
        3.0,
        "singlestep DPM-Solver-3",
    ),
    *[
        Row(
            f"unipc_{kind}_{p}",
            "diffusers:UniPCMultistepScheduler",
            {"solver_order": p, "solver_type": kind},
            float(p + 1),
            "UniPC-p: UniC-p raises UniP-p to order p + 1 (Zhao et al. 2023)",
        )
        for kind in ("bh1", "bh2")
        for p in (1, 2, 3)
    ],
    Row("deis_2", "diffusers:DEISMultistepScheduler", {"solver_order": 2}, 2.0, "DEIS rhoAB, order 2"),
    Row("deis_3", "diffusers:DEISMultistepScheduler", {"solver_order": 3}, 3.0, "DEIS rhoAB, order 3"),
    Row(
        "sasolver_ode",
        "diffusers:SASolverScheduler",
        {"predictor_order": 3, "corrector_order": 4},
        4.0,
        "SA-Solver, tau = 0 (ODE): corrector_order 4",
        (("tau_func", _never),),
    ),
    Row(
        "sasolver_sde",
        "diffusers:SASolverScheduler",
        {"predictor_order": 3, "corrector_order": 4},
        4.0,
        "SA-Solver, tau = 1 (reverse SDE): corrector_order 4 for the drift",
        (("tau_func", _always),),
    ),
    Row(
        "euler",
        "diffusers:EulerDiscreteScheduler",
        {},
        1.0,
        "Euler (Karras et al. 2022, Alg. 1 without churn)",
    ),
    Row(
        "euler_ancestral",
        "diffusers:EulerAncestralDiscreteScheduler",
        {},
        1.0,
        "Euler ancestral: weak order 1",
    ),
    Row("heun", "diffusers:HeunDiscreteScheduler", {}, 2.0, "Heun (Karras et al. 2022, Alg. 1)"),
    Row("lms", "diffusers:LMSDiscreteScheduler", {}, 4.0, "linear multistep, order 4 (step's default)"),
    Row("dpm2", "diffusers:KDPM2DiscreteScheduler", {}, 2.0, "DPM-Solver-2 (Karras et al. 2022's DPM2)"),
    Row("flow_euler", "diffusers:FlowMatchEulerDiscreteScheduler", {}, 1.0, "Euler in flow coordinates"),
    Row(
        "dpmsolver_sde", "diffusers:DPMSolverSDEScheduler", {}, 2.0, "DPM-Solver++ SDE (2S): drift of order 2"
    ),
    Row("kd_euler", f"{KD}sample_euler", {}, 1.0, "Euler"),
    Row("kd_euler_ancestral", f"{KD}sample_euler_ancestral", {}, 1.0, "Euler ancestral: weak order 1"),
    Row("kd_heun", f"{KD}sample_heun", {}, 2.0, "Heun"),
    Row("kd_dpm_2", f"{KD}sample_dpm_2", {}, 2.0, "DPM-Solver-2"),
    Row(
        "kd_dpm_2_ancestral",
        f"{KD}sample_dpm_2_ancestral",
        {},
        2.0,
        "DPM-Solver-2 ancestral: weak order 2 (its ODE step has order 2)",
    ),
    Row("kd_lms", f"{KD}sample_lms", {}, 4.0, "linear multistep, order 4"),
    Row(
        "kd_dpmpp_2s_ancestral",
        f"{KD}sample_dpmpp_2s_ancestral",
        {},
        2.0,
        "DPM-Solver++(2S) ancestral: weak order 2 (its ODE step has order 2)",
    ),
    Row("kd_dpmpp_sde", f"{KD}sample_dpmpp_sde", {}, 2.0, "DPM-Solver++ SDE: drift of order 2"),
    Row("kd_dpmpp_2m", f"{KD}sample_dpmpp_2m", {}, 2.0, "DPM-Solver++(2M)"),
    Row("kd_dpmpp_2m_sde", f"{KD}sample_dpmpp_2m_sde", {}, 2.0, "DPM-Solver++(2M) SDE: drift of order 2"),
    Row("kd_dpmpp_3m_sde", f"{KD}sample_dpmpp_3m_sde", {}, 3.0, "DPM-Solver++(3M) SDE: drift of order 3"),
]


def measure(st, keys=None, with_edges: bool = True, progress=None) -> list[dict]:
    results = []
    for row in ROWS:
        if keys and row.key not in keys:
            continue
        if progress:
            progress(row.key)
        try:
            target = parse_target(row.target, row.full_config(), claimed=row.claimed, name=row.key)
        except SpecError as error:
            results.append({"row": row, "report": None, "edges": None, "error": str(error)})
            continue
        report = blackbox.verify_target(target, st)
        sweep = edges.sweep(target) if with_edges else None
        results.append({"row": row, "report": report, "edges": sweep, "error": None})
    return results


def _cell(report, kind) -> str:
    if report is None or not report.find(kind):
        return "-"
    if report.exact(kind):
        return "exact"
    order = report.order(kind)
    if order is None:
        study = report.find(kind)[0]
        return "crash" if any(e == float("inf") for e in study.errors) else "n/a"
    return f"{order:.2f}"


def _edge_cell(sweep) -> str:
    if sweep is None:
        return "-"
    flags = sweep["flags"]
    if not flags:
        return "none"
    crashes = [f for f in flags if "crash" in f]
    others = [f for f in flags if "crash" not in f]
    parts = []
    if crashes:
        counts = [f.split(":")[0] for f in crashes]
        parts.append(
            f"crash at {', '.join(counts[:3])}{' ...' if len(counts) > 3 else ''} ({crashes[0].split('(', 1)[-1].rstrip(')')})"
        )
    parts += others[:2]
    if len(others) > 2:
        parts.append(f"+{len(others) - 2} more")
    return "; ".join(parts).replace("|", "/")


def verdict(report) -> str:
    if report is None:
        return "not measured"
    if report.crash:
        return f"**crashes** ({report.crash.split(':')[0]})"
    if report.order("method") is None and not report.exact("method"):
        return "cannot decide"
    return "keeps its claim" if report.passed else "**falls short**"


def table(results: list[dict]) -> str:
    lines = [
        "| implementation | claim | claimed | method | as-used | start | strong | weak | verdict | edge sweep | reproduce |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        row, report = result["row"], result["report"]
        where = row.target.replace(KD, "k-diffusion ").replace("diffusers:", "diffusers ")
        config = ", ".join(f"{k}={v}" for k, v in row.config.items())
        extra = ", ".join(f"{k}={getattr(v, '__name__', v)}" for k, v in row.extra)
        label = f"`{row.key}`: {where}" + (
            f" ({', '.join(x for x in (config, extra) if x)})" if config or extra else ""
        )
        cells = [_cell(report, k) for k in ("method", "as-used", "start", "strong", "weak")]
        status = verdict(report) if result["error"] is None else f"not measured: {result['error']}"
        lines.append(
            f"| {label} | {row.claim} | {row.claimed:g} | {' | '.join(cells)} | {status} | "
            f"{_edge_cell(result['edges'])} | `{row.command}` |"
        )
    return "\n".join(lines)


def _row_key(line: str) -> str | None:
    """The row key of a table line (``| `key`: ...``), None for the header lines."""
    if line.startswith("| `") and "`:" in line:
        return line[3 : line.index("`:")]
    return None


def merge_tables(old: str, new: str) -> str:
    """``old`` with the rows that ``new`` measured replaced (a partial run, ``--only``), in ROWS order."""
    rows = {_row_key(line): line for line in old.splitlines() if _row_key(line)}
    header = [line for line in new.splitlines() if not _row_key(line)]
    rows.update({_row_key(line): line for line in new.splitlines() if _row_key(line)})
    order = [r.key for r in ROWS if r.key in rows]
    return "\n".join(header + [rows[key] for key in order])


def write_doc(path: pathlib.Path, text: str, partial: bool = False) -> None:
    content = path.read_text(encoding="utf-8")
    if BEGIN not in content:
        raise SpecError(f"{path} has no {BEGIN} marker")
    head, rest = content.split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    if partial:
        text = merge_tables(old.strip("\n"), text)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")


def report_json(results, st) -> dict:
    return {
        "settings": st.as_dict(),
        "rows": [
            {
                "key": r["row"].key,
                "command": r["row"].command,
                "claim": r["row"].claim,
                "report": None if r["report"] is None else r["report"].as_dict(),
                "edges": r["edges"],
                "error": r["error"],
            }
            for r in results
        ],
    }


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--coarse", is_flag=True, help="Three halvings (the CI setting).")
@click.option("--only", "keys", multiple=True, help="Only these rows (repeatable).")
@click.option("--no-edges", is_flag=True, help="Skip the edge sweeps.")
@click.option(
    "--doc",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    default=None,
    help="Markdown file to update.",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=pathlib.Path), default=None)
def main(coarse, keys, no_edges, doc, json_path) -> None:
    """Measure the published implementations; print (and write) the table."""
    unknown = sorted(set(keys) - {r.key for r in ROWS})
    if unknown:
        raise click.UsageError(f"unknown row(s) {', '.join(unknown)}")
    st = blackbox.settings(coarse)
    results = measure(
        st, set(keys) or None, not no_edges, progress=lambda key: click.echo(f"measuring {key}", err=True)
    )
    text = table(results)
    click.echo(text)
    if doc is not None:
        write_doc(doc, text, partial=bool(keys))
    if json_path is not None:
        from derive.verify.command import _write_json

        _write_json(json_path, report_json(results, st))


if __name__ == "__main__":  # pragma: no cover
    main()

"""Wall time of ``derive gen`` from a cold process (a new interpreter per command; the OS file cache is warm).

Every command runs with an empty derivation cache (``DERIVE_CACHE_DIR`` set to a new folder: the first run
on a machine) except the rows marked "cached", which reuse the cache of an earlier identical run.

Measures ``derive gen --family ersde --order 3`` (target < 5 s), ``--order 8`` (< 60 s), ``derive gen --all``
(written to a temporary folder, so generated/ is never touched) and ``derive gen --all --check`` (read-only,
against generated/, as CI runs it; < 3 min), and the growth of the time with the order (1..8) for phi = ode
and the default phi. For each command: wall time and the CPU time (user + sys) of the process and its children,
which is the better measure when the machine is shared.

    .venv/bin/python benchmarks/generation.py            # full run (tens of minutes on a loaded machine)
    .venv/bin/python benchmarks/generation.py --quick    # order 1, phi = ode only
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import HERE, ROOT, command_line, fmt, machine, machine_line, markdown_table, median, write_json

TARGETS = {"order 3": 5.0, "order 3 (cached)": 5.0, "order 8": 60.0, "--all": 180.0, "--all --check": 180.0}


def derive_executable() -> list[str]:
    exe = pathlib.Path(sys.executable).with_name("derive")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("derive")
    return [found] if found else [sys.executable, "-m", "derive.cli"]


_CACHES = iter(range(10**9))
#: folder for the fresh per-command caches (set by main to its temporary folder, removed with it)
_CACHE_ROOT = [pathlib.Path(tempfile.gettempdir())]


def timed(args: list[str], timeout: float, cache: pathlib.Path | None = None) -> dict:
    """Run one command in a new process; wall time and CPU time of it and its children. ``cache``: the
    derivation cache folder to use (default: a new, empty one)."""
    if cache is None:
        cache = _CACHE_ROOT[0] / f"derive-bench-cache-{next(_CACHES)}"
    env = {**os.environ, "DERIVE_CACHE_DIR": str(cache)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
        code, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        code, stderr = None, f"timeout after {timeout} s"
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "command": " ".join(["derive", *args[len(derive_executable()) :]]),
        "wall_s": wall,
        "cpu_s": cpu,
        "exit_code": code,
        "stderr_tail": (stderr or "").strip().splitlines()[-3:],
        "load_average": list(os.getloadavg()),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="order 1, phi = ode only, no --all")
    parser.add_argument(
        "--repeats", type=int, default=None, help="repeats of the headline single-module commands"
    )
    parser.add_argument("--max-order", type=int, default=8)
    parser.add_argument("--json", type=pathlib.Path, default=HERE / "generation.json", help="raw numbers")
    args = parser.parse_args(argv)
    derive = derive_executable()
    payload = {
        "benchmark": "generation",
        "command": command_line(),
        "quick": args.quick,
        "machine": machine(),
    }
    runs: dict = {"headline": {}, "growth": {}}
    with tempfile.TemporaryDirectory(prefix="derive-bench-") as tmp:
        out = pathlib.Path(tmp)
        _CACHE_ROOT[0] = out
        if args.quick:
            orders, phis, repeats = [1], ["ode"], args.repeats or 1
        else:
            orders, phis, repeats = list(range(1, args.max_order + 1)), ["ode", "default"], args.repeats or 3
        for phi in phis:
            for order in orders:
                folder = out / f"growth-{phi}-{order}"
                result = timed(
                    [
                        *derive,
                        "gen",
                        "--family",
                        "ersde",
                        "--order",
                        str(order),
                        "--phi",
                        phi,
                        "--out",
                        str(folder),
                    ],
                    timeout=1800,
                )
                runs["growth"].setdefault(phi, {})[order] = result
                print(f"order {order} phi {phi}: {result['wall_s']:.1f} s", file=sys.stderr, flush=True)
        if not args.quick:
            for name, order in (("order 3", 3), ("order 8", args.max_order)):
                results = []
                for r in range(repeats if order <= 3 else 1):
                    folder = out / f"headline-{order}-{r}"
                    results.append(
                        timed(
                            [
                                *derive,
                                "gen",
                                "--family",
                                "ersde",
                                "--order",
                                str(order),
                                "--out",
                                str(folder),
                            ],
                            timeout=1800,
                        )
                    )
                # the growth sweep's default-phi run of the same order is one more sample of the same command
                results.append(runs["growth"]["default"][order])
                runs["headline"][name] = {
                    "runs": results,
                    "wall_s_median": median([x["wall_s"] for x in results]),
                    "cpu_s_median": median([x["cpu_s"] for x in results]),
                }
                print(f"{name}: {runs['headline'][name]['wall_s_median']:.1f} s", file=sys.stderr, flush=True)
            warm = out / "warm-cache"
            command = [*derive, "gen", "--family", "ersde", "--order", "3"]
            timed([*command, "--out", str(out / "warm-fill")], timeout=1800, cache=warm)  # fills the cache
            results = [
                timed([*command, "--out", str(out / f"warm-{r}")], timeout=1800, cache=warm)
                for r in range(repeats)
            ]
            runs["headline"]["order 3 (cached)"] = {
                "runs": results,
                "wall_s_median": median([x["wall_s"] for x in results]),
                "cpu_s_median": median([x["cpu_s"] for x in results]),
            }
            result = timed([*derive, "gen", "--all", "--out", str(out / "all")], timeout=3600)
            runs["headline"]["--all"] = {
                "runs": [result],
                "wall_s_median": result["wall_s"],
                "cpu_s_median": result["cpu_s"],
            }
            print(f"--all: {result['wall_s']:.1f} s", file=sys.stderr, flush=True)
            result = timed([*derive, "gen", "--all", "--check"], timeout=3600)
            runs["headline"]["--all --check"] = {
                "runs": [result],
                "wall_s_median": result["wall_s"],
                "cpu_s_median": result["cpu_s"],
            }
            print(
                f"--all --check: {result['wall_s']:.1f} s (exit {result['exit_code']})",
                file=sys.stderr,
                flush=True,
            )
    payload["runs"] = runs
    payload["targets_s"] = TARGETS
    payload["load_average_at_end"] = list(os.getloadavg())
    write_json(args.json, payload)
    text = render(payload)
    args.json.with_suffix(".md").write_text(text + "\n")
    print(text)
    return payload


def render(payload: dict) -> str:
    parts = [f"Machine: {machine_line(payload['machine'])}", f"Command: `{payload['command']}`", ""]
    runs = payload["runs"]
    if runs["headline"]:
        rows = []
        for name, res in runs["headline"].items():
            target = payload["targets_s"].get(name)
            wall, cpu = res["wall_s_median"], res["cpu_s_median"]
            codes = sorted({str(r["exit_code"]) for r in res["runs"]})
            verdict = (
                "-" if target is None else ("met" if wall < target else f"missed by {wall / target:.1f}x")
            )
            cpu_verdict = (
                "-" if target is None else ("met" if cpu < target else f"missed by {cpu / target:.1f}x")
            )
            rows.append(
                [
                    f"`{res['runs'][0]['command']}`",
                    len(res["runs"]),
                    fmt(wall, ".1f"),
                    fmt(cpu, ".1f"),
                    f"< {target:g}" if target else "-",
                    verdict,
                    cpu_verdict,
                    ",".join(codes),
                ]
            )
        parts.append(
            markdown_table(
                [
                    "command",
                    "runs",
                    "wall s (median)",
                    "CPU s (median)",
                    "target s",
                    "wall vs target",
                    "CPU vs target",
                    "exit",
                ],
                rows,
            )
        )
        parts.append("")
    growth = runs["growth"]
    orders = sorted({int(o) for g in growth.values() for o in g})
    header = ["order"]
    for phi in growth:
        header += [f"phi={phi} wall s", f"phi={phi} CPU s"]
    rows = []
    for order in orders:
        row = [order]
        for phi, by_order in growth.items():
            res = by_order.get(order) or by_order.get(str(order))
            row += [fmt(res and res["wall_s"], ".1f"), fmt(res and res["cpu_s"], ".1f")]
        rows.append(row)
    parts.append(
        "Growth with the order (`derive gen --family ersde --order K --phi PHI`, one cold process each):"
    )
    parts.append("")
    parts.append(markdown_table(header, rows))
    return "\n".join(parts)


if __name__ == "__main__":
    main()

"""Shared helpers of the benchmark scripts: the machine description, module loading, JSON output."""

from __future__ import annotations

import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
GENERATED = ROOT / "generated"
HERE = pathlib.Path(__file__).resolve().parent


def load_generated(name: str, folder: pathlib.Path = GENERATED):
    """``folder/name.py`` through the public loader (which also registers it in ``sys.modules``, where
    torch.compile looks functions' globals up)."""
    from derive.loader import load_file

    return load_file(folder / f"{name}.py")


def _lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.strip().startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def machine() -> dict:
    """What the numbers were measured on (load average included: the machine may be shared)."""
    info = {
        "cpu_model": _lscpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    from importlib import metadata

    for name in ("torch", "diffusers", "sympy"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # pragma: no cover
            info[name] = None
    torch = sys.modules.get("torch")  # threads only if the benchmark uses torch (importing it is slow)
    info["torch_threads"] = torch.get_num_threads() if torch is not None else None
    return info


def machine_line(info: dict) -> str:
    load = info.get("load_average_at_start")
    load_text = "" if load is None else f", load average at start {load[0]:.1f}"
    threads = info.get("torch_threads")
    threads_text = "" if threads is None else f" ({threads} threads)"
    return (
        f"{info['cpu_model']}, {info['logical_cpus']} logical CPUs{load_text}; Python {info['python']}, "
        f"torch {info.get('torch')}{threads_text}, diffusers {info.get('diffusers')}, sympy {info.get('sympy')}"
    )


def write_json(path: pathlib.Path, payload: dict) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text(json.dumps(payload, separators=(",", ":"), default=_default) + "\n")
    os.replace(tmp, path)


def _default(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def command_line() -> str:
    """The command that reproduces this run, with the interpreter named as README's setup names it."""
    exe = ".venv/bin/python" if pathlib.Path(sys.prefix).resolve().parent == ROOT else "python"
    script = pathlib.Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return " ".join([str(exe), str(script), *sys.argv[1:]])


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def fmt(value, spec: str = ".3g", missing: str = "-") -> str:
    if value is None:
        return missing
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return format(value, spec)

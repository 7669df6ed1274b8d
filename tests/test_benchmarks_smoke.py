"""The benchmark scripts run in their quick mode and write JSON of the expected shape (no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from .conftest import ROOT

BENCH = ROOT / "benchmarks"


def _run(script: str, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", *args],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _finite_or_none(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not math.isnan(value))


def test_overhead_quick(tmp_path):
    out = tmp_path / "overhead.json"
    stdout = _run("overhead.py", "--no-compile", "--json", str(out))
    data = json.loads(out.read_text())
    assert data["benchmark"] == "overhead" and data["quick"] is True
    assert data["machine"]["cpu_model"] and data["machine"]["torch_threads"] >= 1
    case = data["cases"][0]
    names = list(case["results"])
    assert any(n.startswith("ours order 3") for n in names)
    assert "diffusers DPMSolver++ 2M" in names and "floor (3 fused multiply-adds)" in names
    for row in case["results"].values():
        assert len(row["raw_step_s"]) == case["repeats"]
        assert row["step_s_median"] > 0
        for key in ("ratio_vs_floor", "ratio_vs_dpm2m", "overhead_ratio_vs_dpm2m"):
            assert _finite_or_none(row[key])
    assert "| sampler |" in stdout


def test_accuracy_quick(tmp_path):
    out = tmp_path / "accuracy.json"
    png = tmp_path / "accuracy.png"
    stdout = _run("accuracy.py", "--json", str(out), "--plot", str(png))
    data = json.loads(out.read_text())
    assert data["benchmark"] == "accuracy"
    assert png.exists() and png.with_name("accuracy_sde.png").exists()
    det = data["deterministic"]
    assert det, "no deterministic results"
    for case in det.values():
        for metric in ("rms", "median"):
            for variant in ("sigma_min", "zero"):
                curves = case["errors"][metric][variant]
                assert "ours s3" in curves and "DPM++ 2M" in curves
                for curve in curves.values():
                    assert all(_finite_or_none(v) for v in curve.values())
                assert len(case["summary"][metric][variant]) == len(data["targets"])
        # the drivers' identities hold (DDIM is our order 1; the final step to 0 is the denoiser)
        assert case["checks"]["ddim_vs_ours_s1_max_abs"] < 1e-9
        assert case["checks"]["final_zero_step_vs_manual_max_abs"] < 1e-12
        assert case["checks"]["dpm3m_fixed_heun_vs_ours_lambda3_max_abs"] < 1e-4
    for res in data["gaussian_weak"].values():
        assert "ours ER 3" in res["sigma_min"] and "SDE-DPM++ 2M" in res["sigma_min"]
    for case in data["mixture_sw"].values():
        assert case["floor"] > 0 and case["samples"] == data["sw_samples"]
    assert "ours / peer" in stdout


def test_generation_quick(tmp_path):
    out = tmp_path / "generation.json"
    stdout = _run("generation.py", "--json", str(out))
    data = json.loads(out.read_text())
    assert data["benchmark"] == "generation"
    growth = data["runs"]["growth"]["ode"]
    assert growth, "no generation runs"
    for run in growth.values():
        assert run["exit_code"] == 0, run["stderr_tail"]
        assert run["wall_s"] > 0 and run["cpu_s"] >= 0
    assert "| order |" in stdout

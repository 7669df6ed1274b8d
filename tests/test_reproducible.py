"""What derive writes is a function of the spec alone: the same bytes on any CPU, SIMD code path and hash seed.

The catalogue and the docs pages are regenerated from scratch (empty cache) in fresh processes: once as the
machine is, once with every SIMD group numpy dispatches to switched off (``NPY_DISABLE_CPU_FEATURES``), which
changes the last bits of numpy's vectorised float64 functions. Both must equal the checked-in files byte for
byte. The planner must not need numpy at all, and written files get ordinary permissions.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from derive.files import atomic_write

from .conftest import ROOT


def _wide_simd_groups() -> list[str]:
    """numpy's dispatch targets this CPU has (empty on a CPU with none beyond numpy's baseline)."""
    from numpy._core import _multiarray_umath as umath

    return [name for name in umath.__cpu_dispatch__ if umath.__cpu_features__.get(name)]


def _regenerate(tmp_path, extra_env: dict, seed: str) -> None:
    env = {**os.environ, **extra_env, "PYTHONHASHSEED": seed, "DERIVE_CACHE_DIR": str(tmp_path / "cache")}
    for command in (
        ["-m", "derive.cli", "gen", "--all", "--check"],
        ["-m", "derive.explain.docs", "--check"],
    ):
        result = subprocess.run(
            [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
        )
        assert result.returncode == 0, (
            f"{' '.join(command)} ({extra_env or 'native'}):\n{result.stdout[-4000:]}"
        )


def test_catalogue_and_docs_reproduce_natively_from_a_cold_cache(tmp_path):
    _regenerate(tmp_path, {}, seed="4242")


def test_catalogue_and_docs_reproduce_with_simd_switched_off(tmp_path):
    groups = _wide_simd_groups()
    # on a CPU without wide SIMD groups the native run above already is the narrow one; say so, do not skip
    env = {"NPY_DISABLE_CPU_FEATURES": " ".join(groups)} if groups else {}
    _regenerate(tmp_path, env, seed="17")


def test_derivation_runs_without_numpy(tmp_path):
    """No numpy, so no float64 measurement of the machine, can reach a decision or a printed figure."""
    code = (
        "import sys; sys.modules['numpy'] = None\n"
        "from derive.emit.render import render\n"
        "from derive.spec import CATALOGUE\n"
        "import pathlib\n"
        "for spec in CATALOGUE[::8]:\n"
        "    assert render(spec) == (pathlib.Path('generated') / f'{spec.name}.py').read_text(), spec.name\n"
        "print('ok')\n"
    )
    env = {**os.environ, "DERIVE_CACHE_DIR": "off"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_get_the_umask_mode(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = tmp_path / "module.py"
        atomic_write(path, "x = 1\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["module.py"]  # no temporary file left


def test_rewritten_files_keep_their_mode(tmp_path):
    path = tmp_path / "module.py"
    path.write_text("x = 1\n")
    path.chmod(0o640)
    atomic_write(path, "x = 2\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "x = 2\n"


def test_cli_writes_readable_modules(tmp_path):
    """derive gen under umask 022 writes 0644 modules and manifest (what another account needs to read them)."""
    out = tmp_path / "out"
    code = "import os, sys; os.umask(0o022); from derive.cli import main; sys.argv = sys.argv[1:]; main()"
    args = ["derive", "gen", "--family", "ersde", "--order", "1", "--phi", "ode", "--out", str(out)]
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path

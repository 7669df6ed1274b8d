"""The package a user installs: a wheel, installed non-editable into a fresh venv, samples from another folder.

The fresh venv gets derive from the wheel alone (``pip install --no-deps``); its dependencies (torch, SymPy,
...) come from this test run's environment through a ``.pth`` line, as ``--system-site-packages`` would give
them, so nothing is downloaded. A ``.pth`` line only adds a folder to ``sys.path``: the editable install of
the test environment (its own ``.pth`` hook) is not active in the fresh venv, which the test checks.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from .conftest import ROOT

SAMPLE = """
import json, pathlib, sys
import torch
import derive
solver = derive.load("ersde_order3")
x = torch.randn(4, 2, dtype=torch.float64) * 5.0
sigmas = torch.exp(torch.linspace(torch.log(torch.tensor(5.0)), torch.log(torch.tensor(0.05)), 12)).double()
out = solver.sample(lambda x, sigma: 0.5 * x, x, sigmas)
print(json.dumps({
    "derive": derive.__file__,
    "module": solver.__file__,
    "finite": bool(torch.isfinite(out).all()),
    "shape": list(out.shape),
    "sympy_after_load": "sympy" in sys.modules,
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (path,) = out.glob("derive-*.whl")
    return path


def test_wheel_ships_the_catalogue(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    manifest = json.loads((ROOT / "generated" / "MANIFEST.json").read_text())
    assert "derive/_generated/MANIFEST.json" in names
    missing = [name for name in manifest if f"derive/_generated/{name}.py" not in names]
    assert not missing, f"catalogue modules left out of the wheel: {missing}"
    assert not any(name.startswith(("tests/", "generated/")) for name in names)


def test_fresh_venv_samples_from_an_empty_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # the dependencies, as --system-site-packages would give them (appended: the wheel's derive comes first)
    (pathlib.Path(purelib) / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [str(python), "-c", SAMPLE], cwd=empty, env=env, check=True, capture_output=True, text=True
    )
    result = json.loads(run.stdout)
    assert result["derive"].startswith(purelib), result  # the installed wheel, not the checkout
    assert result["module"].startswith(purelib) and "_generated" in result["module"], result
    assert result["finite"] and result["shape"] == [4, 2]
    assert not result["sympy_after_load"], "derive.load imported SymPy"
    listing = subprocess.run(
        [str(venv / "bin" / "derive"), "list", "--json"], cwd=empty, env=env, check=True, capture_output=True
    )
    assert "ersde_order3" in {row["module"] for row in json.loads(listing.stdout)["modules"]}
    assert not any(empty.iterdir()), "sampling or listing wrote into the working folder"

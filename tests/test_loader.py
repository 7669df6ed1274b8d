"""derive.load: catalogue modules by name, written modules by path, clear errors otherwise."""

import json
import pathlib
import subprocess
import sys

import pytest

import derive
from derive.loader import catalogue_dir, catalogue_names

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_catalogue_name_loads_a_sampler():
    names = catalogue_names()
    assert names == sorted(json.loads((ROOT / "generated" / "MANIFEST.json").read_text()))
    for name in names:
        module = derive.load(name)
        assert callable(module.sample) and module.ORDER >= 1, name


def test_name_and_path_give_the_same_module_object():
    by_name = derive.load("ersde_order3")
    by_path = derive.load(catalogue_dir() / "ersde_order3.py")
    by_text = derive.load(str(catalogue_dir() / "ersde_order3.py"))
    assert by_name is by_path is by_text


@pytest.mark.parametrize(
    ("argument", "error", "words"),
    [
        ("no_such_module", ValueError, "unknown module 'no_such_module'"),
        ("../etc/passwd", ValueError, "no generated module file"),
        ("", TypeError, "name_or_path"),
        (3, TypeError, "name_or_path"),
    ],
)
def test_bad_names_are_refused_with_a_message(argument, error, words):
    with pytest.raises(error, match=words):
        derive.load(argument)


def test_a_python_file_that_is_not_a_sampler_is_refused(tmp_path):
    path = tmp_path / "other.py"
    path.write_text("x = 1\n")
    with pytest.raises(ValueError, match="not a generated sampler module"):
        derive.load(path)


def test_loads_from_another_working_directory(tmp_path):
    code = "import derive; m = derive.load('ersde_order2_phi_ode'); print(m.ORDER)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "2"

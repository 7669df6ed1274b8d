"""The CLI as a user meets it: fast rejections, whole names when piped, one vocabulary, progress on a terminal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from derive import options
from derive.loader import catalogue_dir, catalogue_names
from derive.spec import DYNAMICS, FAMILIES, METHODS

#: runs the CLI in a fresh interpreter and reports which heavy modules the rejection had imported
PROBE = """
import sys
from derive.cli import main
sys.argv = ["derive", *sys.argv[1:]]
try:
    main()
except SystemExit as done:
    heavy = sorted(m for m in ("torch", "scipy", "derive.emit.render", "derive.verify.harness") if m in sys.modules)
    print(done.code, ",".join(heavy))
"""


def _probe(*args, cwd=None):
    run = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    code, _, heavy = run.stdout.strip().partition(" ")
    return int(code), heavy, run.stderr


def _derive(*args, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "derive.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("verify", "--steps", "abc"), "--steps must be comma-separated"),
        (
            ("verify", "--module", "ersde_order2", "--json", "/proc/derive/x.json"),
            "--json /proc/derive/x.json",
        ),
        (("verify", "--module", "ersde_order2", "--plot", "x.gif"), "--plot must end in"),
        (("gen", "--order", "2", "--out", "/proc/derive-out"), "--out /proc/derive-out"),
        (("explain", "--order", "2", "--out", "/proc/x.md"), "--out /proc/x.md"),
    ],
)
def test_bad_arguments_and_output_paths_are_refused_before_heavy_work(args, words):
    code, heavy, stderr = _probe(*args)
    assert code == 2, stderr
    assert words in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert heavy == "", f"imported {heavy} before refusing"


def test_an_unwritable_out_under_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(Exception, match="is a file, not a folder|exists and is not a folder"):
        options.check_output_dir(blocker / "sub", "--out")
    options.check_output_dir(tmp_path / "new" / "deeper", "--out")  # creatable: accepted, not created
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("verify", "--family", "nope"),
        ("gen", "--method", "nope", "--order", "2"),
        ("explain", "--method", "x"),
    ],
)
def test_click_errors_are_one_line_too(args):
    result = _derive(*args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("derive: error: "), (
        result.stderr
    )
    assert "choose one of" in lines[0] and f"derive {args[0]} --help" in lines[0]


def test_every_subcommand_shows_the_same_choices_in_help():
    helps = {command: _derive(command, "--help").stdout for command in ("gen", "verify", "explain")}
    for command, text in helps.items():
        flat = " ".join(text.split())
        for choices in (f"[{'|'.join(values)}]" for values in (FAMILIES, METHODS, DYNAMICS)):
            assert choices in flat, f"derive {command} --help lacks {choices}"


def test_explain_method_other_than_taylor_is_refused_with_the_reason():
    result = _derive("explain", "--method", "adams", "--order", "2")
    assert result.returncode == 2 and "same weights as taylor" in result.stderr


def test_list_piped_gives_whole_names_one_row_per_line():
    result = _derive("list")
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].split("\t")[0] == "module" and "\t" in lines[1]
    first_column = {line.split("\t")[0] for line in lines}
    names = set(catalogue_names())
    assert {name for name in names if not name.startswith("variant_")} <= first_column
    assert all(len(line.split("\t")) in (6, 8) for line in lines)


def test_list_json_names_every_module():
    payload = json.loads(_derive("list", "--json").stdout)
    listed = {row["module"] for row in payload["modules"]} | {row["module"] for row in payload["variants"]}
    assert listed == set(catalogue_names())
    assert all(isinstance(row["order"], int) for row in payload["modules"])


def test_verify_takes_a_module_path(tmp_path):
    path = tmp_path / "mine.py"
    shutil.copy(catalogue_dir() / "ersde_order1_phi_ode.py", path)
    result = _derive(
        "verify", "--module", str(path), "--coarse", "--json", str(tmp_path / "r.json"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert "mine" in json.dumps(report)
    missing = _derive("verify", "--module", str(tmp_path / "absent.py"))
    assert missing.returncode == 2 and "absent.py" in missing.stderr


def test_progress_shows_on_a_terminal_and_not_when_piped(monkeypatch, capsys):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TERM", "dumb")
    with options.progress(3, "deriving") as tick:  # pytest's captured stderr is not a terminal
        tick("a")
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich then treats stderr as a terminal
    monkeypatch.setenv("TERM", "xterm-256color")
    with options.progress(3, "deriving") as tick:
        for name in ("a", "b", "c"):
            time.sleep(0.15)  # the bar redraws ten times a second
            tick(name)
    with options.status("checking"):
        pass
    assert "deriving" in capsys.readouterr().err


def test_gen_piped_prints_only_paths(tmp_path):
    env = {**os.environ, "DERIVE_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("FORCE_COLOR", None)
    result = _derive("gen", "--variant", "ddim", "--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout.strip().endswith("variant_ddim.py")

"""The README's Python examples run as written."""

from __future__ import annotations

import re

import torch

from .conftest import ROOT


def _blocks():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_examples():
    assert len(_blocks()) >= 2


def test_readme_examples_run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # as written, from any folder: only the public API, nothing from tests/
    for block in _blocks():
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
        out = namespace.get("out")
        assert out is not None and torch.isfinite(out).all()


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    command = next(
        line for line in readme.splitlines() if line.startswith("python3 -m venv") and "pytest" in line
    )
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci_lines


def test_readme_uses_only_the_public_api():
    text = (ROOT / "README.md").read_text()
    assert "tests.conftest" not in text and "load_module(" not in text


def test_readme_commands_write_to_user_paths():
    """No example overwrites a tracked file: ``gen`` (except the catalogue's own ``--all``) and ``--plot``
    / ``--json`` / ``--out`` name a folder of the reader's."""
    shell = "\n".join(re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S))
    tracked = ("generated", "docs/", "templates", "derive/", "tests/")
    for line in shell.splitlines():
        for option in ("--out", "--plot", "--json"):
            for path in re.findall(rf"{option}[ =](\S+)", line):
                assert not path.startswith(tracked), line
        if "derive gen" in line and "--all" not in line and "--check" not in line:
            assert "--out" in line, f"writes into generated/: {line}"

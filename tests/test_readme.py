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


def test_readme_examples_run(monkeypatch):
    monkeypatch.chdir(ROOT)
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

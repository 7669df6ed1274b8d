"""The derivation cache: pure values only, misses on anything malformed, and never a different output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from derive import cache

from .conftest import GENERATED, ROOT


def test_round_trip_and_malformed_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("DERIVE_CACHE_DIR", str(tmp_path))
    values = [0.1, 1e-300, 2.0 / 3.0, -5e300]
    cache.store("reference", ("a", "b"), values)
    assert cache.load("reference", ("a", "b")) == values  # floats round-trip exactly
    assert cache.load("reference", ("a", "c")) is None
    (entry,) = (tmp_path / "reference").iterdir()
    entry.write_text("{not json")
    assert cache.load("reference", ("a", "b")) is None
    assert not [p for p in tmp_path.rglob(".tmp-*")]  # no temporary files left behind


def test_disabled_and_unwritable(tmp_path, monkeypatch):
    monkeypatch.setenv("DERIVE_CACHE_DIR", "off")
    cache.store("reference", ("a",), [1.0])
    assert cache.directory() is None and cache.load("reference", ("a",)) is None
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("DERIVE_CACHE_DIR", str(blocker))  # a file where a folder should be
    cache.store("reference", ("a",), [1.0])  # costs time only, raises nothing
    assert cache.load("reference", ("a",)) is None


def test_cold_and_warm_cache_give_the_checked_in_module(tmp_path):
    """Two processes, the first filling an empty cache, the second reading it: both write the checked-in file
    (the default phi needs the 30-digit reference values of its quadrature)."""
    env = {**os.environ, "DERIVE_CACHE_DIR": str(tmp_path / "cache")}
    expected = (GENERATED / "ersde_order2.py").read_text()
    for run in ("cold", "warm"):
        out = tmp_path / run
        subprocess.run(
            [
                sys.executable,
                "-m",
                "derive.cli",
                "gen",
                "--family",
                "ersde",
                "--order",
                "2",
                "--out",
                str(out),
            ],
            check=True,
            cwd=ROOT,
            env=env,
            capture_output=True,
        )
        assert (out / "ersde_order2.py").read_text() == expected, run
    kinds = {p.parent.name for p in (tmp_path / "cache").rglob("*.json")}
    assert kinds == {"reference"}
    for path in (tmp_path / "cache").rglob("*.json"):
        value = json.loads(path.read_text())
        assert all(isinstance(row, list) and all(isinstance(x, str) for x in row) for row in value)

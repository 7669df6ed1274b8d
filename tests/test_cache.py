"""The derivation cache: pure values only, misses on anything malformed, and never a different output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import mpmath
import pytest

from derive import cache
from derive import files as files_mod
from derive.emit import write as write_mod
from derive.errors import HandEditedError
from derive.spec import Spec

from .conftest import GENERATED, ROOT


def _gen(out, env, order="3"):
    return subprocess.run(
        [sys.executable, "-m", "derive.cli", "gen", "--family", "ersde", "--order", order, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_round_trip_and_malformed_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("DERIVE_CACHE_DIR", str(tmp_path))
    values = [0.1, 1e-300, 2.0 / 3.0, -5e300]
    cache.store("reference", ("a", "b"), values)
    assert cache.load("reference", ("a", "b")) == values  # floats round-trip exactly
    assert cache.load("reference", ("a", "c")) is None
    (entry,) = (tmp_path / "reference").iterdir()
    entry.write_text("{not json")
    assert cache.load("reference", ("a", "b")) is None
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary files left behind


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
        result = _gen(out, env, order="2")
        assert result.returncode == 0, result.stderr
        assert (out / "ersde_order2.py").read_text() == expected, run
    kinds = {p.parent.name for p in (tmp_path / "cache").rglob("*.json")}
    assert kinds == {"reference"}
    for path in (tmp_path / "cache").rglob("*.json"):
        value = json.loads(path.read_text())["value"]
        assert all(isinstance(row, list) and all(isinstance(x, str) for x in row) for row in value)


@pytest.fixture(scope="module")
def filled_cache(tmp_path_factory):
    """A cache filled by one cold ``derive gen --family ersde --order 3`` (default phi: quadrature)."""
    root = tmp_path_factory.mktemp("filled")
    result = _gen(root / "out", {**os.environ, "DERIVE_CACHE_DIR": str(root / "cache")})
    assert result.returncode == 0, result.stderr
    return root / "cache"


def _poison(path, how):
    entry = json.loads(path.read_text())
    rows = entry["value"]
    if how == "nan":
        entry["value"] = [["nan" for _ in row] for row in rows]
    elif how == "scaled":
        with mpmath.workdps(40):
            entry["value"] = [
                [mpmath.nstr(mpmath.mpf(x) * (1 + mpmath.mpf("1e-9")), 35) for x in row] for row in rows
            ]
    elif how == "edited":
        rows[len(rows) // 2][0] = (
            rows[len(rows) // 2][0][:-3] + "123"
        )  # one middle value, checksum not updated
        path.write_text(json.dumps(entry))
        return
    # a consistent entry (its checksum recomputed) with wrong values: only the re-check can tell
    entry["sha256"] = cache._checksum(entry["value"])
    path.write_text(json.dumps(entry))


@pytest.mark.parametrize("how", ["nan", "scaled", "edited"])
def test_poisoned_entry_is_recomputed_and_replaced(filled_cache, tmp_path, how):
    """Before: a well-formed entry with NaN values, or values scaled by 1 + 1e-9, made every later gen exit 2
    ("phi cannot be evaluated accurately in float64") until the cache was deleted by hand. Now the entry fails
    its checksum or its re-check, a warning says so, the value is recomputed and replaces the entry."""
    shutil.copytree(filled_cache, tmp_path / "cache")
    (entry,) = (tmp_path / "cache" / "reference").glob("*.json")
    _poison(entry, how)
    env = {**os.environ, "DERIVE_CACHE_DIR": str(tmp_path / "cache")}
    expected = (GENERATED / "ersde_order3.py").read_text()
    first = _gen(tmp_path / "first", env)
    assert first.returncode == 0, first.stderr
    assert "recomputed" in first.stderr
    assert (tmp_path / "first" / "ersde_order3.py").read_text() == expected
    second = _gen(tmp_path / "second", env)
    assert second.returncode == 0 and "recomputed" not in second.stderr, second.stderr
    assert entry.read_text() == next((filled_cache / "reference").glob("*.json")).read_text()


def test_temporaries_of_killed_writers_are_removed(tmp_path):
    """A run killed between writing a temporary and renaming it leaves ``.NAME.PID.XXXX.tmp``; the next write
    into the folder removes it, but not the temporary of a writer that is still running."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".ersde_order1.py.{int(dead.stdout)}.abc123.tmp"
    live = tmp_path / f".ersde_order1.py.{os.getpid()}.def456.tmp"
    stale.write_text("partial")
    live.write_text("in progress")
    spec = Spec(family="ersde", order=1, phi="s")
    write_mod.write_modules({spec: "# generated by derive\n"}, tmp_path)
    assert not stale.exists() and live.exists()
    assert files_mod.remove_stale_temporaries(tmp_path) == []


def test_a_complete_write_removes_modules_no_longer_in_the_catalogue(tmp_path):
    """``derive gen --all`` writes the whole catalogue: a module the manifest lists that is no longer in it goes,
    file and entry; a partial write keeps it; a stale module edited by hand is refused, not deleted."""
    keep, gone = Spec(family="ersde", order=1, phi="s"), Spec(family="ersde", order=2, phi="s")
    texts = {spec: f"# generated by derive {spec.name}\n" for spec in (keep, gone)}
    write_mod.write_modules(texts, tmp_path)
    write_mod.write_modules({keep: texts[keep]}, tmp_path)
    assert set(write_mod.read_manifest(tmp_path)) == {keep.name, gone.name}
    (tmp_path / f"{gone.name}.py").write_text("# generated by derive, then edited\n")
    with pytest.raises(HandEditedError):
        write_mod.write_modules({keep: texts[keep]}, tmp_path, complete=True)
    assert (tmp_path / f"{gone.name}.py").exists()
    (tmp_path / f"{gone.name}.py").write_text(texts[gone])
    write_mod.write_modules({keep: texts[keep]}, tmp_path, complete=True)
    assert set(write_mod.read_manifest(tmp_path)) == {keep.name}
    assert not (tmp_path / f"{gone.name}.py").exists() and (tmp_path / f"{keep.name}.py").exists()


def test_concurrent_writers_keep_every_manifest_entry(tmp_path, monkeypatch):
    """Two writers of different modules into one folder, their manifest reads made to overlap: both modules
    end up in the manifest (the folder lock serializes the read-modify-write)."""
    original = write_mod.read_manifest

    def slow_read(folder):
        value = original(folder)
        time.sleep(0.3)  # without the lock both writers read the empty manifest here
        return value

    monkeypatch.setattr(write_mod, "read_manifest", slow_read)
    specs = [Spec(family="ersde", order=k, phi="s") for k in (1, 2)]
    threads = [
        threading.Thread(
            target=write_mod.write_modules, args=({spec: f"# generated by derive {spec.name}\n"}, tmp_path)
        )
        for spec in specs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(write_mod.read_manifest(tmp_path)) == {spec.name for spec in specs}


def test_two_concurrent_gen_processes_into_one_folder(tmp_path):
    env = {**os.environ, "DERIVE_CACHE_DIR": "off"}
    command = [
        sys.executable,
        "-m",
        "derive.cli",
        "gen",
        "--family",
        "ersde",
        "--phi",
        "s",
        "--out",
        str(tmp_path),
    ]
    runs = [
        subprocess.Popen([*command, "--order", k], cwd=ROOT, env=env, stderr=subprocess.PIPE)
        for k in ("1", "2")
    ]
    assert all(run.wait(timeout=300) == 0 for run in runs)
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    written = {path.stem for path in tmp_path.glob("*.py")}
    assert len(written) == 2 and set(manifest) == written

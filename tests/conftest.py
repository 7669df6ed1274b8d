"""Shared fixtures: the catalogue of checked-in generated modules, loaded with :func:`derive.load`."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

import pytest
from hypothesis import settings

from derive.loader import load_file

# the derivation cache of this test session (shared by in-process and subprocess derive runs) lives in a fresh
# temporary folder: tests neither read a user's cache nor write to it
os.environ["DERIVE_CACHE_DIR"] = tempfile.mkdtemp(prefix="derive-test-cache-")

# property tests are deterministic (a fixed search, no example database): CI cannot pass or fail by the draw;
# HYPOTHESIS_PROFILE=explore runs a fresh random search locally
settings.register_profile("derive", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derive"))

ROOT = pathlib.Path(__file__).resolve().parent.parent
GENERATED = ROOT / "generated"


def manifest() -> dict:
    """The catalogue's modules (published-sampler variants, tested in test_variants.py, left out)."""
    entries = json.loads((GENERATED / "MANIFEST.json").read_text())
    return {name: entry for name, entry in entries.items() if "variant" not in entry}


def load_module(name: str, folder: pathlib.Path = GENERATED):
    """``folder/name.py`` through the public loader (the same file gives the same cached module)."""
    return load_file(folder / f"{name}.py")


MODULE_NAMES = sorted(manifest())


@pytest.fixture(params=MODULE_NAMES)
def generated_module(request):
    """Every module in the manifest: a newly generated module is tested the moment it is checked in."""
    return load_module(request.param)

"""``derive.load``: a generated sampler module by catalogue name or by file path.

The catalogue (the checked-in ``generated/`` folder) ships inside the package as ``derive._generated``; a
module written elsewhere with ``derive gen --out DIR`` is loaded from its path. Modules are plain files that
import only torch and the standard library, so they are executed from their path (never imported through the
package machinery, which would make two copies of one file distinct modules) and cached per resolved path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import pathlib
import re
import sys
import types

__all__ = ["catalogue_dir", "catalogue_names", "load", "load_file"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CACHE: dict[str, tuple[str, types.ModuleType]] = {}
_PRIVATE = itertools.count()
#: a source checkout's catalogue, used when the package mapping is not importable (running from the tree)
_SOURCE_CATALOGUE = pathlib.Path(__file__).resolve().parent.parent / "generated"


def catalogue_dir() -> pathlib.Path:
    """The folder of the catalogue: the installed ``derive._generated`` package data, else the checkout's."""
    try:
        spec = importlib.util.find_spec("derive._generated")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            folder = pathlib.Path(location)
            if (folder / "MANIFEST.json").is_file():
                return folder
    return _SOURCE_CATALOGUE


def catalogue_names() -> list[str]:
    """Names of every module in the catalogue (published-sampler variants included), sorted."""
    path = catalogue_dir() / "MANIFEST.json"
    if not path.is_file():
        return []
    return sorted(json.loads(path.read_text()))


def _module_name(path: pathlib.Path) -> str:
    # unique per file, so that two folders' ``ersde_order3.py`` are two modules in ``sys.modules``
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    return f"derive_module_{path.stem}_{digest}"


def _exec(path: pathlib.Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    # registered before it runs, as an import would: torch.compile and pickle look globals up there
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    if not hasattr(module, "sample") or not hasattr(module, "ORDER"):
        sys.modules.pop(name, None)
        raise ValueError(f"{path} is not a generated sampler module (no sample() / ORDER)")
    return module


def load_file(path, *, private: bool = False) -> types.ModuleType:
    """A generated module from its file. Cached per resolved path while the file's bytes stay the same (a
    file rewritten by ``derive gen --out`` is executed again); ``private=True`` gives an uncached copy of its
    own, which may be patched without affecting anyone else's."""
    path = pathlib.Path(path).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"no generated module file at {path}")
    if private:
        return _exec(path, f"{_module_name(path)}_private{next(_PRIVATE)}")
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    key = str(path)
    cached = _CACHE.get(key)
    if cached is None or cached[0] != digest:
        _CACHE[key] = (digest, _exec(path, _module_name(path)))
    return _CACHE[key][1]


def load(name_or_path) -> types.ModuleType:
    """A generated sampler module: a catalogue name (``"ersde_order3"``, see ``derive list``) or a ``.py`` path.

    The same name or path gives the same (cached) module object. ``derive.loader.load_file(path,
    private=True)`` gives an uncached copy.
    """
    if isinstance(name_or_path, pathlib.Path):
        text = str(name_or_path)
    elif isinstance(name_or_path, str) and name_or_path:
        text = name_or_path
    else:
        raise TypeError(f"name_or_path must be a module name or a path, not {name_or_path!r}")
    looks_like_path = (
        text.endswith(".py") or "/" in text or "\\" in text or isinstance(name_or_path, pathlib.Path)
    )
    if looks_like_path:
        return load_file(text)
    if _NAME.match(text):
        path = catalogue_dir() / f"{text}.py"
        if path.is_file():
            return load_file(path)
    raise ValueError(
        f"unknown module {text!r}: not in the catalogue (run `derive list` to see it) and not a .py path"
    )

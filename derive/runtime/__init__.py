"""The runtime of the generated modules, as ordinary Python.

Each file here is a module of the package -- linted, formatted and unit-tested like any other -- whose part
below :data:`MARKER` the emitter inlines, verbatim, into the generated modules that need it, so those stay
standalone (torch and the standard library only). Above the marker a file imports what the generated module
provides around it: its constants and the routines printed from the derivation (:mod:`derive.runtime.module`)
and the other runtime files' functions. Which files a module gets is decided by its method and family
(:func:`files_for`); the templates only lay the file out.

Nothing here does symbolic math or decides a coefficient: the coefficients arrive as printed routines
(``taylor_weights``, ``noise_variance``, ``_DERIVATIVE_WEIGHTS``, ...) and the runtime combines their values.
"""

from __future__ import annotations

import functools
import hashlib
import pathlib

MARKER = "# ---- inlined into the generated modules below this line ----"
_FOLDER = pathlib.Path(__file__).resolve().parent


@functools.cache
def inlined(name: str) -> str:
    """The part of ``derive/runtime/<name>.py`` below the marker, as it is inlined (no trailing blank lines)."""
    text = (_FOLDER / f"{name}.py").read_text(encoding="utf-8")
    _, found, body = text.partition(MARKER + "\n")
    if not found:
        raise RuntimeError(f"derive/runtime/{name}.py has no line {MARKER!r}")
    return body.strip("\n")


def sources() -> dict[str, str]:
    """SHA-256 of the inlined part of every runtime file (part of the provenance hash: it is generated text)."""
    return {
        path.stem: hashlib.sha256(inlined(path.stem).encode()).hexdigest()
        for path in sorted(_FOLDER.glob("*.py"))
        if path.name not in ("__init__.py", "module.py")
    }

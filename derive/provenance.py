"""What shapes the generated text besides the spec: the derive version, the templates and the toolchain.

A generated module is a function of its spec and of these; its ``SPEC_HASH`` (and the MANIFEST's
``spec_hash``) hashes all of them, as SymForce's generated code records its codegen version. The toolchain
versions are pinned in pyproject.toml (``sympy``, ``mpmath``, ``ruff`` exactly; ``jinja2`` to its major
version), so a fresh install on any day reproduces the checked-in catalogue byte for byte; a different
version changes the hash, and ``derive gen --all --check`` then reports every module it reprints.
Nothing here reads the machine: no CPU, platform or time enters a hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
from importlib import metadata, resources

#: Raised by hand when the emitter changes what it writes for the same spec, templates and toolchain.
CODEGEN_VERSION = 2
#: Distributions whose version can change the generated text.
TOOLCHAIN = ("jinja2", "mpmath", "ruff", "sympy")


#: templates/ of a source checkout
_SOURCE_TEMPLATES = pathlib.Path(__file__).resolve().parent.parent / "templates"


def template_dir() -> pathlib.Path:
    """templates/ of a source checkout, or the copy installed as package data."""
    if _SOURCE_TEMPLATES.is_dir():
        return _SOURCE_TEMPLATES
    return pathlib.Path(str(resources.files("derive._templates")))


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


@functools.cache
def identity() -> dict:
    """derive's version, the codegen version, the SHA-256 of every template and of every runtime file's inlined
    part, and the toolchain versions."""
    import derive
    from derive import runtime

    templates = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(template_dir().glob("*.jinja"))
    }
    return {
        "derive": derive.__version__,
        "codegen": CODEGEN_VERSION,
        "templates": templates,
        "runtime": runtime.sources(),
        "toolchain": {name: _version(name) for name in TOOLCHAIN},
    }


def digest(payload: dict) -> str:
    """A short hash of ``payload`` (a spec as a dict) and of :func:`identity`; stable across runs and hash seeds."""
    text = json.dumps({"spec": payload, "codegen": identity()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

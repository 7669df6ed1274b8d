"""derive: symbolic derivation and code generation of diffusion-model samplers.

SymPy derives the exact (exponential-integrator) solution of the reverse-time dynamics and the multistep
coefficients of any order; the emitter prints them into standalone torch modules under ``generated/``.

``import derive`` is light: :func:`load` needs only the standard library (the module it loads imports torch),
and the symbolic layer (SymPy) is imported the first time ``CATALOGUE``, ``Spec``, ``generate`` or
``generate_all`` is used; ``schedules`` (torch) on first use too.
"""

from derive.errors import DeriveError
from derive.loader import load

__all__ = ["CATALOGUE", "DeriveError", "Spec", "generate", "generate_all", "load", "recommend", "schedules"]
__version__ = "0.1.0"

#: names imported on first use: attribute -> module
_LAZY = {
    "CATALOGUE": "derive.spec",
    "Spec": "derive.spec",
    "generate": "derive.api",
    "generate_all": "derive.api",
    "recommend": "derive.recommend",
}


def __getattr__(name):
    if name == "schedules":  # a subpackage that needs torch
        import importlib

        return importlib.import_module("derive.schedules")
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY, "schedules"})

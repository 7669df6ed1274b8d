"""derive: symbolic derivation and code generation of diffusion-model samplers.

SymPy derives the exact (exponential-integrator) solution of the reverse-time dynamics and the multistep
coefficients of any order; the emitter prints them into standalone torch modules under ``generated/``.
"""

from derive.api import generate, generate_all
from derive.errors import DeriveError
from derive.loader import load
from derive.recommend import recommend
from derive.spec import CATALOGUE, Spec

__all__ = ["CATALOGUE", "DeriveError", "Spec", "generate", "generate_all", "load", "recommend", "schedules"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``derive.schedules`` is imported on first use (it needs torch, which generating modules does not)."""
    if name == "schedules":
        import importlib

        return importlib.import_module("derive.schedules")
    raise AttributeError(f"module 'derive' has no attribute {name!r}")

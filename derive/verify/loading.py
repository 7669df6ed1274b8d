"""Loading the modules ``derive verify`` measures, and what a module says of itself (its dynamics, its
drift factor kappa, the quantity its history holds)."""

from __future__ import annotations

import difflib
import functools
import json
import pathlib
import tempfile
from collections.abc import Callable
from types import ModuleType

import numpy as np
import torch

from derive.errors import SpecError
from derive.loader import catalogue_dir

#: the checked-in catalogue (generated/ of a checkout, the installed copy otherwise)
GENERATED_DIR = catalogue_dir()

# --------------------------------------------------------------------------------------------------
# loading modules
# --------------------------------------------------------------------------------------------------


def manifest(folder: pathlib.Path = GENERATED_DIR, *, variants: bool = False) -> dict:
    """The checked-in modules: ``{name: entry}`` from ``MANIFEST.json`` (empty if there is none). Published-sampler
    variants (``derive verify --variant``) are listed only with ``variants=True``, and then alone."""
    path = pathlib.Path(folder) / "MANIFEST.json"
    if not path.exists():
        return {}
    entries = json.loads(path.read_text(encoding="utf-8"))
    return {name: entry for name, entry in entries.items() if ("variant" in entry) == variants}


def load_module_file(path: pathlib.Path, name: str | None = None) -> ModuleType:
    """A private (uncached) copy of a generated module from its file, through the public loader: a check
    that patches it cannot leak into anyone else's. ``name`` is kept for callers; the loader names it."""
    from derive.loader import load_file

    try:
        return load_file(path, private=True)
    except ValueError as error:
        raise SpecError(str(error)) from None


def load_checked_in(name: str, folder: pathlib.Path = GENERATED_DIR) -> ModuleType:
    """A module listed in ``folder/MANIFEST.json`` (``name`` with or without ``.py``)."""
    name = name.removesuffix(".py")
    entries = {**manifest(folder), **manifest(folder, variants=True)}
    if name not in entries:
        close = difflib.get_close_matches(name, list(entries), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise SpecError(
            f"unknown module {name!r}; {hint}({len(entries)} checked-in modules: see `derive list`)"
        )
    return load_module_file(pathlib.Path(folder) / entries[name]["module"], name)


def load_rendered(spec) -> ModuleType:
    """Render a :class:`~derive.spec.Spec` with the current derivation and import it from a temp dir."""
    from derive.api import module_text

    text = module_text(spec)
    with tempfile.TemporaryDirectory(prefix="derive-verify-") as tmp:
        path = pathlib.Path(tmp) / f"{spec.name}.py"
        path.write_text(text, encoding="utf-8")
        module = load_module_file(path, spec.name)
    module.__verify_source__ = "rendered"
    return module


def load_rendered_variant(variant) -> ModuleType:
    """Render a published-sampler :class:`~derive.variants.Variant` and import it from a temp dir."""
    from derive.api import module_text

    with tempfile.TemporaryDirectory(prefix="derive-verify-") as tmp:
        path = pathlib.Path(tmp) / f"{variant.name}.py"
        path.write_text(module_text(variant), encoding="utf-8")
        module = load_module_file(path, variant.name)
    module.__verify_source__ = "rendered"
    return module


def module_name(module: ModuleType) -> str:
    file = getattr(module, "__file__", None)
    return pathlib.Path(file).stem if file else module.__name__


# --------------------------------------------------------------------------------------------------
# the module's dynamics: phi, kappa = s phi'/phi
# --------------------------------------------------------------------------------------------------


def dynamics(module: ModuleType) -> str:
    """``"ode"`` if the module injects no noise (phi proportional to s), else ``"sde"``."""
    probe = torch.tensor([10.0, 3.0, 1.0, 0.3, 0.1, 0.03], dtype=torch.float64)
    _, stds, _, _ = module.coefficient_table(probe)
    return "ode" if all(v == 0.0 for v in stds) else "sde"


@functools.lru_cache(maxsize=64)
def _kappa_from_text(phi_text: str) -> Callable[[np.ndarray], np.ndarray]:
    import sympy as sp

    from derive.symbolic.expression import parse_expression

    phi = parse_expression(phi_text)
    (s,) = tuple(phi.free_symbols) or (sp.Symbol("s", positive=True),)
    kappa = sp.simplify(s * sp.diff(phi, s) / phi)
    fn = sp.lambdify(s, kappa, "numpy")

    def evaluate(values):
        values = np.asarray(values, dtype=np.float64)
        return np.broadcast_to(np.asarray(fn(values), dtype=np.float64), values.shape)

    return evaluate


def kappa_function(module: ModuleType) -> Callable[[np.ndarray], np.ndarray]:
    """``kappa(s) = s phi'(s)/phi(s)`` from the module's spec (exact derivative by SymPy)."""
    return _kappa_from_text(module.SPEC["phi"])


def update_form(module: ModuleType) -> str:
    """``"data"`` (x0 is interpolated; ``history`` holds data predictions) or ``"noise"`` (eps)."""
    return getattr(module, "FORM", "data")


def history_quantity(
    module: ModuleType, y: torch.Tensor, denoised: torch.Tensor, sigma: float
) -> torch.Tensor:
    """What ``module.sample`` stores in its ``history`` for state ``y`` with prediction ``denoised``."""
    if update_form(module) == "noise":
        return (y - denoised) / float(sigma)
    return denoised

"""Ecosystem integrations for the generated sampler modules.

- :mod:`derive.integrations.diffusers`: :class:`DeriveScheduler`, one diffusers scheduler over any generated
  module (needs ``diffusers``).
- :mod:`derive.integrations.kdiffusion`: the k-diffusion / ComfyUI sampler signature (:func:`wrap_sampler`) and
  a Brownian-tree noise sampler (needs ``torchsde`` for the latter).

This package itself needs only torch. It holds what both integrations share: finding and loading a generated
module (:func:`load_module`, :func:`module_id`), the per-step coefficients of a module in any process's own
coordinates (:func:`step_table`), including a first step from pure noise (alpha = 0, e.g. flow matching at
t = 1), and the corrections of a module with a corrector (:func:`correction_table`: the predictor-corrector
modules and the UniPC variants), applied once the next model output is known, as diffusers' UniPC does.
"""

from __future__ import annotations

import importlib
import math
import pathlib
import re
import types

import torch

from derive.loader import catalogue_dir, load
from derive.methods import METHODS

__all__ = [
    "GENERATED_DIR",
    "DeriveScheduler",
    "correction_table",
    "has_corrector",
    "load_module",
    "module_id",
    "noise_scale_limit",
    "step_table",
]

#: The catalogue: the installed ``derive._generated`` package data, else a source checkout's ``generated/``.
GENERATED_DIR = catalogue_dir()

_REQUIRED = ("coefficient_table", "ORDER", "FORM")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def __getattr__(name):  # lazy: importing this package must not import diffusers
    if name == "DeriveScheduler":
        from derive.integrations.diffusers import DeriveScheduler

        return DeriveScheduler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check(module: types.ModuleType, origin: str) -> types.ModuleType:
    missing = [name for name in _REQUIRED if not hasattr(module, name)]
    if missing:
        raise ValueError(f"{origin} is not a generated sampler module (missing {', '.join(missing)})")
    if module.FORM not in ("data", "noise"):
        raise ValueError(f"{origin}: unknown FORM {module.FORM!r}")
    return module


def load_module(module) -> types.ModuleType:
    """A generated sampler module from a module object, a file path, or a name.

    Names and paths go through :func:`derive.load` (the catalogue first; files cached per path); a name that
    is not in the catalogue is then imported (a module copied into your project).
    """
    if isinstance(module, types.ModuleType):
        return _check(module, getattr(module, "__name__", "module"))
    if not isinstance(module, (str, pathlib.Path)) or not module:
        raise TypeError(f"module must be a module object, a path or a name, not {module!r}")
    text = str(module)
    if isinstance(module, pathlib.Path) or text.endswith(".py") or "/" in text or "\\" in text:
        return _check(load(module), text)
    if _NAME.match(text) and (GENERATED_DIR / f"{text}.py").is_file():
        return _check(load(text), text)
    try:
        imported = importlib.import_module(text)
    except ImportError as error:
        raise ValueError(
            f"no generated module {text!r}: not in {GENERATED_DIR} and not importable ({error})"
        ) from None
    return _check(imported, text)


def module_id(module: types.ModuleType) -> str:
    """A string that :func:`load_module` resolves back to ``module`` (for configs that are saved as JSON)."""
    path = getattr(module, "__file__", None)
    if path:
        path = pathlib.Path(path).resolve()
        if path.parent == GENERATED_DIR.resolve():
            return path.stem
        return str(path)
    return module.__name__


def noise_scale_limit(module) -> float:
    """lim_{s -> oo} s / phi(s): the module's ``NOISE_SCALE_LIMIT`` or, for the ersde modules, phi evaluated far out."""
    limit = getattr(module, "NOISE_SCALE_LIMIT", None)
    if limit is not None:
        return float(limit)
    s = torch.tensor(1e150, dtype=torch.float64)
    with torch.no_grad():
        value = float(s / module.noise_scale_fn(s))
    return value if value > 1e-12 else 0.0


def _phi(module, s: float) -> float:
    return float(module.noise_scale_fn(torch.tensor(s, dtype=torch.float64)))


def step_table(module, alpha, sigma):
    """Per-step coefficients of ``module`` for the process x = alpha x0 + sigma eps at the given points.

    ``alpha`` and ``sigma`` (sequences of length n + 1, from noise to data) give n rows ``(A, B, C, M, final)``:
    ``x_{i+1} = A x_i + sum_j B[j] P_{i-j} + C z + M mu`` with P the stored data predictions (``module.FORM ==
    "data"``) or noise predictions, z unit normal noise and mu the mean of a mean-reverting process (0 here
    except for mrsde); ``final`` marks a step to sigma = 0, which returns the data prediction.

    Uses the module's ``family_table`` when it has one (the process families, which also handle a first point
    with alpha = 0) and otherwise (the ersde modules) converts ``coefficient_table`` (normalized coordinates
    y = x / alpha, s = sigma / alpha) itself; there a first point with alpha = 0 (pure noise) is the limit
    s -> oo of the first step, from ``noise_scale_fn`` (a data-form module is required).
    """
    alpha = [float(v) for v in torch.as_tensor(alpha, dtype=torch.float64).reshape(-1).tolist()]
    sigma = [float(v) for v in torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).tolist()]
    if len(alpha) != len(sigma) or len(alpha) < 2:
        raise ValueError("alpha and sigma need the same length, at least 2")
    if hasattr(module, "family_table"):
        return [
            (float(A), tuple(float(b) for b in B), float(C), float(M), bool(final))
            for A, B, C, M, final in module.family_table(alpha, sigma)
        ]
    head = []
    if alpha[0] == 0.0:
        if module.FORM != "data":
            raise ValueError(
                "a noise-prediction-form module cannot start at alpha = 0 (pure noise); use a data-form module "
                "(ersde_*, flow_*, edm_*) or start at alpha > 0"
            )
        a1, g1 = alpha[1], sigma[1]
        if g1 == 0.0:
            head.append((0.0, (1.0,), 0.0, 0.0, True))
        else:
            # limit s0 -> oo of y1 = r y0 + c0 x0 + sqrt(v) z with r = phi(s1)/phi(s0), c0 -> 1, y0 = x0 / alpha0
            s1 = g1 / a1
            tail = _phi(module, s1) * noise_scale_limit(module)
            head.append(
                (a1 * tail / sigma[0], (a1,), a1 * math.sqrt(max(s1 * s1 - tail * tail, 0.0)), 0.0, False)
            )
        alpha, sigma = alpha[1:], sigma[1:]
        if len(alpha) < 2:
            return head
    if any(a <= 0.0 for a in alpha):
        raise ValueError("alpha must be positive after the first point")
    # a float64 tensor: the modules' torch.as_tensor(sigmas) would round a list of floats to float32 first
    s = torch.tensor([g / a for g, a in zip(sigma, alpha)], dtype=torch.float64)
    ratios, stds, weights, finals = module.coefficient_table(s)
    rows = []
    for i in range(len(ratios)):
        a0, a1 = alpha[i], alpha[i + 1]
        rows.append(
            (a1 * ratios[i] / a0, tuple(a1 * w for w in weights[i]), a1 * stds[i], 0.0, bool(finals[i]))
        )
    return head + rows


def has_corrector(module) -> bool:
    """Whether ``module`` corrects each step with the next model output (a pc module or a UniPC variant)."""
    method = METHODS.get(getattr(module, "METHOD", None))
    return (method is not None and method.corrector) or bool(getattr(module, "_CORRECTORS", None))


def correction_table(module, alpha, sigma):
    """Per step i of :func:`step_table` (same arguments): None or ``(A_last, A_new, W)``.

    Once the model output at the new point i + 1 is known (stored first, ``P_{i+1}``), the state there becomes
    ``x_{i+1} <- A_last x_i + A_new x_{i+1} + sum_j W[j] P_{i+1-j}`` with ``x_i`` the state step i started
    from. A UniPC variant recomputes the step with its corrector (``A_new = 0``); a pc module adds its
    correction to the predicted state (``A_last = 0``, ``A_new = 1``; the step's noise is kept). Returns None
    for a module without a corrector. Needs alpha > 0 at every point (no start from pure noise).
    """
    if not has_corrector(module):
        return None
    alpha = [float(v) for v in torch.as_tensor(alpha, dtype=torch.float64).reshape(-1).tolist()]
    sigma = [float(v) for v in torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).tolist()]
    if len(alpha) != len(sigma) or len(alpha) < 2:
        raise ValueError("alpha and sigma need the same length, at least 2")
    if any(a <= 0.0 for a in alpha):
        raise ValueError(
            "a module with a corrector cannot start from pure noise (alpha = 0): its correction of the first "
            "step is not defined there; start at alpha > 0 or use a module without a corrector"
        )
    s = torch.tensor([g / a for g, a in zip(sigma, alpha)], dtype=torch.float64)
    rows = []
    if getattr(module, "_CORRECTORS", None):  # a published predictor-corrector (UniPC): the step recomputed
        ratios, _, _, _, corrections = module._tables(s)
        for i, c in enumerate(corrections):
            a0, a1 = alpha[i], alpha[i + 1]
            rows.append(None if c is None else (a1 * ratios[i] / a0, 0.0, tuple(a1 * w for w in c)))
        return rows
    _, _, weights, _ = module.coefficient_table(s)
    for i, c in enumerate(module.correction_table(s, weights)):
        rows.append(None if c is None else (0.0, 1.0, tuple(alpha[i + 1] * w for w in c)))
    return rows

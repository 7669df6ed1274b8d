"""Samplers written by others, driven through their own public interface: what ``derive verify --sampler`` runs.

A TARGET is one of

* ``diffusers:ClassName`` -- a scheduler of the installed diffusers, built by ``from_config`` with the JSON
  ``--config`` (a dict, or the path of a JSON file);
* ``package.module:function`` (or ``path/to/file.py:function``) -- a sampler function with the k-diffusion
  signature ``(model, x, sigmas, extra_args, callback, disable, ...)``; the config's keys are passed as keyword
  arguments (e.g. ``{"eta": 0.5}``). k-diffusion's own ``k_diffusion.sampling`` is loaded on its own when its
  package does not import (its ``__init__`` pulls optional dependencies);
* the path of a module written by ``derive gen --out`` (its ``sample`` function, claimed order ``METHOD_ORDER``).

Every target is run by :meth:`Target.run` in *normalized* coordinates ``y = x0 + s eps`` (``s = sigma /
alpha``) with a denoiser ``D(y, s)``; the target converts to its own coordinates and prediction type:

* diffusers schedulers keep one of three states: the variance-preserving ``x = alpha y`` with ``alpha =
  1/sqrt(1 + s^2)`` (DPM-Solver, UniPC, DEIS, SA-Solver: ``scale_model_input`` is the identity), the
  normalized ``y`` itself with the model fed ``y / sqrt(1 + s^2)`` (Euler, Heun, LMS, DPM2, DPMSolverSDE:
  detected from ``scale_model_input``), or the flow ``x = (1 - t) x0 + t eps`` with ``s = t / (1 - t)``
  (FlowMatchEuler, ``use_flow_sigmas``). The model output is the exact ``eps``, ``x0``, ``v = alpha eps -
  sigma x0`` or flow velocity ``eps - x0`` of the problem, as ``prediction_type`` asks;
* the noise levels are installed into the scheduler after its own ``set_timesteps(n)``: every distinct value of
  its ``sigmas`` (in whatever layout it keeps them: plain, or repeated for two-stage steps) is replaced, in
  order, by the requested level (DPM2's interpolated levels are recomputed with its own formula). The
  scheduler's ``timesteps`` stay its own; the model's noise level for each call is read from the scheduler
  (the stored sigma of the step, or the scale ``scale_model_input`` applied), never decoded from a rounded
  timestep;
* float64 runs give the scheduler's module a ``torch`` whose ``float32`` is float64, so in-step casts of the
  state to float32 become no-ops (the shipped arithmetic otherwise runs unchanged);
* noise: DPMSolverMultistep takes ``variance_noise``; DPMSolverSDE's ``noise_sampler`` attribute is set;
  schedulers that draw with ``randn_tensor`` inside ``step`` (Euler ancestral, SA-Solver, the single-step
  SDE) get it for the step's interval ``(sigma_i, sigma_i+1)`` through their module's ``randn_tensor``.

The state at each noise level of the grid is recorded at the model call that starts the next step (for two-stage
steps: the last call at that level, i.e. after the step completed); for DPMSolverSinglestep only levels that
close a group of its ``order_list`` count as complete.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import pathlib
import sys
import types
from collections.abc import Callable, Sequence

import torch

from derive.errors import SpecError

__all__ = [
    "FunctionTarget",
    "Target",
    "Trajectory",
    "load_kdiffusion_sampling",
    "parse_target",
]

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
Noise = Callable[[float, float], torch.Tensor]

#: relative tolerance for recognising a model call's noise level as a level of the installed grid
_MATCH = 1e-9


@dataclasses.dataclass
class Trajectory:
    """States (normalized coordinates, float64) at the grid indices where a step is complete, and the output."""

    states: dict[int, torch.Tensor]
    output: torch.Tensor
    calls: int = 0
    noise_calls: list[tuple[float, float]] = dataclasses.field(default_factory=list)


class Target:
    """A sampler under test. Subclasses implement :meth:`run`."""

    name: str = ""
    spec: str = ""
    config: dict
    #: the order the sampler's authors claim (None: unknown; --claimed overrides)
    claimed: float | None = None
    #: "ode" or "sde" (decided by a dry run: does the sampler ask for noise?)
    source: str = ""

    def run(
        self,
        denoiser: Denoiser,
        y0: torch.Tensor,
        sigmas: Sequence[float],
        *,
        noise: Noise | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> Trajectory:
        raise NotImplementedError

    def final_value(self, sigma_min: float) -> float:
        """The extra last level a study appends after ``sigma_min`` (the sampler's own kind of final step)."""
        return 0.0

    def drift_kappa(self) -> float | Callable | None:
        """``kappa`` of the drift ODE ``dy/dlog s = kappa (y - D)`` the sampler integrates with its noise set to
        zero (1: the probability-flow ODE); a callable of ``s``; None when unknown."""
        return 1.0

    def split_step(self) -> bool:
        """An ancestral step: a deterministic step to ``sigma_down`` and fresh noise up to ``sigma_next``. With
        the noise off it follows its drift ODE only to first order (``log sigma_down`` matches ``kappa`` times
        the log-step to first order only), whatever the order of the deterministic step, so its claim is
        judged on the weak order."""
        return False

    def describe(self) -> dict:
        return {"target": self.spec, "config": _jsonable(self.config), "source": self.source}


def _jsonable(config: dict) -> dict:
    out = {}
    for key, value in config.items():
        try:
            json.dumps(value)
            out[key] = value
        except TypeError:
            out[key] = repr(value)
    return out


# --------------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------------


def parse_config(text) -> dict:
    """``--config``: a JSON object, or the path of a file holding one."""
    if text is None:
        return {}
    if isinstance(text, dict):
        return dict(text)
    text = str(text)
    path = pathlib.Path(text).expanduser()
    if not text.lstrip().startswith("{") and path.is_file():
        text = path.read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise SpecError(f"--config is neither a JSON object nor a readable JSON file ({error.msg})") from None
    if not isinstance(value, dict):
        raise SpecError(f"--config must be a JSON object, got {type(value).__name__}")
    return value


def parse_target(text: str, config=None, *, claimed: float | None = None, name: str | None = None) -> Target:
    """A :class:`Target` from ``diffusers:Class``, ``package.module:function``, ``file.py:function`` or a
    module file written by ``derive gen``. Raises :class:`SpecError` naming what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError(
            "--sampler needs a TARGET: diffusers:ClassName, package.module:function or a module file"
        )
    text = text.strip()
    config = parse_config(config)
    if text.startswith("diffusers:"):
        from derive.verify.diffusers_target import DiffusersTarget  # it builds on Target, defined here

        target = DiffusersTarget(text.split(":", 1)[1], config)
    elif text.endswith(".py") and ":" not in pathlib.Path(text).name:
        target = _module_file_target(pathlib.Path(text).expanduser(), config)
    elif ":" in text:
        where, function = text.rsplit(":", 1)
        target = FunctionTarget(_load_function(where, function), config, spec=text)
    else:
        raise SpecError(
            f"cannot read TARGET {text!r}: use diffusers:ClassName, package.module:function, file.py:function "
            "or the path of a module written by `derive gen`"
        )
    if claimed is not None:
        target.claimed = float(claimed)
    if name:
        target.name = name
    return target


def _module_file_target(path: pathlib.Path, config: dict) -> FunctionTarget:
    if not path.is_file():
        raise SpecError(f"no module file at {path}")
    from derive.verify.harness import load_module_file

    module = load_module_file(path)
    if not callable(getattr(module, "sample", None)):
        raise SpecError(f"{path} has no sample() function: not a module written by `derive gen`")
    target = FunctionTarget(module.sample, config, spec=str(path))
    target.name = path.stem
    target.claimed = float(getattr(module, "CLAIMED_ORDER", getattr(module, "METHOD_ORDER", module.ORDER)))
    if "phi" in getattr(module, "SPEC", {}):
        from derive.verify.harness import dynamics, kappa_function

        target.kappa = 1.0 if dynamics(module) == "ode" else kappa_function(module)
    target.source = "derive module"
    return target


class _Stub(types.ModuleType):
    """Stands in for an optional import that the loaded sampler functions never use."""

    def __getattr__(self, name):
        def unavailable(*args, **kwargs):
            raise ImportError(f"{self.__name__}.{name} is not installed (stubbed by derive verify)")

        return unavailable


def load_kdiffusion_sampling() -> types.ModuleType:
    """k-diffusion's ``sampling.py`` on its own: its package ``__init__`` imports optional dependencies, so the
    file is loaded by path with ``utils.append_dims`` provided and ``torchdiffeq`` (used only by its
    ``log_likelihood``) stubbed when missing. Needs ``pip install --no-deps k-diffusion``, torchsde and scipy."""
    cached = sys.modules.get("derive_kdiffusion_sampling")
    if cached is not None:
        return cached
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise SpecError("k-diffusion is not installed: pip install --no-deps k-diffusion")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "sampling.py"
    package = types.ModuleType("derive_kdiffusion")
    package.__path__ = []
    utils = types.ModuleType("derive_kdiffusion.utils")

    def append_dims(x, target_dims):
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims
    package.utils = utils
    stubs = {"derive_kdiffusion": package, "derive_kdiffusion.utils": utils}
    if importlib.util.find_spec("torchdiffeq") is None:
        stubs["torchdiffeq"] = _Stub("torchdiffeq")
    saved = {key: sys.modules.get(key) for key in stubs}
    sys.modules.update(stubs)
    try:
        module_spec = importlib.util.spec_from_file_location("derive_kdiffusion.sampling", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except ImportError as error:
        raise SpecError(f"cannot load {path}: {error}") from None
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    sys.modules["derive_kdiffusion_sampling"] = module
    return module


def _load_function(where: str, function: str):
    if where.endswith(".py"):
        path = pathlib.Path(where).expanduser()
        if not path.is_file():
            raise SpecError(f"no file {path}")
        module_spec = importlib.util.spec_from_file_location(f"derive_target_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:  # noqa: BLE001 - the user's file: any failure is bad input
            raise SpecError(f"cannot import {path}: {type(error).__name__}: {error}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as error:
            if where == "k_diffusion.sampling":
                module = load_kdiffusion_sampling()
            else:
                raise SpecError(f"cannot import {where!r}: {error}") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise SpecError(f"{where} has no function {function!r}")
    return fn


# --------------------------------------------------------------------------------------------------
# k-diffusion convention
# --------------------------------------------------------------------------------------------------


def _kdiffusion_kappa(name: str, eta: float) -> float | None:
    """The drift of k-diffusion's stochastic samplers with the noise off: the ancestral step descends to
    ``sigma_down`` with ``log sigma_down ~ log sigma_next - eta^2 h`` (kappa ``1 + eta^2``); the 2M/3M SDE
    updates use ``h (1 + eta)`` (kappa ``1 + eta``)."""
    if "ancestral" in name or name == "sample_dpmpp_sde":
        return 1.0 + eta * eta
    if name in ("sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde"):
        return 1.0 + eta
    return None


class FunctionTarget(Target):
    """A sampler function with the k-diffusion signature; the model is a denoiser ``model(x, sigma_batch)``."""

    def __init__(self, fn, config: dict, spec: str):
        self.fn = fn
        self.spec = spec
        self.config = dict(config)
        self.kappa = self.config.pop("kappa", None)
        self.name = getattr(fn, "__name__", spec)
        self.source = "k-diffusion convention"
        try:
            self.parameters = set(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            self.parameters = set()
        unknown = sorted(set(self.config) - self.parameters) if self.parameters else []
        if unknown and "kwargs" not in self.parameters:
            raise SpecError(f"{spec} takes no argument(s) {', '.join(unknown)} given in --config")
        self.stochastic = "noise_sampler" in self.parameters and float(self.config.get("eta", 1.0)) != 0.0

    def split_step(self):
        return "ancestral" in getattr(self.fn, "__name__", "")

    def drift_kappa(self):
        if self.kappa is not None:
            return self.kappa
        if not self.stochastic:
            return 1.0
        return _kdiffusion_kappa(getattr(self.fn, "__name__", ""), float(self.config.get("eta", 1.0)))

    def run(self, denoiser, y0, sigmas, *, noise=None, dtype=torch.float64) -> Trajectory:
        # float64 runs keep float64 levels; lower precisions get float32 levels, as pipelines pass them
        sig = torch.tensor(
            [float(s) for s in sigmas], dtype=torch.float64 if dtype == torch.float64 else torch.float32
        )
        states: dict[int, torch.Tensor] = {}
        calls = [0]
        asked: list[tuple[float, float]] = []

        def callback(info):
            states[int(info["i"])] = info["x"].detach().to(torch.float64).clone()

        def model(x, sigma, **kwargs):
            calls[0] += 1
            s = float(torch.as_tensor(sigma).reshape(-1)[0])
            return denoiser(x.to(torch.float64), s).to(x.dtype)

        kwargs = dict(self.config)
        if "noise_sampler" in self.parameters:

            def noise_sampler(sigma, sigma_next):
                a, b = float(sigma), float(sigma_next)
                asked.append((a, b))
                z = noise(a, b) if noise is not None else torch.zeros(y0.shape, dtype=torch.float64)
                return z.to(dtype)

            kwargs["noise_sampler"] = noise_sampler
        out = self.fn(
            model, y0.to(dtype).clone(), sig, extra_args={}, callback=callback, disable=True, **kwargs
        )
        out = out.detach().to(torch.float64)
        states[len(sigmas) - 1] = out
        return Trajectory(states=states, output=out, calls=calls[0], noise_calls=asked)

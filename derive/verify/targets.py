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

import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import json
import math
import pathlib
import sys
import types
from collections.abc import Callable, Sequence

import torch

from derive.errors import SpecError

__all__ = [
    "DiffusersTarget",
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


# --------------------------------------------------------------------------------------------------
# diffusers schedulers
# --------------------------------------------------------------------------------------------------


class _Float64Torch:
    """``torch`` with ``float32`` meaning float64 (given to a scheduler's module during float64 runs)."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


class DiffusersTarget(Target):
    """A diffusers scheduler class with a config, stepped in its own loop (see the module docstring)."""

    def __init__(self, class_name: str, config: dict):
        try:
            import diffusers
        except ImportError:
            raise SpecError("diffusers is not installed: pip install diffusers") from None
        cls = getattr(diffusers, class_name, None)
        if cls is None or not hasattr(cls, "from_config") or not hasattr(cls, "step"):
            raise SpecError(f"diffusers has no scheduler {class_name!r}")
        self.cls = cls
        self.spec = f"diffusers:{class_name}"
        self.name = class_name
        self.config = dict(config)
        self.source = f"diffusers {diffusers.__version__}"
        try:
            probe = self.make()
        except (TypeError, ValueError, NotImplementedError) as error:
            raise SpecError(f"{class_name}.from_config rejects --config: {error}") from None
        self.module = sys.modules[type(probe).__module__]
        cfg = probe.config
        if (
            class_name.startswith("FlowMatch")
            or cfg.get("use_flow_sigmas")
            or cfg.get("prediction_type") == ("flow_prediction")
        ):
            self.state = "flow"
        else:
            self.state = self._detect_state(probe)
        self.prediction = "flow" if self.state == "flow" else cfg.get("prediction_type", "epsilon")
        self.algorithm = cfg.get("algorithm_type", "")

    def make(self, steps: int | None = None):
        """A fresh scheduler. For runs of more steps than a quarter of its training timesteps the table of
        training timesteps is lengthened (the installed noise levels replace its sigmas anyway; only the
        timesteps, which must stay distinct, depend on it)."""
        import warnings

        from diffusers.utils import logging

        config = dict(self.config)
        default = inspect.signature(self.cls.__init__).parameters.get("num_train_timesteps")
        train = config.get("num_train_timesteps", default.default if default is not None else None)
        if (
            steps is not None
            and train is not None
            and 4 * (steps + 2) > train
            and "trained_betas" not in config
        ):
            config["num_train_timesteps"] = 4 * (steps + 2)
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return self.cls.from_config(config)
        finally:
            logging.set_verbosity(verbosity)

    @staticmethod
    def _detect_state(scheduler) -> str:
        """``"ve"`` when ``scale_model_input`` rescales (the state is normalized ``y``), else ``"vp"``."""
        scheduler.set_timesteps(4)
        t = scheduler.timesteps[0]
        ones = torch.ones(1, 1, dtype=torch.float32)
        scaled = scheduler.scale_model_input(ones, t)
        return "ve" if abs(float(scaled.reshape(-1)[0]) - 1.0) > 1e-6 else "vp"

    # -- dynamics -------------------------------------------------------------------------------------

    def split_step(self):
        return self.cls.__name__ in ("EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler")

    def drift_kappa(self):
        name = self.cls.__name__
        if self.algorithm.startswith("sde-"):
            return 2.0
        if name in (
            "EulerAncestralDiscreteScheduler",
            "DPMSolverSDEScheduler",
            "KDPM2AncestralDiscreteScheduler",
        ):
            return 2.0
        if name == "SASolverScheduler":
            tau = self.make().tau_func
            values = {float(tau(t)) for t in (0, 100, 300, 500, 700, 900, 999)}
            if len(values) != 1:
                return None  # tau switches with the scheduler's own timesteps: no drift ODE of fixed form
            return 1.0 + values.pop() ** 2
        if name == "FlowMatchEulerDiscreteScheduler" and self.config.get("stochastic_sampling"):
            return None
        return 1.0

    def own_levels(self, n: int) -> list[float]:
        """The normalized noise levels of the scheduler's own ``set_timesteps(n)`` (its final level included)."""
        from diffusers.utils import logging

        scheduler = self.make(n)
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()
        try:
            scheduler.set_timesteps(n)
        finally:
            logging.set_verbosity(verbosity)
        stored = [float(v) for v in scheduler.sigmas.to(torch.float64).reshape(-1)]
        index = _layout(len(stored), n)
        if index is None:
            levels = sorted(set(stored), reverse=True)
        else:
            levels = [stored[index.tolist().index(k)] for k in range(n + 1)]
        return [self.normalized(v) for v in levels]

    def final_value(self, sigma_min: float) -> float:
        scheduler = self.make()
        scheduler.set_timesteps(8)
        return 0.0 if float(scheduler.sigmas[-1]) == 0.0 else 0.5 * sigma_min

    # -- coordinates ----------------------------------------------------------------------------------

    def native(self, s: float) -> float:
        """The scheduler's own sigma for normalized level ``s`` (flow: t = s / (1 + s))."""
        if self.state == "flow":
            return s / (1.0 + s) if math.isfinite(s) else 1.0
        return s

    def normalized(self, sigma: float) -> float:
        if self.state == "flow":
            return sigma / (1.0 - sigma) if sigma < 1.0 else math.inf
        return sigma

    def alpha(self, s: float) -> float:
        """The factor from normalized ``y`` to the scheduler's state (1 for the ve state)."""
        if self.state == "ve":
            return 1.0
        if self.state == "flow":
            return 1.0 / (1.0 + s)
        return 1.0 / math.sqrt(1.0 + s * s)

    def model_output(self, y, D, s: float):
        """The exact model output for state level ``s`` (normalized ``y``, data prediction ``D``)."""
        if self.prediction == "sample":
            return D
        eps = (y - D) / s
        if self.prediction == "epsilon":
            return eps
        if self.prediction == "flow":
            return eps - D
        if self.prediction == "v_prediction":
            a = 1.0 / math.sqrt(1.0 + s * s)
            return a * eps - s * a * D
        raise SpecError(f"{self.name}: unsupported prediction_type {self.prediction!r}")

    # -- grid -----------------------------------------------------------------------------------------

    def install(self, scheduler, sigmas: Sequence[float]) -> list[float]:
        """Replace the scheduler's noise levels by ``sigmas`` (normalized); returns the native levels.

        The layout of its ``sigmas`` is read from its length for ``n`` steps: ``n + 1`` plain, ``2n`` with every
        inner level repeated (Heun, DPMSolverSDE: two stages per step), ``2n + 2`` with every level after the
        first repeated (DPM2); any other layout is matched value by value (each distinct stored level, in
        order, becomes the requested one)."""
        native = [self.native(float(s)) for s in sigmas]
        n = len(native) - 1
        ours = torch.tensor(native, dtype=torch.float64)
        theirs = scheduler.sigmas.to(torch.float64).reshape(-1)
        if len(theirs) == n + 1:
            index = torch.arange(n + 1)
        elif len(theirs) == 2 * n:
            index = torch.cat(
                [torch.zeros(1, dtype=torch.long), torch.arange(1, n).repeat_interleave(2), torch.tensor([n])]
            )
        elif len(theirs) == 2 * n + 2:
            index = torch.cat(
                [
                    torch.zeros(1, dtype=torch.long),
                    torch.arange(1, n + 1).repeat_interleave(2),
                    torch.tensor([n]),
                ]
            )
        else:
            distinct = torch.unique(theirs).flip(0)  # descending
            if len(distinct) != len(native):
                raise SpecError(
                    f"{self.name}: after set_timesteps({n}) it keeps {len(distinct)} distinct noise levels, "
                    f"not {len(native)}: cannot install a grid"
                )
            index = torch.searchsorted(
                -distinct, -theirs
            )  # position of each stored value among the distinct ones
        if not torch.all(theirs[1:] <= theirs[:-1]):
            raise SpecError(f"{self.name}: its noise levels do not decrease: cannot install a grid")
        scheduler.sigmas = ours[index].clone()
        if hasattr(scheduler, "sigmas_interpol"):
            # DPM2: the log-midpoints of consecutive levels, laid out as its set_timesteps does
            interpol = ours.log().lerp(ours.roll(1).log(), 0.5).exp()
            scheduler.sigmas_interpol = torch.cat(
                [interpol[:1], interpol[1:].repeat_interleave(2), interpol[-1:]]
            )
        return native

    def complete(self, scheduler, n_levels: int) -> set[int]:
        """Grid indices whose state is a completed step (DPMSolverSinglestep: the ends of its groups)."""
        order_list = getattr(scheduler, "order_list", None)
        if not order_list:
            return set(range(n_levels))
        ends = {0}
        for k, order in enumerate(order_list):
            if k + 1 == len(order_list) or order_list[k + 1] <= order:
                ends.add(k + 1)
        return ends

    @contextlib.contextmanager
    def _patched(self, dtype, hook):
        saved_torch = self.module.torch
        saved_randn = getattr(self.module, "randn_tensor", None)
        if dtype == torch.float64:
            self.module.torch = _Float64Torch()
        if saved_randn is not None and hook is not None:
            self.module.randn_tensor = hook
        try:
            yield
        finally:
            self.module.torch = saved_torch
            if saved_randn is not None:
                self.module.randn_tensor = saved_randn

    def run(self, denoiser, y0, sigmas, *, noise=None, dtype=torch.float64) -> Trajectory:
        import warnings

        from diffusers.utils import logging

        levels = [float(s) for s in sigmas]
        scheduler = self.make(len(levels) - 1)
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scheduler.set_timesteps(len(levels) - 1)
        finally:
            logging.set_verbosity(verbosity)
        native = self.install(scheduler, levels)
        if dtype != torch.float64:
            scheduler.sigmas = scheduler.sigmas.to(torch.float32)
            if hasattr(scheduler, "sigmas_interpol"):
                scheduler.sigmas_interpol = scheduler.sigmas_interpol.to(torch.float32)
        complete = self.complete(scheduler, len(levels))
        shape = tuple(y0.shape)
        asked: list[tuple[float, float]] = []

        def draw(a: float, b: float) -> torch.Tensor:
            asked.append((a, b))
            if noise is None:
                return torch.zeros(shape, dtype=torch.float64)
            return noise(a, b)

        def step_noise():
            i = scheduler.step_index or 0
            a = self.normalized(float(scheduler.sigmas[i]))
            b = self.normalized(float(scheduler.sigmas[min(i + 1, len(scheduler.sigmas) - 1)]))
            return draw(a, b)

        def randn_hook(shape_, *args, dtype=None, **kwargs):
            return step_noise().to(dtype or torch.float64)

        if hasattr(scheduler, "noise_sampler"):  # DPMSolverSDE: its Brownian tree is replaced by ours
            scheduler.noise_sampler = lambda a, b: draw(
                self.normalized(float(a)), self.normalized(float(b))
            ).to(dtype)
        step_parameters = set(inspect.signature(scheduler.step).parameters)
        states: dict[int, torch.Tensor] = {}
        calls = 0
        x = (y0.to(torch.float64) * self.alpha(levels[0])).to(dtype)
        with self._patched(dtype, randn_hook), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for t in scheduler.timesteps:
                if hasattr(scheduler, "scale_model_input"):
                    scheduler.scale_model_input(x, t)  # some schedulers set their step index here
                s = self._call_level(scheduler, t)
                index = _grid_index(native, self.native(s))
                y = x.to(torch.float64) / self.alpha(s)
                if index is not None and index in complete:
                    states[index] = y.clone()
                D = denoiser(y, s)
                out = self.model_output(y, D, s).to(dtype)
                calls += 1
                kwargs = {}
                if "variance_noise" in step_parameters and self.algorithm.startswith("sde-"):
                    kwargs["variance_noise"] = step_noise().to(dtype)
                x = scheduler.step(out, t, x, **kwargs).prev_sample
        last = levels[-1]
        output = x.to(torch.float64) / (self.alpha(last) if last > 0 else 1.0)
        states[len(levels) - 1] = output
        return Trajectory(states=states, output=output, calls=calls, noise_calls=asked)

    def _call_level(self, scheduler, t) -> float:
        """The normalized noise level of the model call about to be made: the stored sigma of the step, or (ve
        state) the level whose 1/sqrt(1 + s^2) ``scale_model_input`` applies, snapped to the level it stores."""
        if self.state == "ve":
            ratio = float(scheduler.scale_model_input(torch.ones(1, dtype=torch.float64), t).reshape(-1)[0])
            s = math.sqrt(max(1.0 / (ratio * ratio) - 1.0, 0.0))
            stored = [float(v) for v in scheduler.sigmas.reshape(-1)]
            stored += [float(v) for v in getattr(scheduler, "sigmas_interpol", torch.zeros(0)).reshape(-1)]
            mid = getattr(scheduler, "mid_point_sigma", None)
            if mid is not None:
                stored.append(float(mid))
            best = min(stored, key=lambda v: abs(v - s))
            return best if abs(best - s) <= 1e-6 * max(s, 1e-12) else s
        i = scheduler.step_index if scheduler.step_index is not None else 0
        return self.normalized(float(scheduler.sigmas[i]))


def _layout(length: int, n: int) -> torch.Tensor | None:
    """Grid index of each stored sigma for the layouts diffusers uses (None: another layout)."""
    first = torch.zeros(1, dtype=torch.long)
    if length == n + 1:
        return torch.arange(n + 1)
    if length == 2 * n:
        return torch.cat([first, torch.arange(1, n).repeat_interleave(2), torch.tensor([n])])
    if length == 2 * n + 2:
        return torch.cat([first, torch.arange(1, n + 1).repeat_interleave(2), torch.tensor([n])])
    return None


def _grid_index(native: list[float], value: float) -> int | None:
    for i, level in enumerate(native):
        if abs(level - value) <= _MATCH * max(abs(level), 1e-300):
            return i
    return None

"""A diffusers scheduler as a black-box target: driven through set_timesteps / step on its own timestep
grid, with its model-output convention converted at the boundary (see :mod:`derive.verify.targets`)."""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
from collections.abc import Sequence

import torch

from derive.errors import SpecError
from derive.verify.targets import _MATCH, Target, Trajectory

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

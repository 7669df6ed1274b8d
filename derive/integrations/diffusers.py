"""A diffusers scheduler over any generated sampler module.

``DeriveScheduler`` drives a module of ``generated/`` step by step inside an unmodified diffusers pipeline::

    from diffusers import DDPMPipeline
    from derive.integrations.diffusers import DeriveScheduler

    pipe.scheduler = DeriveScheduler.from_config(pipe.scheduler.config, module="ersde_order2_phi_ode")

The modules are whole-trajectory samplers; the scheduler uses their public pieces only. ``set_timesteps``
builds the noise schedule the way diffusers' own schedulers do (the timestep grids of DDIM/DDPM and of the
multistep solvers, Karras / exponential / beta sigmas, the FlowMatchEuler shift) and computes, once and in
float64, the per-step coefficients ``(A, B, C, M, final)`` with :func:`derive.integrations.step_table` (the
module's ``family_table`` or its ``coefficient_table`` in normalized coordinates). ``step`` converts the model
output to the prediction the module's update expands (``FORM``: the data prediction x0 or the noise
prediction eps), stores it, and forms ``x_next = A x + sum_j B_j P_{i-j} + C z`` in place: one model call per
step (``order = 1``); a multistep module keeps the last ``ORDER`` predictions. A module with a corrector (the
UniPC variants, the pc modules) corrects the state on the next call, once the model output there is known,
as diffusers' ``UniPCMultistepScheduler`` does.

Two processes are supported:

- variance preserving (``prediction_type`` epsilon / sample / v_prediction): the discrete schedule of
  ``betas`` (``alpha_t = sqrt(alphas_cumprod[t])``, ``sigma_t = sqrt(1 - alphas_cumprod[t])``); the model gets
  integer timesteps, ``sigmas`` are k-diffusion's normalized noise levels ``sigma_t / alpha_t``;
- rectified flow (``prediction_type="flow_prediction"``, SD3 / Flux): ``x = (1 - t) x0 + t eps`` and the model
  returns ``v = eps - x0``; ``sigmas`` are t and the model gets ``t * num_train_timesteps``, as with
  ``FlowMatchEulerDiscreteScheduler``.

``from_config`` of another scheduler's config takes that scheduler's values, its defaults included (a
derive scheduler replaces it and should run its schedule), maps the keys that choose a solver
(``solver_order``, ``algorithm_type``, ``solver_type``, ``predict_x0``) to the generated module that
reproduces it when no ``module`` is given, and refuses, naming the key, what it cannot reproduce. A config
written by a ``DeriveScheduler`` (it carries ``module``) follows diffusers' own rule instead: keys its writer
left at their defaults take this class's defaults, so configs round-trip through any compatible scheduler.

Differences from diffusers' own schedulers, all deliberate: tables are float64 (diffusers keeps
``alphas_cumprod`` and flow sigmas in float32, so trajectories agree with them to float32 precision only); the
step to the final noise level uses the next entry of the schedule (DDIM's ``timestep - num_train_timesteps //
num_inference_steps`` coincides with it for the "leading" and "trailing" spacings, not for "linspace"); a
final step to sigma = 0 returns the data prediction and draws no noise (DDPM adds ``1e-10 * z`` there when the
last timestep is not 0); ``clip_sample`` and ``thresholding`` re-derive the noise prediction from the clipped
data prediction (DDIM's ``use_clipped_model_output=True``, DPM-Solver's behaviour); zero-SNR rescaling ends at
alpha = 0 exactly, as DDIM (the multistep schedulers put 2**-24 there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from derive.integrations import correction_table, has_corrector, load_module, module_id, step_table
from derive.integrations.diffusers_config import (
    DEFAULT_MODULES,
    FLOAT32_NOISE_VARIANTS,
    NOISE_DTYPES,
    PREDICTIONS,
    TIMESTEP_GRIDS,
    _cosine_betas,
    _sigma_to_t,
    _zero_terminal_snr,
    foreign_kwargs,
    solver_module,
)
from derive.integrations.diffusers_schedule import ScheduleMixin

__all__ = ["DeriveScheduler", "DeriveSchedulerOutput", "solver_module"]


@dataclass
class DeriveSchedulerOutput(SchedulerOutput):
    """``prev_sample`` (the next state) and ``pred_original_sample`` (the data prediction x0 of this step)."""

    pred_original_sample: torch.Tensor | None = None


class DeriveScheduler(ScheduleMixin, SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs a derive-generated sampler module, one model call per step.

    Args:
        module: the generated module: a name under ``generated/`` (``"ersde_order3"``), a path to a ``.py`` file,
            an importable module name, or a module object (stored in the config as its name or path). Default:
            ``ersde_order2_phi_ode`` (variance preserving) or ``flow_order2_ode`` (flow). Mean-reverting
            (mrsde) modules need the degraded image mu and are used through their ``sample_native``.
        num_train_timesteps, beta_start, beta_end, beta_schedule ("linear", "scaled_linear",
            "squaredcos_cap_v2"), trained_betas: the discrete variance-preserving schedule, as in DDPMScheduler
            (computed in float64).
        rescale_betas_zero_snr: rescale the betas to zero terminal SNR (alpha = 0 at the last training
            timestep, as DDIMScheduler; needs a data-form module and a sample or v prediction to start there).
        prediction_type: "epsilon", "sample", "v_prediction" (variance preserving) or "flow_prediction"
            (rectified flow: x = (1 - t) x0 + t eps, model output v = eps - x0). Default: "flow_prediction" for
            a flow module, else "epsilon".
        timestep_spacing: "linspace", "leading" or "trailing"; steps_offset as in diffusers (leading only).
        timestep_grid: whose definition of the spacings: "ddim" (DDIMScheduler / DDPMScheduler: n timesteps) or
            "multistep" (DPMSolverMultistep / UniPC / DEIS: n + 1 points with the last dropped; "linspace" at 10
            steps runs 999 ... 100). ``from_config`` sets it from the scheduler the config comes from.
        use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas: the noise levels between the schedule's
            extremes, as in DPMSolverMultistepScheduler / FlowMatchEulerDiscreteScheduler (beta needs scipy).
        final_sigmas_type: "zero" (last step to sigma = 0, returns the data prediction; DDIM's
            ``set_alpha_to_one=True``) or "sigma_min" (last step to the schedule's smallest noise level,
            ``set_alpha_to_one=False``); flow schedules always end at t = 0.
        lower_order_final, euler_at_final: the multistep schedulers' lower orders on the last steps: True
            (DPMSolverMultistep / DEIS: below 15 steps the last step uses one stored prediction and the one
            before it at most two), "always" (UniPCMultistep: step i of n uses at most n - i, whatever n);
            ``euler_at_final`` makes the last step first order always. A lowered step is the module's own
            lower-order start (its table for the shorter history).
        clip_sample, clip_sample_range: clamp the data prediction, as DDIM / DDPM.
        thresholding, dynamic_thresholding_ratio, sample_max_value: dynamic thresholding of the data prediction
            (Saharia et al. 2022, Imagen): per sample, s = the ``dynamic_thresholding_ratio`` quantile of |x0|
            clamped to [1, sample_max_value], then x0 = clamp(x0, -s, s) / s. With clipping or thresholding a
            noise-form module stores the noise prediction re-derived from the clamped x0.
        noise_dtype: dtype of the drawn noise ("float32", "float64", ...). Default: as the diffusers scheduler
            the module reproduces: float32 for SDE-DPM-Solver++ (``variant_sde_dpmpp_2m*``), else the model
            output's dtype (DDPM / DDIM).
        shift, use_dynamic_shifting, base_shift, max_shift, base_image_seq_len, max_image_seq_len,
            time_shift_type, shift_terminal: the flow timestep shift, as in FlowMatchEulerDiscreteScheduler
            (with ``use_dynamic_shifting`` pass ``mu`` to ``set_timesteps``; base/max shift and sequence
            lengths are stored for pipelines that compute mu from them).
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers] + [
        "FlowMatchEulerDiscreteScheduler",
        "FlowMatchHeunDiscreteScheduler",
    ]
    order = 1

    @register_to_config
    def __init__(
        self,
        module=None,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        rescale_betas_zero_snr: bool = False,
        prediction_type: str | None = None,
        timestep_spacing: str = "leading",
        timestep_grid: str = "ddim",
        steps_offset: int = 0,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        final_sigmas_type: str = "zero",
        lower_order_final: bool | str = False,
        euler_at_final: bool = False,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        noise_dtype: str | None = None,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        time_shift_type: str = "exponential",
        shift_terminal: float | None = None,
    ):
        if prediction_type is not None and prediction_type not in PREDICTIONS:
            raise ValueError(f"prediction_type must be one of {PREDICTIONS}, not {prediction_type!r}")
        if module is None:
            module = DEFAULT_MODULES["flow" if prediction_type == "flow_prediction" else "vp"]
        self.module = load_module(module)
        if getattr(self.module, "FAMILY", None) == "mrsde":
            raise ValueError(
                "mean-reverting (mrsde) modules revert to the degraded image mu, which a diffusers scheduler "
                "cannot be given: use the module's sample_native(model, x, timesteps, mu=...)"
            )
        if prediction_type is None:
            prediction_type = (
                "flow_prediction" if getattr(self.module, "FAMILY", None) == "flow" else "epsilon"
            )
        # the module is always recorded as given: a config carrying it was written by a DeriveScheduler (see
        # from_config), also after a round trip through another scheduler, which keeps it as a hidden key
        self.register_to_config(module=module_id(self.module), prediction_type=prediction_type)
        if "_use_default_values" in self.config:
            defaults = [key for key in self.config["_use_default_values"] if key != "module"]
            self.register_to_config(_use_default_values=defaults)
        if sum([use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas]) > 1:
            raise ValueError("use at most one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas")
        if timestep_spacing not in ("linspace", "leading", "trailing"):
            raise ValueError(
                f"timestep_spacing must be linspace, leading or trailing, not {timestep_spacing!r}"
            )
        if timestep_grid not in TIMESTEP_GRIDS:
            raise ValueError(f"timestep_grid must be one of {TIMESTEP_GRIDS}, not {timestep_grid!r}")
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', not {final_sigmas_type!r}")
        if lower_order_final not in (False, True, "always"):
            raise ValueError(f"lower_order_final must be False, True or 'always', not {lower_order_final!r}")
        if time_shift_type not in ("exponential", "linear"):
            raise ValueError(f"time_shift_type must be 'exponential' or 'linear', not {time_shift_type!r}")
        if not 0.0 < dynamic_thresholding_ratio <= 1.0:
            raise ValueError(
                f"dynamic_thresholding_ratio must be in (0, 1], not {dynamic_thresholding_ratio!r}"
            )
        if noise_dtype is not None and noise_dtype not in NOISE_DTYPES:
            raise ValueError(f"noise_dtype must be None or one of {tuple(NOISE_DTYPES)}, not {noise_dtype!r}")
        self.flow = prediction_type == "flow_prediction"
        if self.flow and rescale_betas_zero_snr:
            raise ValueError("rescale_betas_zero_snr applies to variance-preserving schedules, not to flow")
        variant = getattr(self.module, "SPEC", {}).get("variant")
        if noise_dtype is not None:
            self._noise_dtype = NOISE_DTYPES[noise_dtype]
        else:
            self._noise_dtype = torch.float32 if variant in FLOAT32_NOISE_VARIANTS else None

        if trained_betas is not None:
            betas = torch.tensor(np.asarray(trained_betas, dtype=np.float64), dtype=torch.float64)
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        elif beta_schedule == "scaled_linear":
            betas = (
                torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
            )
        elif beta_schedule == "squaredcos_cap_v2":
            betas = _cosine_betas(num_train_timesteps)
        else:
            raise NotImplementedError(f"beta_schedule {beta_schedule!r} is not implemented")
        if rescale_betas_zero_snr:
            betas = _zero_terminal_snr(betas)
        #: float64 tables of the variance-preserving schedule (CPU)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 0.0  # exactly (the product rounds to ~1e-35)
        self.init_noise_sigma = 1.0

        self.num_inference_steps = None
        self._step_index = None
        self._begin_index = None
        self._history = []
        self._rows = None
        self._corrections = None
        self._last = None
        self._row_offset = 0
        if self.flow:
            grid = np.linspace(1, num_train_timesteps, num_train_timesteps)[::-1] / num_train_timesteps
            if not use_dynamic_shifting:
                grid = shift * grid / (1 + (shift - 1) * grid)
            self._flow_sigma_max, self._flow_sigma_min = float(grid[0]), float(grid[-1])
            self.timesteps = torch.from_numpy((grid * num_train_timesteps).astype(np.float32))
            self.sigmas = torch.from_numpy(np.append(grid, 0.0).astype(np.float32))
        else:
            self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy().astype(np.int64))
            with np.errstate(divide="ignore"):
                self.sigmas = torch.from_numpy(self._vp_sigma_table()[::-1].copy()).float()

    # ---- construction ----------------------------------------------------------------------------------------

    @classmethod
    def from_module(cls, module, **config):
        """A scheduler over ``module`` (a module object, path or name); ``config`` as for the constructor."""
        return cls(module=module, **config)

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As ``ConfigMixin.from_config``, taking over another scheduler's schedule.

        A config written by a DeriveScheduler (it has ``module``) loads by diffusers' rule: keys its writer left
        at their defaults take this class's defaults. Any other scheduler's config is read at its values,
        defaults included, so that the schedule is the one it ran: its ``timestep_spacing`` on its own grid
        (``timestep_grid``), DDIM's ``set_alpha_to_one`` as ``final_sigmas_type``, its ``clip_sample``,
        thresholding and zero-SNR settings; without a ``module`` argument, ``solver_order`` /
        ``algorithm_type`` / ``solver_type`` / ``predict_x0`` select the module that reproduces the solver
        (:func:`solver_module`). Keys derive cannot reproduce raise ValueError naming them. A FlowMatch
        scheduler's config selects ``prediction_type="flow_prediction"``.
        """
        if config is None or isinstance(config, str) or "module" in config:
            return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
        config = dict(config)
        source = cls._source_class(config)
        if source != cls.__name__:
            config.pop("_use_default_values", None)  # its defaults are the values it ran with
            foreign_kwargs(source, config, kwargs, set(cls._get_init_keys(cls)))
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def _source_class(cls, config: dict) -> str:
        """The scheduler class a config belongs to: its ``_class_name`` (saved configs) or, for an in-memory
        ``scheduler.config`` (which has none), the compatible class whose constructor keys it holds."""
        name = config.get("_class_name")
        if isinstance(name, str) and name:
            return name
        import diffusers

        keys = {key for key in config if not key.startswith("_")}
        best, size = "", -1
        for candidate in [cls.__name__, *cls._compatibles]:
            target = cls if candidate == cls.__name__ else getattr(diffusers, candidate, None)
            if target is None:
                continue
            init = set(cls._get_init_keys(target)) - {"self", "kwargs"}
            if init == keys:
                return candidate
            if init <= keys and len(init) > size:
                best, size = candidate, len(init)
        return best

    # ---- diffusers' step-index protocol ----------------------------------------------------------------------

    @property
    def step_index(self):
        """Index of the next step (increases by one per ``step``)."""
        return self._step_index

    @property
    def begin_index(self):
        """Index of the first step (set by img2img pipelines with ``set_begin_index``)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        self._begin_index = begin_index

    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        """Position of ``timestep`` in the schedule: the second occurrence of a repeated value and, for a
        timestep not in the schedule, the last step (both as diffusers' multistep schedulers)."""
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(schedule_timesteps.device)
        candidates = (schedule_timesteps == timestep).nonzero()
        if len(candidates) == 0:
            return len(schedule_timesteps) - 1
        return candidates[1 if len(candidates) > 1 else 0].item()

    def _init_step_index(self, timestep):
        self._step_index = self.index_for_timestep(timestep) if self.begin_index is None else self.begin_index

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The identity: the model is called in the process's own coordinates."""
        return sample

    # ---- the schedule ----------------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None, sigmas=None, mu=None):
        """Build the schedule and, once, its float64 coefficient table.

        Exactly one of ``num_inference_steps``, ``timesteps`` (the model's timesteps, decreasing) or ``sigmas``
        (noise levels, decreasing: normalized ``sigma_t / alpha_t`` for variance-preserving schedules, where a
        trailing 0 is the final point and otherwise one is appended per ``final_sigmas_type``; flow times t
        before the shift, as FlowMatchEulerDiscreteScheduler, t = 0 appended) drives it; ``mu`` is the dynamic
        flow shift.
        """
        if timesteps is not None and sigmas is not None and not self.flow:
            raise ValueError("pass timesteps or sigmas, not both")
        if num_inference_steps is None and timesteps is None and sigmas is None:
            raise ValueError("pass num_inference_steps, timesteps or sigmas")
        if (timesteps is not None or sigmas is not None) and num_inference_steps is not None and self.flow:
            if len(timesteps if timesteps is not None else sigmas) != num_inference_steps:
                raise ValueError("timesteps/sigmas must have num_inference_steps entries")
            num_inference_steps = None
        if num_inference_steps is not None and num_inference_steps > self.config.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps ({num_inference_steps}) exceeds num_train_timesteps "
                f"({self.config.num_train_timesteps})"
            )
        if self.flow:
            model_t, alpha, sigma = self._flow_schedule(num_inference_steps, timesteps, sigmas, mu)
            self.sigmas = torch.from_numpy(sigma.astype(np.float32))
        else:
            model_t, alpha, sigma = self._vp_schedule(num_inference_steps, timesteps, sigmas)
            with np.errstate(divide="ignore"):
                self.sigmas = torch.from_numpy((sigma / alpha).astype(np.float32))
            if alpha[0] == 0.0 and self.config.prediction_type == "epsilon":
                raise ValueError(
                    "the schedule starts at zero SNR (alpha = 0), where an epsilon prediction determines no "
                    "data prediction: use prediction_type='v_prediction' (or 'sample'), or another spacing"
                )
        #: float64 alpha_t and sigma_t of every point, the final one included
        self.alpha_t = [float(v) for v in alpha]
        self.sigma_t = [float(v) for v in sigma]
        self.timesteps = model_t.to(device)
        self.num_inference_steps = len(model_t)
        self._build_tables(0)
        self._step_index = None
        self._begin_index = None

    def _order_caps(self, n: int) -> dict:
        """{step: at most this many stored predictions} for the last steps (lower_order_final, euler_at_final)."""
        config = self.config
        caps = {}
        if config.lower_order_final == "always":
            caps = {i: n - i for i in range(max(n - self.module.ORDER, 0), n)}
        elif config.lower_order_final and n < 15:
            caps = {n - 1: 1, n - 2: 2}
        if config.euler_at_final:
            caps[n - 1] = 1
        return {i: k for i, k in caps.items() if 0 <= i < n and k < self.module.ORDER}

    def set_sigmas(self, sigmas, device=None):
        """Exactly these normalized noise levels ``sigma_t / alpha_t`` (decreasing, e.g. a schedule from
        :func:`derive.schedules.default` or :func:`derive.schedules.tune`): ``len(sigmas) - 1`` model calls, the
        last step ending at ``sigmas[-1]`` (no point is appended, unlike ``set_timesteps(sigmas=...)``).

        The model's timesteps are the nearest training timesteps (as for ``set_timesteps(sigmas=...)``); the
        coefficients use the levels themselves. Variance-preserving configurations only.
        """
        if self.flow:
            raise ValueError(
                "set_sigmas takes normalized VP noise levels; a flow configuration uses set_timesteps"
            )
        s = torch.as_tensor(sigmas).detach().to(device="cpu", dtype=torch.float64).reshape(-1).numpy()
        if (
            len(s) < 2
            or not np.all(np.isfinite(s))
            or not np.all(s[1:] < s[:-1])
            or not s[-2] > 0
            or s[-1] < 0
        ):
            raise ValueError(
                "sigmas must be finite, strictly decreasing, at least two, positive but the last"
            )
        log_table = np.log(self._vp_sigma_table())
        t = np.array([_sigma_to_t(v, log_table) for v in s[:-1]]).round().astype(np.int64)
        self.sigmas = torch.from_numpy(s.astype(np.float32))
        self.alpha_t = [float(v) for v in 1 / np.sqrt(1 + s**2)]
        self.sigma_t = [float(v) for v in s / np.sqrt(1 + s**2)]
        self.timesteps = torch.from_numpy(t).to(device)
        self.num_inference_steps = len(t)
        self._build_tables(0)
        self._step_index = None
        self._begin_index = None

    def _build_tables(self, offset: int):
        """The step table (and corrections) of the schedule from point ``offset`` on; resets the history."""
        alpha, sigma = self.alpha_t[offset:], self.sigma_t[offset:]
        # a zero-length last step (DDIM's set_alpha_to_one=False after timestep 0) leaves the state unchanged
        identity_last = len(alpha) > 2 and alpha[-1] == alpha[-2] and sigma[-1] == sigma[-2]
        if identity_last:
            alpha, sigma = alpha[:-1], sigma[:-1]
        rows = step_table(self.module, alpha, sigma)
        corrections = correction_table(self.module, alpha, sigma) if has_corrector(self.module) else None
        for i, k in self._order_caps(self.num_inference_steps).items():
            i -= offset
            if i < 0 or i >= len(rows):
                continue
            first = max(i - k + 1, 0)  # the module's own start on the last k points (its lower orders)
            part = slice(first, min(i + 3, len(alpha)))
            rows[i] = step_table(self.module, alpha[part], sigma[part])[i - first]
            if corrections is not None:
                corrections[i] = correction_table(self.module, alpha[part], sigma[part])[i - first]
        if identity_last:
            rows.append((1.0, (), 0.0, 0.0, False))
            if corrections is not None:
                corrections.append(None)
        self._rows = rows
        self._corrections = corrections
        self._row_offset = offset
        self._history = []
        self._last = None
        self._keep = self.module.ORDER + (1 if corrections is not None else 0)

    # ---- stepping --------------------------------------------------------------------------------------------

    def _threshold(self, x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding: per sample, s = quantile(|x0|, ratio) clamped to [1, sample_max_value]."""
        dtype = x0.dtype
        flat = x0.reshape(x0.shape[0], -1)
        if dtype not in (torch.float32, torch.float64):
            flat = flat.float()
        bound = torch.quantile(flat.abs(), self.config.dynamic_thresholding_ratio, dim=1)
        bound = bound.clamp(min=1.0, max=self.config.sample_max_value).unsqueeze(1)
        return (torch.maximum(torch.minimum(flat, bound), -bound) / bound).reshape(x0.shape).to(dtype)

    def _check_step_options(self, options: dict):
        """DDIM's step options (DDIMPipeline passes them): eta and use_clipped_model_output."""
        unknown = sorted(set(options) - {"eta", "use_clipped_model_output"})
        if unknown:
            raise TypeError(f"step() got unexpected keyword arguments {unknown}")
        eta = options.get("eta")
        if eta is not None:
            phi = getattr(self.module, "SPEC", {}).get("phi")
            own = {"s": 0.0, "s**2": 1.0}.get(phi)
            if own is None or float(eta) != own:
                raise ValueError(
                    f"eta={eta!r}: the stochasticity of {self.config.module} is fixed by its phi(s) = {phi} "
                    f"(DDIM's eta = {own}); choose a module with phi = s (eta = 0) or s**2 (eta = 1) instead"
                )
        clipped = options.get("use_clipped_model_output")
        if clipped is False and (self.config.clip_sample or self.config.thresholding):
            raise ValueError(
                "use_clipped_model_output=False: the update uses the noise prediction re-derived from the "
                "clipped data prediction (DDIM's use_clipped_model_output=True); pass None or True"
            )

    def step(
        self,
        model_output,
        timestep,
        sample,
        generator=None,
        variance_noise=None,
        return_dict=True,
        **options,
    ):
        """One step: convert the model output, store the prediction, apply the precomputed linear combination.

        Returns ``DeriveSchedulerOutput(prev_sample, pred_original_sample)`` (a ``SchedulerOutput``) or, with
        ``return_dict=False``, ``(prev_sample,)``. Noise (SDE modules) is drawn with diffusers' ``randn_tensor``
        from ``generator``, shaped like ``model_output`` and typed per ``noise_dtype``, exactly when the step
        injects noise; ``variance_noise`` gives it instead. A module with a corrector first corrects
        ``sample`` with this output (the state the model saw is the predicted one; the output is stored as is).

        DDIM's ``eta`` (as DDIMPipeline passes it) is accepted when it is the module's own: 0 for phi = s, 1 for
        phi = s**2 (DDIM's eta = 1 is DDPM's posterior, the order-1 phi = s**2 step); anything else raises.
        ``use_clipped_model_output`` may be None or True (clipping re-derives the noise prediction).
        """
        if options:
            self._check_step_options(options)
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if self._step_index is None:
            self._init_step_index(timestep)
            if self._step_index != self._row_offset or self._history:  # mid-schedule (img2img): from here
                self._build_tables(self._step_index)
        i = self._step_index
        if i >= self.num_inference_steps:
            raise ValueError("the schedule is exhausted: call set_timesteps again")
        A, B, C, _, final = self._rows[i - self._row_offset]  # M = 0: no mean-reverting modules
        alpha, sigma = self.alpha_t[i], self.sigma_t[i]
        config = self.config

        work = torch.float32 if sample.dtype in (torch.float16, torch.bfloat16) else sample.dtype
        x = sample.to(work)
        output = model_output.to(work)
        # only what the update and the output need: x0 (data form, final step, returned) and eps (noise form)
        data_form = self.module.FORM == "data"
        need_x0 = data_form or final or return_dict or config.clip_sample or config.thresholding
        kind = config.prediction_type
        x0 = eps = None
        if kind == "epsilon":
            eps = output
            if need_x0:
                x0 = torch.add(x, output, alpha=-sigma).mul_(1.0 / alpha)
        elif kind == "sample":
            x0 = output
        elif kind == "v_prediction":
            if need_x0:
                x0 = torch.mul(x, alpha).add_(output, alpha=-sigma)
            if not data_form:
                eps = torch.mul(x, sigma).add_(output, alpha=alpha)
        else:  # flow: x = alpha x0 + sigma eps, v = eps - x0
            scale = 1.0 / (alpha + sigma)
            if need_x0:
                x0 = torch.add(x, output, alpha=-sigma).mul_(scale)
            if not data_form:
                eps = torch.add(x, output, alpha=alpha).mul_(scale)
        if config.clip_sample or config.thresholding:
            if config.clip_sample:
                x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
            if config.thresholding:
                x0 = self._threshold(x0)
            eps = None
        if not data_form and eps is None:
            eps = torch.add(x, x0, alpha=-alpha).mul_(1.0 / sigma)
        history = self._history
        history.insert(0, x0 if data_form else eps)
        del history[self._keep :]

        if self._corrections is not None:
            correction = self._corrections[i - 1 - self._row_offset] if i > self._row_offset else None
            if correction is not None:
                a_last, a_new, weights = correction
                corrected = torch.mul(self._last, a_last) if a_last else torch.mul(x, a_new)
                if a_last and a_new:
                    corrected.add_(x, alpha=a_new)
                for j, weight in enumerate(weights):
                    corrected.add_(history[j], alpha=weight)
                x = corrected
            self._last = x

        if final:
            prev = x0
        else:
            prev = torch.mul(x, A)
            for j, weight in enumerate(B):
                prev.add_(history[j], alpha=weight)
            if C > 0:
                if variance_noise is None:
                    variance_noise = randn_tensor(
                        model_output.shape,
                        generator=generator,
                        device=model_output.device,
                        dtype=self._noise_dtype or model_output.dtype,
                    )
                prev.add_(variance_noise.to(work), alpha=C)
        self._step_index += 1
        prev = prev.to(sample.dtype)
        if not return_dict:
            return (prev,)
        return DeriveSchedulerOutput(prev_sample=prev, pred_original_sample=x0.to(sample.dtype))

    # ---- forward process -------------------------------------------------------------------------------------

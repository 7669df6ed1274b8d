"""A diffusers scheduler over any generated sampler module.

``DeriveScheduler`` drives a module of ``generated/`` step by step inside an unmodified diffusers pipeline::

    from diffusers import DDPMPipeline
    from derive.integrations.diffusers import DeriveScheduler

    pipe.scheduler = DeriveScheduler.from_config(pipe.scheduler.config, module="ersde_order2_phi_ode")

The modules are whole-trajectory samplers; the scheduler uses their public pieces only. ``set_timesteps``
builds the noise schedule the way diffusers' own schedulers do (DDIM/DDPM timestep spacing, Karras /
exponential / beta sigmas, the FlowMatchEuler shift) and computes, once and in float64, the per-step
coefficients ``(A, B, C, M, final)`` with :func:`derive.integrations.step_table` (the module's
``family_table`` or its ``coefficient_table`` in normalized coordinates). ``step`` converts the model output
to a data prediction x0 and a noise prediction eps, stores the one the module's update expands (``FORM``), and
applies ``x_next = A x + sum_j B_j P_{i-j} + C z``: one model call per step (``order = 1``); a multistep
module keeps the last ``ORDER`` predictions.

Two processes are supported:

- variance preserving (``prediction_type`` epsilon / sample / v_prediction): the discrete schedule of
  ``betas`` (``alpha_t = sqrt(alphas_cumprod[t])``, ``sigma_t = sqrt(1 - alphas_cumprod[t])``); the model gets
  integer timesteps, ``sigmas`` are k-diffusion's normalized noise levels ``sigma_t / alpha_t``;
- rectified flow (``prediction_type="flow_prediction"``, SD3 / Flux): ``x = (1 - t) x0 + t eps`` and the model
  returns ``v = eps - x0``; ``sigmas`` are t and the model gets ``t * num_train_timesteps``, as with
  ``FlowMatchEulerDiscreteScheduler``.

Differences from diffusers' own schedulers, all deliberate: tables are float64 (diffusers keeps
``alphas_cumprod`` and flow sigmas in float32, so trajectories agree with them to float32 precision only); the
step to the final noise level uses the next entry of the schedule (DDIM's ``timestep - num_train_timesteps //
num_inference_steps`` coincides with it for the "leading" and "trailing" spacings, not for "linspace"); a
final step to sigma = 0 returns the data prediction and draws no noise (DDPM adds ``1e-10 * z`` there when the
last timestep is not 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from derive.integrations import load_module, module_id, step_table

__all__ = ["DeriveScheduler", "DeriveSchedulerOutput"]

VP_PREDICTIONS = ("epsilon", "sample", "v_prediction")
PREDICTIONS = VP_PREDICTIONS + ("flow_prediction",)
DEFAULT_MODULES = {"vp": "ersde_order2_phi_ode", "flow": "flow_order2_ode"}


@dataclass
class DeriveSchedulerOutput(SchedulerOutput):
    """``prev_sample`` (the next state) and ``pred_original_sample`` (the data prediction x0 of this step)."""

    pred_original_sample: torch.Tensor | None = None


def _cosine_betas(n: int, max_beta: float = 0.999) -> torch.Tensor:
    """The squaredcos_cap_v2 (GLIDE cosine) betas, in float64."""

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor(
        [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)], dtype=torch.float64
    )


class DeriveScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs a derive-generated sampler module, one model call per step.

    Args:
        module: the generated module: a name under ``generated/`` (``"ersde_order3"``), a path to a ``.py`` file,
            an importable module name, or a module object (stored in the config as its name or path). Default:
            ``ersde_order2_phi_ode`` (variance preserving) or ``flow_order2_ode`` (flow). Mean-reverting
            (mrsde) modules need the degraded image mu and are used through their ``sample_native``.
        num_train_timesteps, beta_start, beta_end, beta_schedule ("linear", "scaled_linear",
            "squaredcos_cap_v2"), trained_betas: the discrete variance-preserving schedule, as in DDPMScheduler
            (computed in float64).
        prediction_type: "epsilon", "sample", "v_prediction" (variance preserving) or "flow_prediction"
            (rectified flow: x = (1 - t) x0 + t eps, model output v = eps - x0). Default: "flow_prediction" for
            a flow module, else "epsilon".
        timestep_spacing: "linspace", "leading" or "trailing" (DDIM's / DDPM's definitions); steps_offset as
            there (leading spacing only).
        use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas: the noise levels between the schedule's
            extremes, as in DPMSolverMultistepScheduler / FlowMatchEulerDiscreteScheduler (beta needs scipy).
        final_sigmas_type: "zero" (last step to sigma = 0, returns the data prediction; DDIM's
            ``set_alpha_to_one=True``) or "sigma_min" (last step to the schedule's smallest noise level,
            ``set_alpha_to_one=False``); flow schedules always end at t = 0.
        clip_sample, clip_sample_range: clamp the data prediction (and re-derive eps from it), as DDIM / DDPM.
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
        prediction_type: str | None = None,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        final_sigmas_type: str = "zero",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
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
        self.register_to_config(module=module_id(self.module), prediction_type=prediction_type)
        if sum([use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas]) > 1:
            raise ValueError("use at most one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas")
        if timestep_spacing not in ("linspace", "leading", "trailing"):
            raise ValueError(
                f"timestep_spacing must be linspace, leading or trailing, not {timestep_spacing!r}"
            )
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', not {final_sigmas_type!r}")
        if time_shift_type not in ("exponential", "linear"):
            raise ValueError(f"time_shift_type must be 'exponential' or 'linear', not {time_shift_type!r}")
        self.flow = prediction_type == "flow_prediction"

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
        #: float64 tables of the variance-preserving schedule (CPU)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.init_noise_sigma = 1.0

        self.num_inference_steps = None
        self._step_index = None
        self._begin_index = None
        self._history = []
        self._rows = None
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
            self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt().flip(0).float()

    # ---- construction ----------------------------------------------------------------------------------------

    @classmethod
    def from_module(cls, module, **config):
        """A scheduler over ``module`` (a module object, path or name); ``config`` as for the constructor."""
        return cls(module=module, **config)

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As ``ConfigMixin.from_config``; a FlowMatch scheduler's config (it has ``shift`` and no
        ``prediction_type``) selects ``prediction_type="flow_prediction"``."""
        if config is not None and not isinstance(config, str) and "prediction_type" not in kwargs:
            name = config.get("_class_name", "") or ""
            flow_keys = "prediction_type" not in config and (
                "shift" in config or "use_dynamic_shifting" in config
            )
            if flow_keys or (isinstance(name, str) and name.startswith("FlowMatch")):
                kwargs["prediction_type"] = "flow_prediction"
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

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
        """Position of ``timestep`` in the schedule (the second occurrence of a repeated value, as diffusers)."""
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(schedule_timesteps.device)
        candidates = (schedule_timesteps == timestep).nonzero()
        if len(candidates) == 0:
            raise ValueError(f"timestep {timestep} is not in the schedule set by set_timesteps")
        return candidates[1 if len(candidates) > 1 else 0].item()

    def _init_step_index(self, timestep):
        self._step_index = self.index_for_timestep(timestep) if self.begin_index is None else self.begin_index

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The identity: the model is called in the process's own coordinates."""
        return sample

    # ---- the schedule ----------------------------------------------------------------------------------------

    def _vp_sigma_table(self) -> np.ndarray:
        abar = self.alphas_cumprod.numpy()
        return np.sqrt((1 - abar) / abar)

    def _spaced_sigmas(self, sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
        config = self.config
        if config.use_karras_sigmas:
            rho = 7.0
            ramp = np.linspace(0, 1, n)
            return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
        if config.use_exponential_sigmas:
            return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))
        import scipy.stats  # use_beta_sigmas (Beta Sampling is All You Need; alpha = beta = 0.6, as diffusers)

        ppf = scipy.stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6)
        return sigma_min + ppf * (sigma_max - sigma_min)

    def _vp_schedule(self, num_inference_steps, timesteps, sigmas):
        """(model timesteps, alpha, sigma) for the variance-preserving schedule, alpha/sigma with the final point."""
        config = self.config
        n_train = config.num_train_timesteps
        table = self._vp_sigma_table()
        log_table = np.log(table)
        spaced = config.use_karras_sigmas or config.use_exponential_sigmas or config.use_beta_sigmas
        final_s = 0.0 if config.final_sigmas_type == "zero" else float(table[0])
        if sigmas is not None:
            s = np.asarray(sigmas, dtype=np.float64).reshape(-1)
            if s[-1] == 0:
                final_s, s = 0.0, s[:-1]
            t = np.array([_sigma_to_t(v, log_table) for v in s]).round().astype(np.int64)
        elif timesteps is not None:
            t = np.asarray(timesteps, dtype=np.int64).reshape(-1)
            if (np.diff(t) >= 0).any() or t[0] >= n_train or t[-1] < 0:
                raise ValueError(f"timesteps must be decreasing integers in [0, {n_train})")
            s = table[t]
        elif spaced:
            s = self._spaced_sigmas(float(table[0]), float(table[-1]), num_inference_steps)
            t = np.array([_sigma_to_t(v, log_table) for v in s]).round().astype(np.int64)
        else:
            if config.timestep_spacing == "linspace":
                t = np.linspace(0, n_train - 1, num_inference_steps).round()[::-1].copy().astype(np.int64)
            elif config.timestep_spacing == "leading":
                ratio = n_train // num_inference_steps
                t = (np.arange(0, num_inference_steps) * ratio).round()[::-1].copy().astype(np.int64)
                t += config.steps_offset
            else:
                t = np.round(np.arange(n_train, 0, -n_train / num_inference_steps)).astype(np.int64) - 1
            s = table[t]
        abar = self.alphas_cumprod.numpy()
        if sigmas is None and not spaced:  # exactly the table's alpha and sigma (no round trip through s)
            alpha, sigma = np.sqrt(abar[t]), np.sqrt(1 - abar[t])
        else:
            alpha, sigma = 1 / np.sqrt(1 + s**2), s / np.sqrt(1 + s**2)
        if final_s == 0.0:
            alpha, sigma = np.append(alpha, 1.0), np.append(sigma, 0.0)
        elif sigmas is None and not spaced:
            alpha, sigma = np.append(alpha, math.sqrt(abar[0])), np.append(sigma, math.sqrt(1 - abar[0]))
        else:
            alpha = np.append(alpha, 1 / math.sqrt(1 + final_s**2))
            sigma = np.append(sigma, final_s / math.sqrt(1 + final_s**2))
        return torch.from_numpy(t.astype(np.int64)), alpha, sigma

    def _flow_shift(self, t: np.ndarray, mu) -> np.ndarray:
        config = self.config
        if config.use_dynamic_shifting:
            if mu is None:
                raise ValueError("mu must be passed to set_timesteps when use_dynamic_shifting is True")
            scale = math.exp(mu) if config.time_shift_type == "exponential" else mu
            with np.errstate(divide="ignore"):
                t = scale / (scale + (1 / t - 1))
        else:
            t = config.shift * t / (1 + (config.shift - 1) * t)
        if config.shift_terminal:
            one_minus = 1 - t
            t = 1 - one_minus / (one_minus[-1] / (1 - config.shift_terminal))
        return t

    def _flow_schedule(self, num_inference_steps, timesteps, sigmas, mu):
        """(model timesteps, alpha, sigma) for the flow schedule (FlowMatchEulerDiscreteScheduler's), with t = 0 appended."""
        config = self.config
        n_train = config.num_train_timesteps
        given = None if timesteps is None else np.asarray(timesteps, dtype=np.float64).reshape(-1)
        if sigmas is not None:
            t = np.asarray(sigmas, dtype=np.float64).reshape(-1)
        elif given is not None:
            t = given / n_train
        else:
            t = np.linspace(
                self._flow_sigma_max * n_train, self._flow_sigma_min * n_train, num_inference_steps
            )
            t = t / n_train
        t = self._flow_shift(t, mu)
        if config.use_karras_sigmas or config.use_exponential_sigmas or config.use_beta_sigmas:
            t = self._spaced_sigmas(float(t[-1]), float(t[0]), len(t))
        model_t = given if given is not None else t * n_train
        t = np.append(t, 0.0)
        return torch.from_numpy(model_t.astype(np.float32)), 1.0 - t, t

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
        #: float64 alpha_t and sigma_t of every point, the final one included
        self.alpha_t = [float(v) for v in alpha]
        self.sigma_t = [float(v) for v in sigma]
        self.timesteps = model_t.to(device)
        self.num_inference_steps = len(model_t)
        self._rows = step_table(self.module, self.alpha_t, self.sigma_t)
        self._row_offset = 0
        self._history = []
        self._step_index = None
        self._begin_index = None

    # ---- stepping --------------------------------------------------------------------------------------------

    def _predictions(self, output, x, alpha, sigma):
        """(x0, eps) from the model output, per prediction_type."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return (x - sigma * output) / alpha, output
        if kind == "sample":
            return output, (x - alpha * output) / sigma
        if kind == "v_prediction":
            return alpha * x - sigma * output, sigma * x + alpha * output
        return (x - sigma * output) / (alpha + sigma), (x + alpha * output) / (alpha + sigma)

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        """One step: convert the model output, store the prediction, apply the precomputed linear combination.

        Returns ``DeriveSchedulerOutput(prev_sample, pred_original_sample)`` (a ``SchedulerOutput``) or, with
        ``return_dict=False``, ``(prev_sample,)``. Noise (SDE modules) is drawn with diffusers' ``randn_tensor``
        from ``generator``, shaped and typed like ``model_output``, exactly when the step injects noise.
        """
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if self._step_index is None:
            self._init_step_index(timestep)
            if self._step_index != self._row_offset:  # started mid-schedule (img2img): a table from here
                self._row_offset = self._step_index
                self._rows = step_table(
                    self.module, self.alpha_t[self._row_offset :], self.sigma_t[self._row_offset :]
                )
                self._history = []
        i = self._step_index
        if i >= self.num_inference_steps:
            raise ValueError("the schedule is exhausted: call set_timesteps again")
        A, B, C, _, final = self._rows[i - self._row_offset]  # M = 0: no mean-reverting modules
        alpha, sigma = self.alpha_t[i], self.sigma_t[i]

        work = torch.float32 if sample.dtype in (torch.float16, torch.bfloat16) else sample.dtype
        x = sample.to(work)
        x0, eps = self._predictions(model_output.to(work), x, alpha, sigma)
        if self.config.clip_sample:
            bound = self.config.clip_sample_range
            x0 = x0.clamp(-bound, bound)
            if self.module.FORM == "noise":
                eps = (x - alpha * x0) / sigma
        self._history.insert(0, x0 if self.module.FORM == "data" else eps)
        del self._history[self.module.ORDER :]

        if final:
            prev = x0
        else:
            prev = x * A
            for j, weight in enumerate(B):
                prev = prev + self._history[j] * weight
            if C > 0:
                noise = randn_tensor(
                    model_output.shape,
                    generator=generator,
                    device=model_output.device,
                    dtype=model_output.dtype,
                )
                prev = prev + noise.to(work) * C
        self._step_index += 1
        prev = prev.to(sample.dtype)
        if not return_dict:
            return (prev,)
        return DeriveSchedulerOutput(prev_sample=prev, pred_original_sample=x0.to(sample.dtype))

    # ---- forward process -------------------------------------------------------------------------------------

    def _alpha_sigma(self, timesteps: torch.Tensor):
        """float64 (alpha, sigma) per timestep: the schedule's point once set_timesteps ran, else the training table."""
        timesteps = torch.as_tensor(timesteps).reshape(-1).cpu()
        if self.num_inference_steps is not None and all(
            bool((self.timesteps.cpu() == t).any()) for t in timesteps
        ):
            if self.begin_index is None:
                index = [self.index_for_timestep(t, self.timesteps.cpu()) for t in timesteps]
            else:
                index = [self.step_index if self.step_index is not None else self.begin_index] * len(
                    timesteps
                )
            alpha = torch.tensor([self.alpha_t[k] for k in index], dtype=torch.float64)
            sigma = torch.tensor([self.sigma_t[k] for k in index], dtype=torch.float64)
        elif self.flow:
            sigma = timesteps.to(torch.float64) / self.config.num_train_timesteps
            alpha = 1.0 - sigma
        else:
            abar = self.alphas_cumprod[timesteps.long()]
            alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        return alpha, sigma

    def add_noise(self, original_samples, noise, timesteps):
        """The forward process alpha_t x0 + sigma_t noise at ``timesteps`` (training or img2img)."""
        alpha, sigma = self._alpha_sigma(timesteps)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        alpha = alpha.to(original_samples.device, original_samples.dtype).reshape(shape)
        sigma = sigma.to(original_samples.device, original_samples.dtype).reshape(shape)
        return alpha * original_samples + sigma * noise

    def get_velocity(self, sample, noise, timesteps):
        """The v-prediction target alpha_t noise - sigma_t sample (training), as DDPMScheduler's."""
        alpha, sigma = self._alpha_sigma(timesteps)
        shape = (-1,) + (1,) * (sample.ndim - 1)
        alpha = alpha.to(sample.device, sample.dtype).reshape(shape)
        sigma = sigma.to(sample.device, sample.dtype).reshape(shape)
        return alpha * noise - sigma * sample

    def scale_noise(self, sample, timestep, noise=None):
        """FlowMatchEulerDiscreteScheduler's name for the forward process (SD3 / Flux img2img)."""
        return self.add_noise(sample, noise, timestep)


def _sigma_to_t(sigma: float, log_sigmas: np.ndarray) -> float:
    """Fractional timestep of a normalized noise level: interpolation in log sigma (as diffusers)."""
    log_sigma = math.log(max(sigma, 1e-10))
    above = int(np.searchsorted(log_sigmas, log_sigma, side="right")) - 1
    low = min(max(above, 0), len(log_sigmas) - 2)
    w = (log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1])
    w = min(max(w, 0.0), 1.0)
    return (1 - w) * low + w * (low + 1)

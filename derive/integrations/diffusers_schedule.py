"""The noise-level grids and the forward process of :class:`derive.integrations.diffusers.DeriveScheduler`: the
timestep grids of DDIM/DDPM and of the multistep solvers, Karras / exponential / beta sigmas, the FlowMatch
shift, and ``add_noise`` / ``get_velocity`` / ``scale_noise``, all from the scheduler's float64 tables."""

from __future__ import annotations

import math

import numpy as np
import torch

from derive.integrations.diffusers_config import _sigma_to_t

__all__ = ["ScheduleMixin"]


class ScheduleMixin:
    """Grids and the forward process, over the scheduler's ``config`` and float64 tables."""

    def _vp_sigma_table(self) -> np.ndarray:
        abar = self.alphas_cumprod.numpy()
        with np.errstate(divide="ignore"):
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

    def _grid(self, n: int) -> np.ndarray:
        """The integer timesteps of ``timestep_spacing`` on DDIM's or the multistep schedulers' grid."""
        config = self.config
        n_train = config.num_train_timesteps
        if config.timestep_spacing == "trailing":  # the same on both grids
            return np.round(np.arange(n_train, 0, -n_train / n)).astype(np.int64) - 1
        points = n + 1 if config.timestep_grid == "multistep" else n
        if config.timestep_spacing == "linspace":
            t = np.linspace(0, n_train - 1, points).round()[::-1]
        else:
            t = (np.arange(0, points) * (n_train // points)).round()[::-1] + config.steps_offset
        return (t[:-1] if config.timestep_grid == "multistep" else t).copy().astype(np.int64)

    def _vp_schedule(self, num_inference_steps, timesteps, sigmas):
        """(model timesteps, alpha, sigma) for the variance-preserving schedule, alpha/sigma with the final point."""
        config = self.config
        n_train = config.num_train_timesteps
        table = self._vp_sigma_table()
        log_table = np.log(table)
        spaced = config.use_karras_sigmas or config.use_exponential_sigmas or config.use_beta_sigmas
        final_s = 0.0 if config.final_sigmas_type == "zero" else float(table[0])
        if spaced and not math.isfinite(float(table[-1])):
            raise ValueError(
                "rescale_betas_zero_snr puts an infinite noise level at the last timestep: use the timestep "
                "spacings, not use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas"
            )
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
            t = self._grid(num_inference_steps)
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

"""Sampling a rectified-flow (SD3 / Flux style) velocity model with generated flow modules, ODE and SDE.

The process is x_t = (1 - t) x0 + t eps (alpha = 1 - t, sigma = t) and the model predicts the velocity
v = eps - x0 = dx/dt. The flow modules' ``sample_native(model, x, timesteps)`` take such a model directly,
starting from pure noise at t = 1 (see ``flow_times`` for the grid; in diffusers, ``DeriveScheduler`` reproduces
SD3's and Flux's shifted grids).

Two models are sampled: a small randomly initialised convolutional network (a stand-in for a transformer) and
the exact velocity of Gaussian data N(m, c^2), whose samples must have mean m and standard deviation c; the
ODE (probability flow) and the SDE (phi = s^2) modules must both reproduce them.

Run: ``python examples/flow_sampling.py`` (seconds on a CPU).
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from derive.integrations import load_module

#: the data distribution of the exact model
DATA_MEAN, DATA_STD = 0.5, 0.3
#: the first step below pure noise (t = 1): x_t is then still noise to 1e-2
T_FIRST = 0.99


class TinyVelocity(nn.Module):
    """A small time-conditioned convolutional net returning a velocity (randomly initialised)."""

    def __init__(self, channels: int = 4, width: int = 16):
        super().__init__()
        self.time = nn.Sequential(nn.Linear(1, width), nn.SiLU(), nn.Linear(width, width))
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, t):
        h = self.inp(x) + self.time(t.reshape(-1, 1).to(x.dtype))[:, :, None, None]
        return self.out(torch.nn.functional.silu(h))


def gaussian_velocity(x, t):
    """The exact velocity E[eps - x0 | x_t] for data x0 ~ N(DATA_MEAN, DATA_STD^2) per coordinate."""
    t = t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    alpha, var = 1 - t, DATA_STD**2
    x0_hat = DATA_MEAN + alpha * var / (alpha**2 * var + t**2) * (x - alpha * DATA_MEAN)
    return (x - x0_hat) / t


def flow_times(steps: int, t_end: float = 2e-3) -> torch.Tensor:
    """steps + 1 times: t = 1 (pure noise), then uniform in log(t / (1 - t)) (half the log-SNR) from T_FIRST to t_end.

    SD3's shifted grid (t = shift u / (1 + (shift - 1) u), u uniform) ends with one step from t ~ 1/steps to 0,
    which returns the denoised prediction E[x0 | x_t]: its spread is smaller than the data's. A grid uniform in
    log-SNR down to a small t keeps the samples' statistics comparable with the data's.
    """
    first, last = T_FIRST / (1 - T_FIRST), t_end / (1 - t_end)
    s = torch.logspace(math.log10(first), math.log10(last), steps, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), s / (1 + s)])


def main(size: int = 16, steps: int = 25, batch: int = 4, order: int = 2, seed: int = 0):
    """Sample both models with the ODE and the SDE module; returns {(dynamics, model name): samples}."""
    torch.manual_seed(seed)
    network = TinyVelocity().eval()
    times = flow_times(steps)
    results = {}
    for dynamics in ("ode", "sde"):
        module = load_module(f"flow_order{order}_{dynamics}")
        for name, model in (("network", network), ("exact", gaussian_velocity)):
            generator = torch.Generator().manual_seed(seed)
            noise = torch.randn(batch, 4, size, size, generator=generator)
            with torch.no_grad():
                sample = module.sample_native(model, noise, times, generator=generator)
            if not bool(torch.isfinite(sample).all()):
                raise RuntimeError(f"non-finite samples from {dynamics} / {name}")
            results[(dynamics, name)] = sample
            print(
                f"flow_order{order}_{dynamics}, {name:7s}: mean {float(sample.mean()):+.3f}, "
                f"std {float(sample.std()):.3f}"
                + (f" (data: {DATA_MEAN:+.3f}, {DATA_STD:.3f})" if name == "exact" else "")
            )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--order", type=int, choices=[1, 2, 3], default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.size, args.steps, args.batch, args.order, args.seed)

"""Why ``ersde_order6_phi_ode`` on log-uniform steps 80 -> 0.002 (2-D mixture) converges at order ~2.

Three measurements on ``GaussianMixture.standard(2, seed=0)``, 64 points, float64:

1. the DOP853 reference of the whole batch against per-point references (atol 1e-16): is the floor the
   reference's?
2. the sampler's own start against an exact start (its first K - 1 = 5 stored predictions taken from DOP853
   solutions at the first levels, ``sample(..., history=...)``): is it the low-order start?
3. the derived schedule (``derive.schedules.default``), whose graded start sizes the low-order steps.

    .venv/bin/python benchmarks/start_stall.py
"""

from __future__ import annotations

import numpy as np
import torch

import derive
from derive.verify.problems import GaussianMixture, log_uniform_sigmas, reference_flow


def rms(a, b) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def main() -> None:
    torch.set_num_threads(1)
    mix = GaussianMixture.standard(2, seed=0)
    rng = np.random.default_rng(2)
    y0 = mix.sample_np(64, rng) + 80.0 * rng.standard_normal((64, 2))
    ref = reference_flow(mix.denoiser_np, y0, 80.0, 0.002)
    per_point = np.stack(
        [reference_flow(mix.denoiser_np, y0[i : i + 1], 80.0, 0.002, atol=1e-16)[0] for i in range(len(y0))]
    )
    print(f"reference: batch vs per-point RMS {rms(ref, per_point):.1e}")
    mod = derive.load("ersde_order6_phi_ode")
    print("N     own start    exact start  derived schedule")
    for n in (256, 512, 768, 1024):
        s = log_uniform_sigmas(n, 0.002, 80.0)
        own = mod.sample(mix.denoiser_torch, torch.tensor(y0), torch.tensor(s)).numpy()
        ys = [y0]
        for j in range(1, 6):
            ys.append(reference_flow(mix.denoiser_np, ys[-1], s[j - 1], s[j]))
        history = [torch.tensor(mix.denoiser_np(ys[j], s[j])) for j in range(5)]
        exact = mod.sample(mix.denoiser_torch, torch.tensor(ys[5]), torch.tensor(s), history=history).numpy()
        d = derive.schedules.default(mod, nfe=n, sigma_max=80.0, sigma_min=0.002)
        derived = mod.sample(mix.denoiser_torch, torch.tensor(y0), d).numpy()
        print(
            f"{n:<5d} {rms(own, ref):.2e}     {rms(exact, ref):.2e}     {rms(derived, ref):.2e}", flush=True
        )


if __name__ == "__main__":
    main()

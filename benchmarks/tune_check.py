"""derive.schedules.tune against default on the held-out mixtures of benchmarks/schedules.py (RMS error).

The pilot is 16 fresh starting states (seed 99, not the evaluation points); its cost is printed.

    .venv/bin/python benchmarks/tune_check.py
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import schedules as bench  # noqa: E402

import derive  # noqa: E402
from derive.verify.problems import reference_flow  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    name = derive.recommend(nfe=20, family="ersde", dynamics="ode")
    mod = derive.load(name)
    for pname, mix in bench.mixture_problems("heldout").items():
        rng = np.random.default_rng(0)
        y0 = mix.sample_np(128, rng) + bench.SIGMA_MAX * rng.standard_normal((128, mix.d))
        ref = reference_flow(mix.denoiser_np, y0, bench.SIGMA_MAX, bench.SIGMA_MIN, rtol=1e-12, atol=1e-13)
        pilot_rng = np.random.default_rng(99)
        x_pilot = torch.tensor(bench.SIGMA_MAX * pilot_rng.standard_normal((16, mix.d)))
        report: dict = {}
        for n in (10, 20, 32, 50):
            d = derive.schedules.default(mod, nfe=n, sigma_max=bench.SIGMA_MAX, sigma_min=bench.SIGMA_MIN)
            t = derive.schedules.tune(
                mod,
                mix.denoiser_torch,
                x_pilot,
                nfe=n,
                sigma_max=bench.SIGMA_MAX,
                sigma_min=bench.SIGMA_MIN,
                cache=pathlib.Path("/tmp") / f"derive_tune_check_{pname}.json",
                report=report,
            )
            e = {}
            for label, s in (("default", d), ("tune", t)):
                y = mod.sample(mix.denoiser_torch, torch.tensor(y0), s).numpy()
                e[label] = float(np.sqrt(np.mean((y - ref) ** 2)))
            print(
                f"{pname} N={n}: default {e['default']:.2e}  tune {e['tune']:.2e}  pilot {report['pilot']}",
                flush=True,
            )


if __name__ == "__main__":
    main()

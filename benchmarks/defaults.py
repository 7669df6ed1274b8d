"""The defaults of `derive gen` (--method, --variable) by accuracy at 10-20 model calls.

Deterministic samplers (probability-flow ODE, phi = s) of the catalogue on the accuracy benchmark's problems:
Gaussian mixtures ``GaussianMixture.standard(d, seed=0)`` (d = 2, 16), Karras (rho = 7) and log-SNR-uniform
schedules from sigma_max = 80 to sigma_min = 0.002, float64, plain ``sample()`` (the module's own start). Error:
RMS over 64 points and coordinates against DOP853 (rtol 1e-13) at sigma_min. Every combination of method
(taylor, adams, pc) and variable (s, lambda) that the catalogue holds at stored outputs K = 2 and 3.

    .venv/bin/python benchmarks/defaults.py    # ~1 min
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import HERE, load_generated, machine

from derive.verify.problems import GaussianMixture, karras_sigmas, log_uniform_sigmas, reference_flow

SIGMA_MAX, SIGMA_MIN = 80.0, 0.002
SCHEDULES = {
    "karras": lambda n: karras_sigmas(n, SIGMA_MIN, SIGMA_MAX, 7.0),
    "logsnr": lambda n: log_uniform_sigmas(n, SIGMA_MIN, SIGMA_MAX),
}
NFES = (10, 15, 20)
#: (method, variable) -> module name pattern for K stored outputs
VARIANTS = {
    ("taylor", "s"): "ersde_order{k}_phi_ode",
    ("taylor", "lambda"): "ersde_order{k}_phi_ode_lambda",
    ("adams", "s"): "ersde_order{k}_phi_ode_adams",
    ("pc", "s"): "ersde_order{k}_phi_ode_pc",
    ("pc", "lambda"): "ersde_order{k}_phi_ode_lambda_pc",
}


def main() -> None:
    torch.set_num_threads(1)
    results = {"machine": machine(), "nfes": NFES, "errors": {}}
    for d in (2, 16):
        mix = GaussianMixture.standard(d, seed=0)
        rng = np.random.default_rng(d)
        y0 = mix.sample_np(64, rng) + SIGMA_MAX * rng.standard_normal((64, d))
        ref = reference_flow(mix.denoiser_np, y0, SIGMA_MAX, SIGMA_MIN)
        for sched, make in SCHEDULES.items():
            key = f"d={d} {sched}"
            for k in (2, 3):
                for (method, variable), pattern in VARIANTS.items():
                    name = pattern.format(k=k)
                    try:
                        module = load_generated(name)
                    except FileNotFoundError:
                        continue
                    row = results["errors"].setdefault(f"K={k} {method} {variable}", {})
                    for n in NFES:
                        out = module.sample(
                            mix.denoiser_torch, torch.from_numpy(y0), torch.from_numpy(make(n))
                        )
                        row[f"{key} N={n}"] = float(np.sqrt(np.mean((out.numpy() - ref) ** 2)))
            print(f"done {key}", file=sys.stderr, flush=True)
    (HERE / "defaults.json").write_text(json.dumps(results, indent=1) + "\n")
    columns = sorted(
        {c for row in results["errors"].values() for c in row},
        key=lambda c: (c.split(" N=")[0], int(c.split("N=")[1])),
    )
    lines = [
        "| variant | " + " | ".join(columns) + " | geometric mean |",
        "| --- " * (len(columns) + 2) + "|",
    ]
    for variant, row in results["errors"].items():
        values = [row.get(c) for c in columns]
        gm = float(np.exp(np.mean(np.log([v for v in values if v]))))
        lines.append(f"| {variant} | " + " | ".join(f"{v:.1e}" for v in values) + f" | {gm:.2e} |")
    text = "\n".join(lines) + "\n"
    (HERE / "defaults.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

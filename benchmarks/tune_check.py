"""How large must the pilot batch be? ``derive.schedules.tune`` with 16 and 64 pilot states, against ``default``.

On the held-out mixtures of benchmarks/schedules.py (128 evaluation points, exact denoisers), the recommended
module; the pilot batches are pure noise at sigma_max (seeds apart from the evaluation points). Prints the RMS and
median error of each schedule and the cost of each tuning (pilot and search model calls, batch).

    .venv/bin/python benchmarks/tune_check.py > benchmarks/tune_check.txt
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import schedules as bench  # noqa: E402
from _common import command_line  # noqa: E402

import derive  # noqa: E402
from derive.schedules.search import errors  # noqa: E402
from derive.verify.problems import reference_flow  # noqa: E402

NFES = (8, 10, 15, 20, 32, 50)
PILOTS = (16, 64)


def main() -> None:
    torch.set_num_threads(1)
    name = derive.recommend(nfe=20, family="ersde", dynamics="ode")
    mod = derive.load(name)
    print(f"# {command_line()}\n# module {name}; error: RMS / median at sigma_min")
    for pname, mix in bench.mixture_problems("heldout").items():
        rng = np.random.default_rng(0)
        y0 = mix.sample_np(128, rng) + bench.SIGMA_MAX * rng.standard_normal((128, mix.d))
        ref = torch.tensor(
            reference_flow(mix.denoiser_np, y0, bench.SIGMA_MAX, bench.SIGMA_MIN, rtol=1e-12, atol=1e-13)
        )
        y0 = torch.tensor(y0)
        pilots = {
            size: bench.SIGMA_MAX
            * torch.randn(size, mix.d, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
            for size in PILOTS
        }
        for n in NFES:
            row = []
            d = derive.schedules.default(mod, nfe=n, sigma_max=bench.SIGMA_MAX, sigma_min=bench.SIGMA_MIN)
            rms, med = errors(mod.sample(mix.denoiser_torch, y0, d), ref)
            row.append(f"default {rms:.2e} / {med:.2e}")
            for size, x_pilot in pilots.items():
                report: dict = {}
                cache = pathlib.Path(tempfile.gettempdir()) / f"derive_tune_check_{pname}_{size}.json"
                if n == NFES[0]:
                    cache.unlink(missing_ok=True)
                t = derive.schedules.tune(
                    mod,
                    mix.denoiser_torch,
                    x_pilot,
                    nfe=n,
                    sigma_max=bench.SIGMA_MAX,
                    sigma_min=bench.SIGMA_MIN,
                    cache=cache,
                    report=report,
                )
                rms, med = errors(mod.sample(mix.denoiser_torch, y0, t), ref)
                calls = report["pilot"]["model_calls"], report["search"]["model_calls"]
                row.append(f"tune({size}) {rms:.2e} / {med:.2e} [calls {calls[0]}+{calls[1]}]")
            print(f"{pname} N={n}: " + "  ".join(row), flush=True)


if __name__ == "__main__":
    main()

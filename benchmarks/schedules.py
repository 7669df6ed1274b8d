"""Model calls to reach an error target: tuned and derived schedules against diffusers' multistep solvers.

Problems (probability-flow ODE from sigma_max = 80 to sigma_min = 0.002, normalized coordinates, float64):

- ``mix2``: ``GaussianMixture.standard(2, seed=0)`` (exact denoiser; weights 0.3 / 0.45 / 0.25, one std 0.05);
- ``mix8``: an 8-D mixture with very unequal weights (0.6 ... 0.01) and two narrow components (exact denoiser);
- ``net``: a small MLP denoiser trained here on CPU (about a minute) on samples of a 2-D ring of 8 narrow
  Gaussians with unequal weights; its reference is a DOP853 solve (rtol 1e-12) of the same network's ODE.

The error is the RMS over points and coordinates, and the median over points of the per-point RMS, of
``y - y_ref`` at sigma_min. For every solver and schedule the errors on a grid of NFE are interpolated
(log-log, between the grid points that bracket the target) to the NFE that reaches 1e-2, 1e-3, 1e-4.

Ours: the recommended module on its model-tuned schedule (``derive.schedules.tune``: a pilot of 64 pure-noise
states at sigma_max, a seed apart from the evaluation points, the default search budget; its model calls are
recorded in the JSON), and the module recommended for data-free use on ``derive.schedules.default``.

Peers: diffusers' DPM++ 2M, DPM++ 3M, UniPC bh2 3 and DEIS 3 (classes unmodified, driven as in
benchmarks/accuracy.py) on Karras (rho = 7), log-SNR-uniform and time-uniform (VP linear beta 0.1 .. 20,
DPM-Solver's "time uniform") schedules, and on our tuned schedule (the schedule's gain apart from the solver's).

Protocol for ``derive.recommend`` (no hindsight): ``--select`` runs the candidate modules on their tuned and
data-free schedules on *training* mixtures (seeds 101, 102: 4-D and 16-D, other weights and widths) only and
writes ``schedules_select.json``; the recommendation is fixed from that file before the held-out problems above
are run (``--heldout``). The candidate with the fewest summed model calls to 1e-2, 1e-3 and 1e-4 (RMS and
median, over the training problems) wins, per schedule mode.

    .venv/bin/python benchmarks/schedules.py --select     # training problems, a few minutes
    .venv/bin/python benchmarks/schedules.py --heldout    # the table and plot (minutes)
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import accuracy as acc  # noqa: E402
from _common import HERE, command_line, machine, write_json  # noqa: E402

import derive  # noqa: E402
from derive.verify.problems import GaussianMixture, karras_sigmas, log_uniform_sigmas, reference_flow  # noqa: E402

SIGMA_MAX, SIGMA_MIN = 80.0, 0.002
TARGETS = (1e-2, 1e-3, 1e-4)
NFES = (4, 5, 6, 8, 10, 12, 15, 20, 25, 32, 40, 50, 64, 80, 100)
PEERS = ("DPM++ 2M", "DPM++ 3M", "UniPC bh2 3", "DEIS 3")
CANDIDATES = (
    "ersde_order2_phi_ode_pc",
    "ersde_order3_phi_ode",
    "ersde_order3_phi_ode_pc",
    "ersde_order3_phi_ode_am",
    "ersde_order3_phi_ode_lambda_pc",
    "ersde_order4_phi_ode",
    "ersde_order4_phi_ode_lambda_pc",
)
BETA_MIN, BETA_MAX = 0.1, 20.0
#: the pilot batch of derive.schedules.tune (pure noise at sigma_max, a seed apart from the evaluation points)
PILOT_POINTS = 64
CACHE = pathlib.Path(tempfile.gettempdir()) / "derive-schedules-benchmark"


def time_uniform_sigmas(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """Uniform in t of the VP linear-beta process (log alpha^2 = -(b0 t + (b1 - b0) t^2 / 2)), mapped to s."""

    def t_of(s):  # solve (b1 - b0)/2 t^2 + b0 t - log(1 + s^2) = 0
        a, b, c = (BETA_MAX - BETA_MIN) / 2, BETA_MIN, -math.log1p(s * s)
        return (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)

    t = np.linspace(t_of(sigma_max), t_of(sigma_min), n + 1)
    s = np.sqrt(np.expm1(BETA_MIN * t + (BETA_MAX - BETA_MIN) * t**2 / 2))
    s[0], s[-1] = sigma_max, sigma_min
    return s


STANDARD = {
    "karras": lambda n: karras_sigmas(n, SIGMA_MIN, SIGMA_MAX, 7.0),
    "logsnr": lambda n: log_uniform_sigmas(n, SIGMA_MIN, SIGMA_MAX),
    "time": lambda n: time_uniform_sigmas(n, SIGMA_MIN, SIGMA_MAX),
}


# --------------------------------------------------------------------------------------------------
# problems
# --------------------------------------------------------------------------------------------------


def random_mixture(d: int, seed: int, weights, stds, spread: float = 1.2) -> GaussianMixture:
    rng = np.random.default_rng(seed)
    return GaussianMixture(weights=weights, means=spread * rng.standard_normal((len(weights), d)), stds=stds)


def mixture_problems(kind: str) -> dict:
    if kind == "train":
        return {
            "train4": random_mixture(4, 101, [0.5, 0.3, 0.15, 0.05], [0.3, 0.08, 0.6, 0.03]),
            "train16": random_mixture(16, 102, [0.7, 0.2, 0.1], [0.15, 0.5, 0.04], spread=1.0),
        }
    return {
        "mix2": GaussianMixture.standard(2, seed=0),
        "mix8": random_mixture(8, 123, [0.6, 0.25, 0.1, 0.04, 0.01], [0.5, 0.2, 0.05, 0.1, 0.02]),
    }


class Denoiser(torch.nn.Module):
    """EDM-preconditioned MLP: D(y, s) = c_skip y + c_out F(c_in y, log(s) / 4)."""

    def __init__(self, d: int = 2, width: int = 128, sigma_data: float = 1.0):
        super().__init__()
        self.sigma_data = sigma_data
        self.net = torch.nn.Sequential(
            torch.nn.Linear(d + 1, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, d),
        )

    def forward(self, y, s):
        s = torch.as_tensor(s, dtype=y.dtype).reshape(-1, 1).expand(y.shape[0], 1)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / torch.sqrt(s**2 + sd2)
        c_in = 1 / torch.sqrt(s**2 + sd2)
        return c_skip * y + c_out * self.net(torch.cat([c_in * y, torch.log(s) / 4], dim=1))


def ring_data() -> GaussianMixture:
    angles = np.arange(8) * 2 * np.pi / 8
    weights = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.07, 0.05, 0.03])
    return GaussianMixture(weights, 1.5 * np.stack([np.cos(angles), np.sin(angles)], 1), [0.06] * 8)


def train_network(steps: int, seed: int = 0) -> tuple[Denoiser, float]:
    torch.manual_seed(seed)
    data = ring_data()
    rng = np.random.default_rng(seed)
    net = Denoiser(2, 128, sigma_data=1.1)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    start = time.perf_counter()
    for _ in range(steps):
        x0 = torch.tensor(data.sample_np(1024, rng), dtype=torch.float32)
        log_s = torch.randn(1024, 1) * 1.4 - 0.8  # EDM's log-normal noise levels
        s = torch.exp(log_s)
        y = x0 + s * torch.randn_like(x0)
        weight = (s**2 + net.sigma_data**2) / (s * net.sigma_data) ** 2
        loss = (weight * (net(y, s) - x0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net = net.double().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, time.perf_counter() - start


def network_problem(steps: int):
    net, seconds = train_network(steps)

    def den_torch(y, s):
        with torch.no_grad():
            return net(y, torch.as_tensor(s, dtype=torch.float64).reshape(-1)[:1].expand(y.shape[0]))

    def den_np(y, s):
        return den_torch(torch.tensor(y), float(s)).numpy()

    return den_torch, den_np, ring_data(), seconds


# --------------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------------


def errors(y, ref) -> dict:
    if y is None or not np.all(np.isfinite(y)):
        return {"rms": None, "median": None}
    return {"rms": acc.rms(y, ref), "median": acc.median_point(y, ref)}


def nfe_to(errs: dict, target: float):
    """The NFE (log-log interpolation) at which the error first reaches ``target``; None beyond the grid."""
    pts = sorted((n, e) for n, e in errs.items() if e is not None)
    for (n0, e0), (n1, e1) in zip(pts, pts[1:]):
        if e0 <= target:
            return float(n0)
        if e1 <= target:
            t = math.log(e0 / target) / math.log(e0 / e1)
            return float(math.exp(math.log(n0) + t * math.log(n1 / n0)))
    return None


_SCHEDULES: dict = {}


def derived(name: str, n: int) -> np.ndarray:
    if (name, n) not in _SCHEDULES:
        module = derive.load(name)
        _SCHEDULES[(name, n)] = derive.schedules.default(
            module, nfe=n, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN
        ).numpy()
    return _SCHEDULES[(name, n)]


def run_problem(
    den_torch,
    den_np,
    data,
    n_points: int,
    ours,
    peer_schedule_module,
    nfes,
    *,
    label: str,
    tuned: bool = True,
    peers: bool = True,
    seed=0,
) -> dict:
    rng = np.random.default_rng(seed)
    y0_np = data.sample_np(n_points, rng) + SIGMA_MAX * rng.standard_normal((n_points, data.d))
    t0 = time.perf_counter()
    ref = reference_flow(den_np, y0_np, SIGMA_MAX, SIGMA_MIN, rtol=1e-12, atol=1e-13)
    ref_seconds = time.perf_counter() - t0
    y0 = torch.tensor(y0_np)
    rows = {}
    # the pilot batch of the tuned schedules: starting states a user can draw (pure noise at sigma_max), not
    # the evaluation points
    x_pilot = SIGMA_MAX * torch.randn(
        PILOT_POINTS, data.d, generator=torch.Generator().manual_seed(seed + 1000), dtype=torch.float64
    )
    tuning, tuned_levels = {}, {}
    for name in ours:
        module = derive.load(name)
        rows[f"{name} derived"] = {
            n: errors(module.sample(den_torch, y0, torch.tensor(derived(name, n))).numpy(), ref) for n in nfes
        }
        print(f"  {name} derived", flush=True)
        if not tuned:
            continue
        row, costs = {}, {}
        cache = CACHE / f"{label}_{name}.json"
        cache.unlink(missing_ok=True)
        for n in nfes:
            report: dict = {}
            s = derive.schedules.tune(
                module,
                den_torch,
                x_pilot,
                nfe=n,
                sigma_max=SIGMA_MAX,
                sigma_min=SIGMA_MIN,
                cache=cache,
                report=report,
            )
            tuned_levels.setdefault(name, {})[n] = s.numpy()
            row[n] = errors(module.sample(den_torch, y0, s).numpy(), ref)
            costs[n] = {"search": report["search"], "pilot_cached": report["cached"]}
        rows[f"{name} tuned"] = row
        tuning[name] = {"pilot": report["pilot"], "per_nfe": costs}
        print(f"  {name} tuned", flush=True)
    for peer in PEERS if peers else ():
        kind, options = acc.DET_PEERS[peer]

        def ours_tuned(n):
            name = peer_schedule_module if isinstance(peer_schedule_module, str) else peer_schedule_module[n]
            return tuned_levels[name][n]

        schedules = {**STANDARD, "tuned": ours_tuned}
        for sname, make in schedules.items():
            row = {}
            for n in nfes:
                try:
                    y = acc.run_peer(kind, options, den_torch, y0, make(n)).numpy()
                except Exception as exc:  # noqa: BLE001 - reported in the table as missing
                    print(f"  {peer} {sname} N={n}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    y = None
                row[n] = errors(y, ref)
            rows[f"{peer} {sname}"] = row
        print(f"  {peer}", flush=True)
    reach = {
        label: {
            metric: {str(t): nfe_to({n: e[metric] for n, e in row.items()}, t) for t in TARGETS}
            for metric in ("rms", "median")
        }
        for label, row in rows.items()
    }
    return {
        "errors": {label: {str(n): e for n, e in row.items()} for label, row in rows.items()},
        "reach": reach,
        "reference_seconds": ref_seconds,
        "tuning": tuning,
    }


def _select_one(pname: str, points: int) -> dict:
    torch.set_num_threads(1)
    mix = mixture_problems("train")[pname]
    print(pname, flush=True)
    return run_problem(
        mix.denoiser_torch,
        mix.denoiser_np,
        mix,
        points,
        CANDIDATES,
        CANDIDATES[0],
        NFES,
        label=pname,
        peers=False,
    )


def select(args) -> dict:
    names = list(mixture_problems("train"))
    if args.jobs > 1:  # one process per training problem (each single-threaded)
        import concurrent.futures
        import multiprocessing

        context = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            results = list(pool.map(_select_one, names, [args.points] * len(names)))
    else:
        results = [_select_one(name, args.points) for name in names]
    out = dict(zip(names, results))
    return {"problems": out, **selection(out)}


def selection(problems: dict) -> dict:
    """Per schedule mode, the summed model calls to every target (a target missed within the grid counts 1.5x
    the largest NFE) and the candidate with the fewest."""
    out = {}
    for mode, row in (("tune", "tuned"), ("default", "derived")):
        score = {}
        for name in CANDIDATES:
            total = 0.0
            for res in problems.values():
                for metric in ("rms", "median"):
                    for t in map(str, TARGETS):
                        v = res["reach"][f"{name} {row}"][metric][t]
                        total += max(NFES) * 1.5 if v is None else v
            score[name] = total
        per_target = {}
        for t in map(str, TARGETS):
            cells = {
                name: [
                    res["reach"][f"{name} {row}"][metric][t]
                    for res in problems.values()
                    for metric in ("rms", "median")
                ]
                for name in CANDIDATES
            }
            part = {
                name: sum(max(NFES) * 1.5 if v is None else v for v in values)
                for name, values in cells.items()
            }
            best = min(part, key=part.get)
            reached = [v for v in cells[best] if v is not None]
            per_target[t] = {
                "score": part,
                "chosen": best,
                "median_nfe": float(np.median(reached)) if reached else None,
            }
        chosen = min(score, key=score.get)
        out[mode] = {
            "score": score,
            "chosen": chosen,
            "per_target": per_target,
            "ranges": nfe_ranges(chosen, per_target),
        }
    return out


#: a target's own winner replaces the overall one for its NFE range only if it saves this share of the calls
RANGE_GAIN = 0.10


def nfe_ranges(chosen: str, per_target: dict) -> list:
    """[(smallest nfe, module)] as derive.recommend takes it: the overall winner, except in the NFE range of a
    target whose own winner needs at least RANGE_GAIN fewer summed calls there. The range of a target runs from
    the geometric midpoint of its median NFE and the previous target's to the next such midpoint."""
    targets = [t for t in map(str, TARGETS) if per_target[t]["median_nfe"] is not None]
    picks = []
    for t in targets:
        entry = per_target[t]
        own = entry["chosen"]
        better = entry["score"][own] <= (1 - RANGE_GAIN) * entry["score"][chosen]
        picks.append((t, own if better else chosen))
    ranges = []
    for i, (t, name) in enumerate(picks):
        start = 1
        if i:
            previous = per_target[picks[i - 1][0]]["median_nfe"]
            start = int(math.ceil(math.sqrt(previous * per_target[t]["median_nfe"])))
        if not ranges or ranges[-1][1] != name:
            ranges.append((start, name))
    return ranges


def recommended_rows(res: dict, chosen: dict, free: dict) -> None:
    """Add the rows "recommended tuned" / "recommended derived": per NFE the module derive.recommend names
    for that budget (one module per mode unless the selection found NFE ranges)."""
    for label, names, kind in (
        ("recommended tuned", chosen, "tuned"),
        ("recommended derived", free, "derived"),
    ):
        row = {str(n): res["errors"][f"{names[n]} {kind}"][str(n)] for n in NFES}
        res["errors"][label] = row
        res["reach"][label] = {
            metric: {str(t): nfe_to({int(n): e[metric] for n, e in row.items()}, t) for t in TARGETS}
            for metric in ("rms", "median")
        }


def heldout(args, chosen: dict, free: dict) -> dict:
    out = {}
    ours = sorted({*chosen.values(), *free.values(), *args.also})
    for pname, mix in mixture_problems("heldout").items():
        print(pname, flush=True)
        out[pname] = run_problem(
            mix.denoiser_torch, mix.denoiser_np, mix, args.points, ours, chosen, NFES, label=pname
        )
        recommended_rows(out[pname], chosen, free)
    den_torch, den_np, data, seconds = network_problem(args.train_steps)
    print(f"net trained in {seconds:.1f} s", flush=True)
    out["net"] = run_problem(den_torch, den_np, data, args.points, ours, chosen, NFES, label="net")
    recommended_rows(out["net"], chosen, free)
    out["net"]["training_seconds"] = seconds
    return out


def recommendations() -> tuple[dict, dict]:
    """Per NFE of the grid: derive.recommend's module for tuned and for data-free schedules."""
    return (
        {n: derive.recommend(nfe=n, family="ersde", dynamics="ode") for n in NFES},
        {n: derive.recommend(nfe=n, family="ersde", dynamics="ode", schedule="default") for n in NFES},
    )


def ratio_table(results: dict) -> tuple[list[str], list[dict]]:
    lines = []
    summary = []
    header = (
        "| problem | metric | target | ours, tuned (NFE) | best peer, standard schedule (NFE) | ratio | "
        "ours, data-free (NFE) | best peer on our tuned schedule (NFE) |"
    )
    lines += [header, "|" + "---|" * 8]
    for pname, res in results.items():
        for metric in ("rms", "median"):
            for t in TARGETS:
                key = str(t)
                mine = res["reach"]["recommended tuned"][metric][key]
                free_n = res["reach"]["recommended derived"][metric][key]
                std = [
                    (res["reach"][f"{p} {s}"][metric][key], f"{p} {s}")
                    for p in PEERS
                    for s in STANDARD
                    if res["reach"][f"{p} {s}"][metric][key] is not None
                ]
                ours_sched = [
                    (res["reach"][f"{p} tuned"][metric][key], f"{p}")
                    for p in PEERS
                    if res["reach"][f"{p} tuned"][metric][key] is not None
                ]
                best = min(std) if std else (None, "none within the grid")
                best_o = min(ours_sched) if ours_sched else (None, "none")
                ratio = None if mine is None or best[0] is None else mine / best[0]
                summary.append(
                    {
                        "problem": pname,
                        "metric": metric,
                        "target": t,
                        "ours": mine,
                        "ours_data_free": free_n,
                        "peer": best[0],
                        "peer_name": best[1],
                        "ratio": ratio,
                    }
                )
                lines.append(
                    f"| {pname} | {metric} | {t:g} | {fmt_n(mine)} | {fmt_n(best[0])} ({best[1]}) | "
                    f"{'-' if ratio is None else f'{ratio:.2f}'} | {fmt_n(free_n)} | {fmt_n(best_o[0])} ({best_o[1]}) |"
                )
    return lines, summary


def fmt_n(v) -> str:
    return "> grid" if v is None else f"{v:.1f}"


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (pname, res) in zip(axes[0], results.items()):
        for label, row in res["errors"].items():
            if label.endswith("time"):
                continue
            ns = [int(n) for n, e in row.items() if e["rms"] is not None]
            es = [row[str(n)]["rms"] for n in ns]
            style = dict(lw=0.8, alpha=0.7)
            if label == "recommended tuned":
                style = dict(lw=2.5, color="k")
            elif label == "recommended derived":
                style = dict(lw=1.8, color="k", ls=":")
            elif "derived" in label or "tuned" in label:
                style["ls"] = "--"
            ax.loglog(ns, es, label=label, **style)
        for t in TARGETS:
            ax.axhline(t, color="grey", lw=0.5)
        ax.set_title(pname)
        ax.set_xlabel("model calls")
        ax.set_ylabel("RMS error at sigma_min")
    axes[0][-1].legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--select", action="store_true", help="the training problems: choose the recommendation"
    )
    parser.add_argument(
        "--heldout", action="store_true", help="the held-out problems with the recommendation"
    )
    parser.add_argument(
        "--rescore", action="store_true", help="recompute the selection from schedules_select.json (no runs)"
    )
    parser.add_argument("--points", type=int, default=128)
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes for --select (one per training problem)"
    )
    parser.add_argument("--train-steps", type=int, default=6000)
    parser.add_argument(
        "--also", nargs="*", default=[], help="further modules to run on their derived schedule"
    )
    parser.add_argument(
        "--extra-dim",
        type=int,
        default=None,
        help="also a random mixture of this dimension (seed 777), outside the table: schedules_extra.json",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.rescore:  # the selection again from the stored training runs (no new runs)
        stored = json.loads((HERE / "schedules_select.json").read_text())
        res = {"problems": stored["problems"], **selection(stored["problems"])}
        write_json(HERE / "schedules_select.json", {**stored, **res})
    if args.select:
        res = select(args)
        write_json(HERE / "schedules_select.json", {"command": command_line(), "machine": machine(), **res})
    if args.select or args.rescore:
        for mode in ("tune", "default"):
            print(
                mode,
                "score",
                res[mode]["score"],
                "chosen",
                res[mode]["chosen"],
                "ranges",
                res[mode]["ranges"],
            )
    if args.extra_dim:
        extra(args)
    if args.heldout:
        chosen, free = recommendations()
        res = heldout(args, chosen, free)
        lines, summary = ratio_table(res)
        write_json(
            HERE / "schedules.json",
            {
                "command": command_line(),
                "machine": machine(),
                "chosen": chosen,
                "chosen_data_free": free,
                "results": res,
                "summary": summary,
            },
        )
        (HERE / "schedules_table.md").write_text("\n".join(lines) + "\n")
        plot(res, HERE / "schedules.png")
        print("\n".join(lines))


def extra(args) -> None:
    """One more held-out mixture of a chosen dimension (five components, unequal weights, narrow ones)."""
    mix = random_mixture(
        args.extra_dim, 777, [0.5, 0.3, 0.15, 0.04, 0.01], [0.4, 0.1, 0.03, 0.2, 0.05], spread=1.0
    )
    chosen, free = recommendations()
    name = f"mix{args.extra_dim}"
    res = run_problem(
        mix.denoiser_torch,
        mix.denoiser_np,
        mix,
        args.points,
        sorted({*chosen.values(), *free.values()}),
        chosen,
        NFES,
        label=name,
    )
    recommended_rows(res, chosen, free)
    lines, summary = ratio_table({name: res})
    write_json(
        HERE / "schedules_extra.json",
        {"command": command_line(), "machine": machine(), "results": {name: res}, "summary": summary},
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Per-step overhead of the sampling loop with a zero-cost model (CPU, float32).

Every sampler runs its whole loop with a model that returns a fixed tensor, so the time per step is the
sampler's own cost: our generated modules (``sample()``, coefficient table included), diffusers' schedulers
driven in the standard loop (``set_timesteps`` included), and the floor, three fused multiply-adds over the
state per step (``torch.add(x, y, alpha=c)``). Peers are interleaved within each repeat (in a shuffled order)
and ratios are taken within a repeat, then the median over repeats is reported: the machine may be shared.

It also measures ``DeriveScheduler`` (derive's diffusers scheduler) driven in diffusers' standard loop against
the same module's own ``sample()`` and against diffusers' DPM-Solver++(2M), per step, ``set_timesteps`` /
the coefficient table included (targets: within 1.5x of the module's loop, at most 0.3x DPM++2M), and checks
whether one step of the loop compiles with ``torch.compile(fullgraph=True)``.

    .venv/bin/python benchmarks/overhead.py            # full run (several minutes)
    .venv/bin/python benchmarks/overhead.py --quick    # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import gc
import pathlib
import random
import sys
import time
import warnings

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import (
    HERE,
    command_line,
    fmt,
    load_generated,
    machine,
    machine_line,
    markdown_table,
    median,
    write_json,
)

from derive.verify.problems import karras_sigmas

OURS = {1: "ersde_order1_phi_ode", 2: "ersde_order2_phi_ode", 3: "ersde_order3_phi_ode"}
#: (state shape, steps, repeats, inner): each repeat runs every sampler ``inner`` times back to back and keeps the
#: fastest (timeit's rule against preemption on a shared machine); the table reports the median over repeats
FULL_CASES = [((1, 4, 64, 64), 20, 31, 5), ((1, 4, 64, 64), 50, 21, 3), ((16, 3, 256, 256), 20, 9, 1)]
QUICK_CASES = [((1, 2, 8, 8), 5, 3, 1)]
#: (state shape, steps, repeats, inner) of the scheduler comparison
SCHEDULER_CASES = [((1, 4, 64, 64), 20, 21, 3), ((4, 4, 128, 128), 20, 15, 2)]
QUICK_SCHEDULER_CASES = [((1, 2, 8, 8), 5, 3, 1)]


# --------------------------------------------------------------------------------------------------
# peers
# --------------------------------------------------------------------------------------------------


def diffusers_schedulers() -> dict:
    """The diffusers peers, default configs except ``prediction_type="sample"`` (a data prediction, as ours)."""
    from diffusers import (
        DDIMScheduler,
        DEISMultistepScheduler,
        DPMSolverMultistepScheduler,
        UniPCMultistepScheduler,
    )

    return {
        "diffusers DDIM": DDIMScheduler(prediction_type="sample"),
        "diffusers DPMSolver++ 2M": DPMSolverMultistepScheduler(
            prediction_type="sample", algorithm_type="dpmsolver++", solver_order=2
        ),
        "diffusers DPMSolver++ 3M": DPMSolverMultistepScheduler(
            prediction_type="sample", algorithm_type="dpmsolver++", solver_order=3
        ),
        "diffusers UniPC (bh2, order 2)": UniPCMultistepScheduler(prediction_type="sample"),
        "diffusers DEIS (order 2)": DEISMultistepScheduler(prediction_type="sample"),
    }


def run_diffusers(scheduler, model, x, n_steps):
    start = time.perf_counter()
    scheduler.set_timesteps(n_steps)
    setup = time.perf_counter() - start
    for t in scheduler.timesteps:
        model_out = model(x, t)
        x = scheduler.step(model_out, t, x).prev_sample
    return time.perf_counter() - start, setup, x


def run_ours(module, model, x, sigmas):
    start = time.perf_counter()
    out = module.sample(model, x, sigmas)
    total = time.perf_counter() - start
    # the table alone, timed right after (sample() computes it internally, before its loop)
    start = time.perf_counter()
    module.coefficient_table(sigmas)
    setup = time.perf_counter() - start
    return total, setup, out


def run_floor(model, x, sigma_batches, coefficients):
    """The floor: per step one model call and three fused multiply-adds over the state."""
    start = time.perf_counter()
    h1 = h2 = None
    for i, (a, b, c) in enumerate(coefficients):
        m = model(x, sigma_batches[i])
        p1 = m if h1 is None else h1
        p2 = p1 if h2 is None else h2
        x = torch.add(x, m, alpha=a)
        x = torch.add(x, p1, alpha=b)
        x = torch.add(x, p2, alpha=c)
        h1, h2 = m, p1
    return time.perf_counter() - start, 0.0, x


# --------------------------------------------------------------------------------------------------
# torch.compile feasibility
# --------------------------------------------------------------------------------------------------


def compile_check(shape, n_steps: int, repeats: int) -> dict:
    """Can one step of the loop be compiled with fullgraph=True? Recompilations, graph breaks, timing."""
    import torch._dynamo as dynamo

    module = load_generated(OURS[3])
    sigmas = torch.tensor(karras_sigmas(n_steps, 0.002, 80.0))
    ratios, _, weights, _ = module.coefficient_table(sigmas)
    result: dict = {"shape": list(shape), "steps": n_steps}

    def step(x, p0, p1, p2, r, w0, w1, w2):
        return x * r + p0 * w0 + p1 * w1 + p2 * w2

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    p = [torch.randn(shape, generator=gen) for _ in range(3)]
    full_steps = [i for i in range(n_steps) if len(weights[i]) == 3]

    # 1. graph breaks (explain) and recompilations, with the table's values as Python floats and as 0-d tensors
    dynamo.reset()
    explanation = dynamo.explain(step)(x, *p, ratios[full_steps[0]], *weights[full_steps[0]])
    result["explain_graph_count"] = explanation.graph_count
    result["explain_graph_break_count"] = explanation.graph_break_count
    result["explain_break_reasons"] = [str(reason.reason) for reason in explanation.break_reasons]

    for kind in ("python floats", "0-d float64 tensors"):
        dynamo.reset()
        compiled_graphs = []

        def counting_backend(gm, example_inputs, graphs=compiled_graphs):
            graphs.append(len(example_inputs))
            return gm.forward

        fn = torch.compile(step, backend=counting_backend, fullgraph=True)
        error = None
        try:
            for i in full_steps:
                values = [ratios[i], *weights[i]]
                if kind != "python floats":
                    values = [torch.tensor(v, dtype=torch.float64) for v in values]
                fn(x, *p, *values)
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        result[f"graphs_compiled_{kind}"] = len(compiled_graphs)
        result[f"error_{kind}"] = error
        result[f"distinct_steps_{kind}"] = len(full_steps)

    # 2. the whole generated loop and the whole sample() call (informational): where does dynamo break?
    def model(y, s):
        return p[0]

    table = module.coefficient_table(sigmas)
    known = {
        "predict": lambda y, i: (model(y, i), model(y, i)),
        "x": x,
        "n_steps": n_steps,
        "ratios": table[0],
        "weights": table[2],
        "stds": table[1],
        "finals": table[3],
        "noise": None,
        "callback": None,
        "history": None,
        "start": 0,
        "levels": module._float64(sigmas).tolist(),
    }
    for label, fn, build in (
        ("whole_loop", module._run, lambda: _bind(module._run, known)),
        ("whole_sample", module.sample, lambda: ((model, x, sigmas), {})),
    ):
        dynamo.reset()
        try:
            call_args, call_kwargs = build()
            explained = dynamo.explain(fn)(*call_args, **call_kwargs)
            result[f"{label}_graph_count"] = explained.graph_count
            result[f"{label}_graph_break_count"] = explained.graph_break_count
            result[f"{label}_break_reasons"] = sorted(
                {str(r.reason).splitlines()[0][:160] for r in explained.break_reasons}
            )
        except Exception as exc:  # noqa: BLE001
            result[f"{label}_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]

    # 3. inductor: compile time and per-step time vs eager, 0-d tensor coefficients (no recompilation)
    dynamo.reset()
    fn = torch.compile(step, fullgraph=True)
    values = [[torch.tensor(v, dtype=torch.float64) for v in [ratios[i], *weights[i]]] for i in full_steps]
    try:
        start = time.perf_counter()
        fn(x, *p, *values[0])
        result["inductor_first_call_s"] = time.perf_counter() - start
        before = _recompiles()
        eager, compiled, floor = [], [], []
        fvalues = [[ratios[i], *weights[i]] for i in full_steps]
        for _ in range(repeats):
            order = ["eager", "compiled", "floor"]
            random.shuffle(order)
            for which in order:
                start = time.perf_counter()
                for v, fv in zip(values, fvalues):
                    if which == "compiled":
                        fn(x, *p, *v)
                    elif which == "eager":
                        step(x, *p, *fv)
                    else:
                        y = torch.add(x, p[0], alpha=fv[1])
                        y = torch.add(y, p[1], alpha=fv[2])
                        y = torch.add(y, p[2], alpha=fv[3])
                elapsed = (time.perf_counter() - start) / len(values)
                {"eager": eager, "compiled": compiled, "floor": floor}[which].append(elapsed)
        result["recompiles_during_timing"] = _recompiles() - before
        result["step_eager_s"] = median(eager)
        result["step_compiled_s"] = median(compiled)
        result["step_floor_s"] = median(floor)
        result["compiled_vs_eager"] = median([c / e for c, e in zip(compiled, eager)])
        result["compiled_vs_floor"] = median([c / f for c, f in zip(compiled, floor)])
        out_c = fn(x, *p, *values[-1])
        out_e = step(x, *p, *fvalues[-1])
        result["compiled_max_abs_diff"] = float((out_c - out_e).abs().max())
        result["inductor_ok"] = True
    except Exception as exc:  # noqa: BLE001
        result["inductor_ok"] = False
        result["inductor_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    dynamo.reset()
    return result


def _bind(fn, known: dict):
    """Positional and keyword arguments for ``fn`` by parameter name (the private loop's signature may change)."""
    import inspect

    args, kwargs = [], {}
    for name, param in inspect.signature(fn).parameters.items():
        if name in known:
            if param.kind is inspect.Parameter.KEYWORD_ONLY:
                kwargs[name] = known[name]
            else:
                args.append(known[name])
        elif param.default is inspect.Parameter.empty:
            raise TypeError(f"unknown required parameter {name!r} of {fn.__name__}")
    return tuple(args), kwargs


def _recompiles() -> int:
    from torch._dynamo.utils import counters

    return int(sum(counters["stats"].values())) if "stats" in counters else 0


# --------------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------------


def bench_case(shape, n_steps: int, repeats: int, inner: int = 1, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=gen) * 80.0
    fixed = torch.randn(shape, generator=gen)

    def model(x, sigma):
        return fixed

    sigmas = torch.tensor(karras_sigmas(n_steps, 0.002, 80.0), dtype=torch.float64)
    sigma_batches = [sigmas[i] * x0.new_ones([shape[0]]) for i in range(n_steps)]
    floor_coefficients = [(0.5, 0.1, 0.05)] * n_steps
    modules = {k: load_generated(name) for k, name in OURS.items()}
    schedulers = diffusers_schedulers()

    runners = {}
    for k, module in modules.items():
        runners[f"ours order {k} ({OURS[k]})"] = lambda m=module: run_ours(m, model, x0, sigmas)
    for name, scheduler in schedulers.items():
        runners[name] = lambda s=scheduler: run_diffusers(s, model, x0, n_steps)
    runners["floor (3 fused multiply-adds)"] = lambda: run_floor(model, x0, sigma_batches, floor_coefficients)

    for run in runners.values():  # warm-up (allocator, lazy imports)
        run()
    times = {name: [] for name in runners}
    setups = {name: [] for name in runners}
    rng = random.Random(seed)
    gc_was_enabled = gc.isenabled()
    try:
        for _ in range(repeats):
            order = list(runners)
            rng.shuffle(order)
            gc.collect()
            gc.disable()
            for name in order:
                total, setup = min(runners[name]()[:2] for _ in range(inner))
                times[name].append(total / n_steps)
                setups[name].append(setup)
            gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()

    floor_name = "floor (3 fused multiply-adds)"
    dpm_name = "diffusers DPMSolver++ 2M"
    rows = {}
    for name in runners:
        per = times[name]
        floor = times[floor_name]
        dpm = times[dpm_name]
        rows[name] = {
            "step_s_median": median(per),
            "step_s_min": min(per),
            "setup_s_median": median(setups[name]),
            "loop_step_s_median": median([t - s / n_steps for t, s in zip(per, setups[name])]),
            "overhead_s_median": median([t - f for t, f in zip(per, floor)]),
            "ratio_vs_floor": median([t / f for t, f in zip(per, floor)]),
            "ratio_vs_dpm2m": median([t / d for t, d in zip(per, dpm)]),
            "overhead_ratio_vs_dpm2m": median([(t - f) / (d - f) for t, f, d in zip(per, floor, dpm)]),
            "raw_step_s": per,
            "raw_setup_s": setups[name],
        }
    return {"shape": list(shape), "steps": n_steps, "repeats": repeats, "inner": inner, "results": rows}


def scheduler_case(shape, n_steps: int, repeats: int, inner: int = 1, seed: int = 0) -> dict:
    """DeriveScheduler in diffusers' loop vs the module's own sample() vs diffusers' DPM++2M, per step.

    A zero-cost model returns a fixed tensor. The scheduler and DPM++2M use their default multistep grid
    (``DeriveScheduler(timestep_grid="multistep", timestep_spacing="linspace")``), ``prediction_type="sample"``
    (a data prediction, as the module's denoiser) and ``return_dict=False`` (what the SD / SDXL / SD3 / Flux
    pipelines call); rows with ``return_dict=True`` and with an epsilon model show those costs. The module's
    sample() runs on the scheduler's own noise levels.
    """
    from diffusers import DPMSolverMultistepScheduler

    from derive.integrations.diffusers import DeriveScheduler

    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=gen)
    fixed = torch.randn(shape, generator=gen)

    def model(x, sigma):
        return fixed

    def drive(scheduler, return_dict=False):
        start = time.perf_counter()
        scheduler.set_timesteps(n_steps)
        x = x0
        for t in scheduler.timesteps:
            out = scheduler.step(fixed, t, x, return_dict=return_dict)
            x = out.prev_sample if return_dict else out[0]
        return time.perf_counter() - start

    runners = {}
    for k, name in OURS.items():
        module = load_generated(name)
        grid = {"timestep_grid": "multistep", "timestep_spacing": "linspace"}
        sched = DeriveScheduler(module=module, prediction_type="sample", **grid)
        eps = DeriveScheduler(module=module, prediction_type="epsilon", **grid)
        sched.set_timesteps(n_steps)
        sigmas = torch.tensor([g / a for g, a in zip(sched.sigma_t, sched.alpha_t)], dtype=torch.float64)

        def own(m=module, s=sigmas):
            start = time.perf_counter()
            m.sample(model, x0, s)
            return time.perf_counter() - start

        runners[f"order {k}: module sample()"] = own
        runners[f"order {k}: DeriveScheduler"] = lambda s=sched: drive(s)
        runners[f"order {k}: DeriveScheduler, return_dict=True"] = lambda s=sched: drive(s, True)
        runners[f"order {k}: DeriveScheduler, epsilon model"] = lambda s=eps: drive(s)
    dpm = DPMSolverMultistepScheduler(prediction_type="sample", algorithm_type="dpmsolver++", solver_order=2)
    runners["diffusers DPMSolver++ 2M"] = lambda: drive(dpm)

    for run in runners.values():  # warm-up
        run()
    times = {name: [] for name in runners}
    rng = random.Random(seed)
    for _ in range(repeats):
        order = list(runners)
        rng.shuffle(order)
        gc.collect()
        gc.disable()
        try:
            for name in order:
                times[name].append(min(runners[name]() for _ in range(inner)) / n_steps)
        finally:
            gc.enable()
    dpm_times = times["diffusers DPMSolver++ 2M"]
    rows = {}
    for name, per in times.items():
        k = name.split(":")[0]
        own_times = times.get(f"{k}: module sample()", per)
        rows[name] = {
            "step_s_median": median(per),
            "ratio_vs_module": median([t / o for t, o in zip(per, own_times)]),
            "ratio_vs_dpm2m": median([t / d for t, d in zip(per, dpm_times)]),
            "raw_step_s": per,
        }
    return {"shape": list(shape), "steps": n_steps, "repeats": repeats, "inner": inner, "results": rows}


def render_scheduler(cases) -> list[str]:
    parts = [
        "## DeriveScheduler in diffusers' loop",
        "",
        (
            "Per step, `set_timesteps` (scheduler) or the coefficient table (module) included, a zero-cost model, "
            "float32. `time / module` is against the same module's own `sample()`, `time / DPM++2M` against "
            "diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2) in the same loop; medians of per-repeat "
            "ratios, peers interleaved in a shuffled order. Targets: DeriveScheduler (return_dict=False, data "
            "prediction) within 1.5x of the module and at most 0.3x DPM++2M."
        ),
        "",
    ]
    for case in cases:
        shape = "x".join(str(v) for v in case["shape"])
        parts.append(
            f"**State {shape}, {case['steps']} steps, median of {case['repeats']} interleaved repeats"
            + (f" (each the best of {case['inner']} back-to-back runs)" if case.get("inner", 1) > 1 else "")
            + "**"
        )
        parts.append("")
        rows = [
            [
                name,
                fmt(r["step_s_median"] * 1e6, ".1f"),
                fmt(r["ratio_vs_module"], ".2f"),
                fmt(r["ratio_vs_dpm2m"], ".2f"),
            ]
            for name, r in case["results"].items()
        ]
        parts.append(markdown_table(["sampler", "time/step (us)", "time / module", "time / DPM++2M"], rows))
        parts.append("")
    return parts


def render(payload: dict) -> str:
    parts = [
        f"Machine: {machine_line(payload['machine'])}",
        f"Command: `{payload['command']}`",
        "",
        (
            "time/step = the whole call (setup included) / steps; setup = `coefficient_table` (ours, timed in a separate "
            "call) or `set_timesteps` (diffusers); loop/step = time/step - setup/steps; overhead = time/step - floor's "
            "time/step. Ratios are medians of per-repeat ratios (peers interleaved in a shuffled order in each repeat)."
        ),
        "",
    ]
    for case in payload["cases"]:
        shape = "x".join(str(v) for v in case["shape"])
        parts.append(
            f"**State {shape}, float32, {case['steps']} steps, median of {case['repeats']} interleaved repeats"
            + (f" (each the best of {case['inner']} back-to-back runs)" if case.get("inner", 1) > 1 else "")
            + "**"
        )
        parts.append("")
        header = [
            "sampler",
            "time/step (us)",
            "setup (us)",
            "loop/step (us)",
            "overhead/step (us)",
            "time / floor",
            "time / DPM++2M",
            "overhead / DPM++2M overhead",
        ]
        rows = []
        for name, r in case["results"].items():
            rows.append(
                [
                    name,
                    fmt(r["step_s_median"] * 1e6, ".1f"),
                    fmt(r["setup_s_median"] * 1e6, ".0f"),
                    fmt(r["loop_step_s_median"] * 1e6, ".1f"),
                    fmt(r["overhead_s_median"] * 1e6, ".1f"),
                    fmt(r["ratio_vs_floor"], ".2f"),
                    fmt(r["ratio_vs_dpm2m"], ".2f"),
                    fmt(r["overhead_ratio_vs_dpm2m"], ".2f"),
                ]
            )
        parts.append(markdown_table(header, rows))
        parts.append("")
    if payload.get("scheduler"):
        parts += render_scheduler(payload["scheduler"])
    comp = payload.get("compile")
    if comp:
        parts.append(
            "**torch.compile(fullgraph=True) of one order-3 step** "
            f"(state {'x'.join(map(str, comp['shape']))}, {comp['steps']} steps)"
        )
        parts.append("")
        rows = [
            ["graph breaks (dynamo.explain)", comp.get("explain_graph_break_count")],
            [
                "graphs compiled over the run, coefficients as Python floats",
                f"{comp.get('graphs_compiled_python floats')} for {comp.get('distinct_steps_python floats')} steps"
                + (f" (error: {comp['error_python floats']})" if comp.get("error_python floats") else ""),
            ],
            [
                "graphs compiled over the run, coefficients as 0-d tensors",
                f"{comp.get('graphs_compiled_0-d float64 tensors')} for {comp.get('distinct_steps_0-d float64 tensors')} steps"
                + (
                    f" (error: {comp['error_0-d float64 tensors']})"
                    if comp.get("error_0-d float64 tensors")
                    else ""
                ),
            ],
            *[
                [
                    f"{what}: graphs / breaks",
                    f"{comp.get(f'{key}_graph_count')} / {comp.get(f'{key}_graph_break_count')}"
                    + (
                        f" ({'; '.join(comp.get(f'{key}_break_reasons', []))})"
                        if comp.get(f"{key}_break_reasons")
                        else ""
                    )
                    + (f" (error: {comp[f'{key}_error']})" if comp.get(f"{key}_error") else ""),
                ]
                for key, what in (
                    ("whole_loop", "whole generated loop (`_run`)"),
                    ("whole_sample", "whole `sample()` call"),
                )
            ],
        ]
        if comp.get("inductor_ok"):
            rows += [
                ["inductor: first call (compile) s", fmt(comp["inductor_first_call_s"], ".1f")],
                [
                    "step eager / compiled / floor (us)",
                    f"{comp['step_eager_s'] * 1e6:.0f} / {comp['step_compiled_s'] * 1e6:.0f} / {comp['step_floor_s'] * 1e6:.0f}",
                ],
                [
                    "compiled / eager, compiled / floor",
                    f"{comp['compiled_vs_eager']:.2f}, {comp['compiled_vs_floor']:.2f}",
                ],
                ["recompilations while timing", comp.get("recompiles_during_timing")],
                ["max abs diff compiled vs eager", fmt(comp.get("compiled_max_abs_diff"), ".1e")],
            ]
        else:
            rows.append(["inductor", f"failed: {comp.get('inductor_error')}"])
        parts.append(markdown_table(["check", "result"], rows))
    return "\n".join(parts)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (seconds)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="override the repeats of every case")
    parser.add_argument(
        "--compile",
        dest="compile_check",
        action="store_true",
        default=None,
        help="run the torch.compile check (default: on, off with --quick)",
    )
    parser.add_argument("--no-compile", dest="compile_check", action="store_false")
    parser.add_argument("--json", type=pathlib.Path, default=HERE / "overhead.json", help="raw numbers")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    cases = QUICK_CASES if args.quick else FULL_CASES
    do_compile = (not args.quick) if args.compile_check is None else args.compile_check

    payload = {"benchmark": "overhead", "command": command_line(), "quick": args.quick, "machine": machine()}
    payload["cases"] = []
    for shape, n_steps, repeats, inner in cases:
        payload["cases"].append(bench_case(shape, n_steps, args.repeats or repeats, inner))
        print(f"done {shape} x {n_steps} steps", file=sys.stderr, flush=True)
    payload["scheduler"] = []
    for shape, n_steps, repeats, inner in QUICK_SCHEDULER_CASES if args.quick else SCHEDULER_CASES:
        payload["scheduler"].append(scheduler_case(shape, n_steps, args.repeats or repeats, inner))
        print(f"done scheduler {shape} x {n_steps} steps", file=sys.stderr, flush=True)
    if do_compile:
        shape = (1, 2, 8, 8) if args.quick else (16, 3, 256, 256)
        payload["compile"] = compile_check(shape, 20, 3 if args.quick else 7)
    payload["load_average_at_end"] = list(__import__("os").getloadavg())
    write_json(args.json, payload)
    text = render(payload)
    args.json.with_suffix(".md").write_text(text + "\n")
    print(text)
    return payload


if __name__ == "__main__":
    main()

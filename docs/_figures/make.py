"""Draw the figures of the documentation site into docs/img/ (SVG, byte-identical on every run and machine).

    python docs/_figures/make.py            # all figures
    python docs/_figures/make.py orders     # one of: coefficients, rules, orders, claims, benchmarks

Every number is computed here from the derivation, the checked-in modules and mpmath references (nothing is
typed in): the float64 coefficients of a module against an independent 30-digit quadrature, the evaluation
plan the derivation chose, measured convergence orders (derive's verification harness on Gaussian data, exact
references) and the measured claims of the published samplers. The benchmark plots are measured by
benchmarks/ and copied. SVG output has a fixed hash salt and no date, so the bytes depend on the data alone.
"""

from __future__ import annotations

import math
import pathlib
import shutil
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
IMG = ROOT / "docs" / "img"
plt.rcParams.update({"svg.hashsalt": "derive-docs", "svg.fonttype": "none", "font.size": 8})


def _save(fig, name: str) -> pathlib.Path:
    IMG.mkdir(parents=True, exist_ok=True)
    path = IMG / name
    fig.tight_layout()
    fig.savefig(
        path,
        format="svg",
        bbox_inches="tight",
        metadata={"Date": None, "Creator": "derive docs/_figures/make.py"},
    )
    plt.close(fig)
    print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return path


def _geometric(first: float, last: float, count: int) -> list[float]:
    return [first * (last / first) ** (i / (count - 1)) for i in range(count)]


def coefficients(name: str = "ersde_order3") -> None:
    """|c_n| and the noise variance of one module against t = h/sigma, and their float64 relative error."""
    import torch

    import derive
    from derive.coefficients import _mp_quad_weight, mp_noise_variance
    from derive.symbolic.ersde import derive_step
    from derive.symbolic.expression import parse_expression
    from derive.verify.harness import manifest

    module = derive.load(name)
    entry = manifest()[name]
    step = derive_step(parse_expression(entry["phi"]))
    sigma = 1.0
    ts = _geometric(1e-9, 0.999, 61)
    a = torch.tensor([sigma] * len(ts), dtype=torch.float64)
    b = torch.tensor([sigma * (1 - t) for t in ts], dtype=torch.float64)
    weights = [w.tolist() for w in module.taylor_weights(a, b)]
    variance = module.noise_variance(a, b).tolist()
    series = {f"c_{n}": values for n, values in enumerate(weights)}
    series["noise variance"] = variance
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.2), sharex=True)
    for label, values in series.items():
        refs = []
        for t, value in zip(ts, values):
            nxt = sigma * (1 - t)
            if label == "noise variance":
                exact = float(mp_noise_variance(step, sigma, nxt, module.FORM))
            else:
                exact = float(_mp_quad_weight(step, int(label[2:]), sigma, nxt, module.FORM))
            refs.append((abs(exact), abs(value - exact) / abs(exact) if exact else float("nan")))
        (line,) = top.loglog(ts, [r[0] for r in refs], label=label)
        bottom.loglog(
            ts, [max(r[1], 1e-18) for r in refs], ".", markersize=3, color=line.get_color(), label=label
        )
    bottom.axhline(2.0**-52, color="0.4", linewidth=0.8, linestyle="--")
    bottom.text(1e-3, 2.0**-52 * 1.6, "float64 epsilon", fontsize=7, color="0.3")
    top.set_ylabel("|value| (sigma = 1)")
    top.set_title(f"{name}: coefficients of one step against the step t = h / sigma")
    bottom.set_ylabel("relative error in float64\n(an error of 0 drawn at 1e-18)")
    bottom.set_xlabel("t = 1 - sigma_next / sigma")
    for ax in (top, bottom):
        ax.grid(True, which="major", linewidth=0.3)
        ax.legend(fontsize=7)
    _save(fig, "coefficients.svg")


def rules(names=("ersde_order3", "ersde_order3_phi_ode", "ersde_order3_phi_sde", "vpsde_order2_ode")) -> None:
    """Which evaluation rule each coefficient uses, over t = h/sigma: small-step series, closed form, quadrature."""
    from derive.spec import CATALOGUE

    by_name = {spec.name: spec for spec in CATALOGUE}
    colors = {"series": "#4c72b0", "closed": "#55a868", "quadrature": "#c44e52"}
    rows = []
    for name in names:
        from derive.coefficients import plan_coefficients
        from derive.symbolic.ersde import derive_step
        from derive.symbolic.expression import parse_expression
        from derive.verify.harness import manifest

        spec = by_name[name]
        entry = manifest()[name]
        step = derive_step(parse_expression(entry["phi"]))
        plan = plan_coefficients(step, spec.order, spec.form, spec.variable)
        for n, quantity in enumerate(plan.weights):
            rows.append((f"{name}  c_{n}", quantity))
        rows.append((f"{name}  variance", plan.noise_variance))
    lo, hi = 1e-12, 1.0
    fig, ax = plt.subplots(figsize=(6.4, 0.28 * len(rows) + 1.2))
    for i, (label, quantity) in enumerate(rows):
        y = len(rows) - 1 - i
        if quantity.kind == "quadrature":
            spans = [("quadrature", lo, hi)]
        elif quantity.threshold > 0:
            spans = [("series", lo, quantity.threshold), ("closed", quantity.threshold, hi)]
        else:
            spans = [(quantity.kind if quantity.kind in colors else "closed", lo, hi)]
        for kind, start, end in spans:
            ax.barh(
                y, math.log10(end) - math.log10(start), left=math.log10(start), color=colors[kind], height=0.7
            )
    for kind, color in colors.items():
        ax.barh(-10, 0, color=color, label=kind)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(-12, 0)
    ax.set_yticks([len(rows) - 1 - i for i in range(len(rows))], [label for label, _ in rows], fontsize=7)
    ax.set_xlabel("log10 t,  t = h / sigma = 1 - sigma_next / sigma")
    ax.set_title("evaluation rule of each coefficient, as the derivation planned it")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 * 16 / (len(rows) + 4)), ncols=3)
    _save(fig, "rules.svg")


def orders(ks=(1, 2, 3)) -> None:
    """Measured method order per method (taylor, adams, pc), probability-flow ODE, Gaussian data."""
    from matplotlib.ticker import NullFormatter

    from derive.verify import harness

    methods = {
        "taylor": [f"ersde_order{k}_phi_ode" for k in ks],
        "adams": [f"ersde_order{k}_phi_ode_adams" for k in ks if k >= 2],
        "pc": [f"ersde_order{k}_phi_ode_pc" for k in ks],
    }
    settings = harness.Settings.coarse()
    fig, axes = plt.subplots(1, len(methods), figsize=(9.6, 3.2), sharey=True)
    for ax, (method, names) in zip(axes, methods.items()):
        for name in names:
            module = harness.load_checked_in(name)
            report = harness.verify_module(module, settings, name=name)
            study = next(s for s in report.studies if s.label.startswith("method"))
            pts = [(h, e) for h, e in zip(study.step_sizes, study.errors) if e > 0 and math.isfinite(e)]
            hs, es = zip(*pts)
            (line,) = ax.loglog(
                hs,
                es,
                "o-",
                markersize=3,
                label=f"K={module.ORDER}: {study.order:.2f} (claim {study.claim:g})",
            )
            ax.loglog(
                hs,
                [es[-1] / 3 * (h / hs[-1]) ** study.claim for h in hs],
                "--",
                linewidth=0.8,
                color=line.get_color(),
            )
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{method}")
        ax.set_xlabel("mean step in log s")
        ax.grid(True, which="major", linewidth=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("error at sigma_min (Gaussian data, exact flow)")
    fig.suptitle("measured method order, probability-flow ODE (dashed: claimed slope)", fontsize=9)
    _save(fig, "orders.svg")


def claims() -> None:
    """The claims table as a plot: claimed against measured method and as-used order of each published sampler."""
    from derive.variants import variant_table
    from derive.verify import harness

    rows = []
    settings = harness.Settings.coarse()
    for variant in variant_table().values():
        if variant.name not in harness.manifest(variants=True):
            continue
        report = harness.verify_module(harness.load_checked_in(variant.name), settings, name=variant.name)
        studies = {s.label.split()[0]: s for s in report.studies}
        method, used = studies.get("method"), studies.get("as-used")
        if method is None or method.order is None:
            continue
        rows.append(
            (variant.key, method.claim, method.order, used.order if used and used.order else float("nan"))
        )
    fig, ax = plt.subplots(figsize=(6.4, 0.22 * len(rows) + 1.2))
    ys = list(range(len(rows)))[::-1]
    ax.scatter(
        [r[1] for r in rows],
        ys,
        marker="|",
        s=120,
        color="k",
        label="claimed method order (what derive verify checks)",
    )
    ax.scatter([r[2] for r in rows], ys, marker="o", s=14, label="measured method order")
    ax.scatter([r[3] for r in rows], ys, marker="x", s=14, label="measured as-used order")
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=6)
    ax.set_xlabel("order")
    ax.grid(True, axis="x", linewidth=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("published samplers: claimed and measured orders\n(Gaussian data, derive verify --coarse)")
    _save(fig, "claims_orders.svg")


def benchmarks() -> None:
    """The benchmark plots (measured by benchmarks/, see benchmarks/README.md), copied into the site."""
    for name in ("accuracy.png", "accuracy_sde.png"):
        target = IMG / f"benchmark_{name}"
        shutil.copyfile(ROOT / "benchmarks" / name, target)
        print(target.relative_to(ROOT))


FIGURES = {
    "coefficients": coefficients,
    "rules": rules,
    "orders": orders,
    "claims": claims,
    "benchmarks": benchmarks,
}

if __name__ == "__main__":
    wanted = sys.argv[1:] or list(FIGURES)
    unknown = [w for w in wanted if w not in FIGURES]
    if unknown:
        sys.exit(f"unknown figure(s) {', '.join(unknown)}; choose from: {', '.join(FIGURES)}")
    for figure in wanted:
        FIGURES[figure]()

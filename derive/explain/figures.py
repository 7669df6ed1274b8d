"""The teaching figures of the documentation, from the derivation: ``python -m derive.explain.figures``.

Writes four SVG files into ``docs/img/`` (or ``--out DIR``):

* ``noise-fraction.svg``: gamma^2/g^2 = s phi'/phi - 1 against s for several phi;
* ``exponential-step.svg``: one exponential-integrator step on 1-D Gaussian data, against the exact flow;
* ``weights.svg``: the order-2 weights w_0, w_1 (phi = s, expanded in s) against the step ratio s_i+1/s_i;
* ``error-vs-steps.svg``: the error of the derived probability-flow solvers of orders 1-3 against the
  number of steps, on Gaussian data with its closed-form flow (exact starting values).

The numbers come from SymPy's expressions (noise fraction, ratio, closed-form weights, derivative weights),
evaluated with mpmath at 30 digits. The SVG files carry no date and a fixed hash salt, so rerunning the
script with the same matplotlib writes the same bytes.
"""

from __future__ import annotations

import argparse
import pathlib

import mpmath
import sympy as sp

from derive.symbolic import ersde as _ersde
from derive.symbolic.expression import parse_expression
from derive.symbolic.interpolation import derivative_weights, offset_symbols

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
OUT = ROOT / "docs" / "img"
s, sigma, sigma_next = _ersde.s, _ersde.sigma, _ersde.sigma_next
#: the Gaussian data of the convergence figure: x0 ~ N(MEAN, DATA_STD^2)
MEAN, DATA_STD = 0.5, 0.7


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "derive", "svg.fonttype": "path", "font.size": 10})
    return plt


def _save(fig, path: pathlib.Path) -> None:
    fig.savefig(path, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")


def noise_fraction(plt, path: pathlib.Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    grid = [10 ** (k / 20) for k in range(-80, 81)]
    for text, label in (
        ("s", r"$\varphi = s$ (ODE)"),
        ("s**1.5", r"$\varphi = s^{1.5}$"),
        ("s**2", r"$\varphi = s^2$ (reverse SDE)"),
        ("default", r"$\varphi = s\,(e^{s^{0.3}} + 10)$ (default)"),
    ):
        phi = parse_expression({"default": "s*(exp(s**0.3) + 10)"}.get(text, text))
        fraction = sp.lambdify(s, _ersde.derive_step(phi).noise_fraction, "mpmath")
        ax.plot(grid, [float(fraction(mpmath.mpf(value))) for value in grid], label=label)
    ax.set_xscale("log")
    ax.set_xlabel(r"noise level $s$")
    ax.set_ylabel(r"$\gamma^2/g^2 = s\varphi'/\varphi - 1$")
    ax.set_ylim(-0.05, 1.6)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("How much of the forward noise each phi re-injects")
    _save(fig, path)
    plt.close(fig)


def _exact_flow(y_start: float, s_start: float, s_end: float) -> float:
    """The probability-flow ODE of x0 ~ N(MEAN, DATA_STD^2) in normalized coordinates, solved exactly."""
    scale = ((DATA_STD**2 + s_end**2) / (DATA_STD**2 + s_start**2)) ** 0.5
    return MEAN + scale * (y_start - MEAN)


def _denoiser(y: float, level: float) -> float:
    return MEAN + DATA_STD**2 / (DATA_STD**2 + level**2) * (y - MEAN)


def exponential_step(plt, path: pathlib.Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    s_i, s_next, y_i = 2.0, 0.5, 3.0
    levels = [s_i - (s_i - s_next) * k / 100 for k in range(101)]
    ax.plot(levels, [_exact_flow(y_i, s_i, level) for level in levels], label=r"exact flow $y(s)$")
    x0 = _denoiser(y_i, s_i)
    # phi = s: r(s) = s/s_i and c_0(s) = 1 - s/s_i, the prediction held at its value at s_i
    ax.plot(
        levels,
        [level / s_i * y_i + (1 - level / s_i) * x0 for level in levels],
        "--",
        label=r"first-order step: $r(s)\,y_i + c_0(s)\,\hat x_0(y_i, s_i)$",
    )
    ax.axhline(
        x0, color="grey", linewidth=0.8, linestyle=":", label=r"$\hat x_0(y_i, s_i)$, held over the step"
    )
    ax.plot([s_i], [y_i], "ko")
    ax.annotate(r"$y_i$", (s_i, y_i), textcoords="offset points", xytext=(6, 4))
    y_next = s_next / s_i * y_i + (1 - s_next / s_i) * x0
    ax.plot([s_next], [y_next], "C1o")
    ax.annotate(r"$y_{i+1}$", (s_next, y_next), xytext=(-6, -16), textcoords="offset points")
    ax.invert_xaxis()
    ax.set_xlabel(r"noise level $s$ (decreasing: one step from $s_i = 2$ to $s_{i+1} = 0.5$)")
    ax.set_ylabel(r"state $y$")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(r"One exponential-integrator step ($\varphi = s$, 1-D Gaussian data)")
    _save(fig, path)
    plt.close(fig)


def _weight_functions(order: int, phi: sp.Expr = s):
    """w_j(s_i, s_i+1, s_i-1, ...) for equally spaced history, from the closed-form c_n and D_nj."""
    step = _ersde.derive_step(phi)
    c = [_ersde.closed_form_weight(step, n) for n in range(order)]
    D = derivative_weights(order)
    deltas = offset_symbols(order)
    weights = [sum(c[n] * D[n][j] for n in range(order)) for j in range(order)]
    return sp.lambdify((sigma, sigma_next, *deltas), weights, "mpmath"), sp.lambdify(
        (sigma, sigma_next), step.ratio, "mpmath"
    )


def weights(plt, path: pathlib.Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    weight, _ = _weight_functions(2)
    ratios = [0.05 + 0.9 * k / 90 for k in range(91)]
    with mpmath.workdps(30):
        values = [weight(mpmath.mpf(1), mpmath.mpf(rho), mpmath.mpf(1 - rho)) for rho in ratios]
    ax.plot(ratios, [float(v[0]) for v in values], label=r"$w_0$ (newest output)")
    ax.plot(ratios, [float(v[1]) for v in values], label=r"$w_1$ (previous output)")
    ax.plot(ratios, [float(v[0] + v[1]) for v in values], ":", label=r"$w_0 + w_1 = c_0 = 1 - r$")
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_xlabel(r"step ratio $s_{i+1}/s_i$ ($s_i = 1$, $s_{i-1} - s_i = s_i - s_{i+1}$)")
    ax.set_ylabel("weight")
    ax.legend(fontsize=8)
    ax.set_title(r"Order-2 weights, $\varphi = s$, expanded in $s$")
    _save(fig, path)
    plt.close(fig)


def sample_error(order: int, steps: int, s_max: float = 10.0, s_min: float = 0.1) -> float:
    """|y_N - y(s_min)| of the derived order-K ODE solver (phi = s, in s) with exact starting values."""
    weight, ratio = _weight_functions(order)
    with mpmath.workdps(30):
        levels = [mpmath.mpf(s_max) * (mpmath.mpf(s_min) / s_max) ** (mpmath.mpf(k) / steps)
                  for k in range(-(order - 1), steps + 1)]  # fmt: skip
        y_start = mpmath.mpf(3)
        exact = [_exact_flow(y_start, levels[0], level) for level in levels]
        ys = exact[:order]  # exact starting values on the history
        outputs = [_denoiser(y, level) for y, level in zip(ys, levels[:order])]
        for i in range(order - 1, order - 1 + steps):
            a, b = levels[i], levels[i + 1]
            deltas = [levels[i - j] - a for j in range(1, order)]
            w = weight(a, b, *deltas)
            y_next = ratio(a, b) * ys[-1] + mpmath.fsum(w[j] * outputs[-1 - j] for j in range(order))
            ys.append(y_next)
            outputs.append(_denoiser(y_next, b))
        return float(abs(ys[-1] - exact[-1]))


def error_vs_steps(plt, path: pathlib.Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    counts = (8, 16, 32, 64, 128)
    for order in (1, 2, 3):
        errors = [sample_error(order, n) for n in counts]
        ax.loglog(counts, errors, "o-", label=f"$K = {order}$")
        ax.loglog(counts, [errors[-1] * (counts[-1] / n) ** order for n in counts], ":", color="grey")
    ax.set_xlabel(r"number of steps $N$ ($s$ from 10 to 0.1, log-uniform)")
    ax.set_ylabel(r"error $|y_N - y(0.1)|$")
    ax.legend(fontsize=8, title=r"order (dotted: slope $-K$)")
    ax.set_title("Derived probability-flow solvers, 1-D Gaussian data, exact flow")
    _save(fig, path)
    plt.close(fig)


FIGURES = {
    "noise-fraction.svg": noise_fraction,
    "exponential-step.svg": exponential_step,
    "weights.svg": weights,
    "error-vs-steps.svg": error_vs_steps,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m derive.explain.figures", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help="folder (default: %(default)s)")
    args = parser.parse_args(argv)
    plt = _pyplot()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, draw in FIGURES.items():
        draw(plt, args.out / name)
        print(args.out / name)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

r"""Refine a schedule on the user's own model: measured error on a pilot batch, minimised over a warp of the levels.

The derived schedules (:mod:`derive.schedules.optimize`) minimise a *predicted* error, the leading term of every
step. With few model calls the steps are long and the leading term no longer describes them (and a mixture's
trajectories near the boundary between two modes are decided by steps no expansion describes). The pilot batch
measures what the leading term cannot: :func:`refine` runs the module itself on candidate schedules from the
pilot's starting states, compares with a fine reference solve of the same model, and minimises the measured
error over a low-dimensional warp of the best starting candidate (the derived schedules among them):

.. math:: h_i = h^{(0)}_i \exp\big(g(t_i) + c\,[i < K - 1]\big) \Big/ \sum_j (\cdot)_j,

where :math:`h^{(0)}` are the candidate's steps in :math:`\log s`, :math:`t_i \in [0, 1]` the step's position in
:math:`\log s`, :math:`g` piecewise linear through :data:`KNOTS` values and :math:`c` a separate factor for the
K - 1 steps of the low-order start. The objective is the geometric mean of the RMS error and of the median
over the pilot points of their RMS error (the two measures users judge samplers by), minimised by Nelder-Mead
(scipy) within a budget of schedule evaluations; each evaluation costs ``nfe`` model calls on the pilot batch,
and every call is counted and reported.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: piecewise-linear warp of the step density: this many values, equally spaced in log s
KNOTS = 6
#: schedule evaluations (each ``nfe`` model calls on the pilot batch) spent by :func:`refine`
EVALUATIONS = 120
#: the weight of log RMS in the objective (the rest on log median): both measures count equally
RMS_WEIGHT = 0.5


def errors(out: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(RMS over points and coordinates, median over points of the per-point RMS) of ``out - reference``."""
    diff = (out.detach().double() - reference.double()).reshape(out.shape[0], -1)
    per_point = diff.pow(2).mean(dim=1)
    return float(per_point.mean().sqrt()), float(per_point.sqrt().median())


def objective_value(rms: float, median: float) -> float:
    """The refined quantity: log of the geometric mean of the two error measures (inf if not finite)."""
    if not (math.isfinite(rms) and math.isfinite(median)) or rms <= 0 or median <= 0:
        return math.inf
    return RMS_WEIGHT * math.log(rms) + (1 - RMS_WEIGHT) * math.log(median)


def warp(start: np.ndarray, params: np.ndarray, order: int) -> np.ndarray:
    """The levels of ``start`` (decreasing, endpoints kept) with its log-steps warped by ``params``."""
    log_s = np.log(np.asarray(start, dtype=np.float64))
    steps = -np.diff(log_s)
    n = len(steps)
    total = log_s[0] - log_s[-1]
    mid = (log_s[0] - 0.5 * (log_s[:-1] + log_s[1:])) / total  # position 0 (sigma_max) .. 1 (sigma_min)
    knots = np.linspace(0.0, 1.0, KNOTS)
    g = np.interp(mid, knots, params[:KNOTS])
    if order > 1 and n > 1:
        g[: min(order - 1, n - 1)] += params[KNOTS]
    g = np.clip(g, -30.0, 30.0)
    new = steps * np.exp(g - g.max())
    new *= total / new.sum()
    out = np.exp(log_s[0] - np.concatenate([[0.0], np.cumsum(new)]))
    out[0], out[-1] = start[0], start[-1]
    return out


def refine(
    evaluate,
    starts: dict[str, np.ndarray],
    order: int,
    *,
    evaluations: int = EVALUATIONS,
) -> tuple[np.ndarray, dict]:
    """Minimise the measured error: ``evaluate(levels) -> (rms, median)`` on the pilot; returns (levels, info).

    ``starts`` are the candidate schedules (name -> levels); each is measured, the best is warped. The result is
    never worse on the pilot than the best start.
    """
    from scipy.optimize import minimize

    measured = {}
    for name, levels in starts.items():
        rms, median = evaluate(np.asarray(levels, dtype=np.float64))
        measured[name] = (objective_value(rms, median), rms, median)
    best_name = min(measured, key=lambda k: measured[k][0])
    base = np.asarray(starts[best_name], dtype=np.float64)
    n = len(base) - 1
    used = len(starts)
    info = {
        "starts": {k: {"rms": v[1], "median": v[2]} for k, v in measured.items()},
        "start": best_name,
    }
    best = (measured[best_name][0], base, measured[best_name][1], measured[best_name][2])
    budget = evaluations - used
    if n >= 2 and budget > 0:
        dims = KNOTS + (1 if order > 1 else 0)

        def f(params):
            nonlocal best
            levels = warp(base, params, order)
            if not np.all(np.diff(levels) < 0):
                return math.inf
            try:
                rms, median = evaluate(levels)
            except ValueError:  # a warped schedule the module refuses (e.g. a step beyond its range)
                return math.inf
            value = objective_value(rms, median)
            if value < best[0]:
                best = (value, levels, rms, median)
            return value

        simplex = np.vstack([np.zeros(dims), 0.6 * np.eye(dims)])
        result = minimize(
            f,
            np.zeros(dims),
            method="Nelder-Mead",
            options={"maxfev": budget, "initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-4},
        )
        used += int(result.nfev)
    info.update({"evaluations": used, "rms": best[2], "median": best[3]})
    return best[1], info

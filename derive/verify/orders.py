"""Empirical order of convergence, fitted only where it means something.

A convergence study produces errors ``e_i`` at step sizes ``h_i`` (or ``1/n_i`` for ``n_i`` steps).
Plotted on log-log axes the errors go through three regimes, from coarse to fine:

1. *pre-asymptotic*: the step is too large for ``e ~ C h^p`` to hold; local slopes can be anything;
2. *asymptotic*: ``log e`` is (nearly) linear in ``log h`` with slope ``p``, the order;
3. *round-off*: the error hits a floor (float64 round-off, the reference solution's own error, the
   tolerance of an inner solver) and stops decreasing, or even grows.

A naive least-squares slope over all points mixes the three regimes and is meaningless.
:func:`fit_order` picks the asymptotic run and fits only there.

Algorithm (points are first sorted by step size, largest first)
---------------------------------------------------------------
* **Floor.** ``floor`` is given, or estimated as ``1e3 * eps * scale`` where ``eps`` is the float64
  machine epsilon and ``scale`` (default 1) is the magnitude of the quantity whose error is measured,
  i.e. about 2.2e-13 for an O(1) solution: the accuracy a long float64 computation can be trusted to.
  Points with ``error <= floor_factor * floor`` (default factor 20) are *below the floor* and never
  used, nor are non-finite or non-positive errors.
* **Decreasing runs.** A pair of consecutive points is *valid* if both are above the floor and the
  error decreases by at least ``min_decrease`` (default 1.5) per halving of the step, i.e. the local
  order ``q = log(e_i/e_{i+1}) / log(h_i/h_{i+1})`` is at least ``log2(min_decrease)`` (~0.58). Maximal
  runs of consecutive valid pairs are the candidate asymptotic regions; the error keeps decreasing
  across each of them. The *finest* run with at least ``min_points`` points is chosen (round-off and
  collapse of the local order end a run on its fine side).
* **Trimming inside the run.** A pair is *consistent* with an order ``p`` if its local order is within
  ``slope_tol`` of ``p`` (per halving: the tolerance is scaled by ``log 2 / log(h_i/h_{i+1})`` for step
  ratios below 2, since local orders over small ratios are proportionally noisier). The reference
  order is the least-squares slope of the finest window of ``min_points`` consecutive points of the
  run whose pairs all lie within *half* that tolerance of the window's own slope (if no window does,
  the finest window).
  The window is then grown, fine-wards and coarse-wards, while the next pair is consistent with the
  reference. This drops pre-asymptotic coarse points whose slope differs from the rest, and also the
  first points of a plateau that still decrease a little (local order between ``log2(min_decrease)``
  and the true order) when the floor is higher than ``floor``. The used points are contiguous and
  there are always at least ``min_points`` of them.
* **Fit.** ``numpy.polyfit`` of ``log e`` against ``log h`` over the used points gives ``order`` (slope)
  and ``intercept`` (natural-log units, ``e ~ exp(intercept) * h**order``); ``residual`` is the RMS of
  the fit in natural-log space.

If no run has ``min_points`` points a ``ValueError`` explains how many points were above the floor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_FLOOR_FACTOR", "DEFAULT_MIN_DECREASE", "OrderFit", "fit_order"]

#: errors within this factor of the floor are considered round-off dominated
DEFAULT_FLOOR_FACTOR = 20.0
#: minimum decrease of the error per halving of the step for a pair to count as converging
DEFAULT_MIN_DECREASE = 1.5

_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class OrderFit:
    """Result of :func:`fit_order`.

    All index-based fields refer to ``step_sizes`` / ``errors`` as stored here, i.e. sorted by step
    size, largest first (which is not necessarily the caller's order).

    Attributes
    ----------
    order : least-squares slope of ``log(error)`` against ``log(step size)`` over the used points.
    local_orders : slopes between consecutive (sorted) points, ``log(e_i/e_{i+1}) / log(h_i/h_{i+1})``
        (``log2`` of the error ratio when the step halves); ``nan`` where an error is not positive and
        finite. Length ``len(step_sizes) - 1``; covers all points, used or not.
    used : indices (into the sorted arrays) of the points in the fit; contiguous, increasing.
    floor : the error floor used (given, or ``1e3 * eps * scale``).
    intercept : natural-log intercept: ``error ~ exp(intercept) * h**order``.
    residual : RMS of the fit residuals in natural-log space.
    step_sizes, errors : the input, sorted by decreasing step size.
    """

    order: float
    local_orders: tuple[float, ...]
    used: tuple[int, ...]
    floor: float
    intercept: float
    residual: float
    step_sizes: tuple[float, ...] = ()
    errors: tuple[float, ...] = ()

    def __str__(self) -> str:
        n_used, n = len(self.used), len(self.step_sizes)
        h_lo = self.step_sizes[self.used[-1]] if self.used else float("nan")
        h_hi = self.step_sizes[self.used[0]] if self.used else float("nan")
        used = set(self.used)
        # mark the local orders of pairs inside the fit with brackets
        parts = []
        for i, q in enumerate(self.local_orders):
            txt = "nan" if not math.isfinite(q) else f"{q:.2f}"
            parts.append(f"[{txt}]" if (i in used and i + 1 in used) else txt)
        return (
            f"order {self.order:.3f} from {n_used}/{n} points, h in [{h_lo:.3g}, {h_hi:.3g}], "
            f"rms log-residual {self.residual:.2g}, floor {self.floor:.2g}; "
            f"local orders (fitted in []): {' '.join(parts)}"
        )


def _local_orders(h: np.ndarray, e: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        good = np.isfinite(e) & (e > 0)
        le = np.where(good, np.log(np.where(good, e, 1.0)), np.nan)
        q = (le[:-1] - le[1:]) / (np.log(h[:-1]) - np.log(h[1:]))
    return q


def fit_order(
    step_sizes: Sequence[float],
    errors: Sequence[float],
    *,
    min_points: int = 4,
    floor: float | None = None,
    scale: float = 1.0,
    floor_factor: float = DEFAULT_FLOOR_FACTOR,
    min_decrease: float = DEFAULT_MIN_DECREASE,
    slope_tol: float = 0.3,
) -> OrderFit:
    """Fit the asymptotic order of convergence ``p`` in ``error ~ C * h**p`` (see module docstring).

    Parameters
    ----------
    step_sizes, errors : equal-length sequences; step sizes positive, finite and distinct (any order).
        Errors may contain zeros, ``nan`` or ``inf`` (such points are never used).
    min_points : minimum number of points in the fit (>= 2).
    floor : error floor; default ``1e3 * eps * scale``.
    scale : magnitude of the measured quantity, only used to estimate the floor.
    floor_factor : points with ``error <= floor_factor * floor`` are excluded.
    min_decrease : a pair is converging if the error drops by this factor per halving of the step.
    slope_tol : tolerance (per halving) for adding back coarse points whose local order differs
        from the order fitted over the finest ``min_points`` points.

    Raises ``ValueError`` on malformed input or if fewer than ``min_points`` usable points remain.
    """
    h = np.asarray(step_sizes, dtype=np.float64).reshape(-1)
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if h.shape != e.shape:
        raise ValueError(f"step_sizes and errors differ in length ({h.size} vs {e.size})")
    if int(min_points) != min_points or min_points < 2:
        raise ValueError(f"min_points must be an integer >= 2 (got {min_points})")
    min_points = int(min_points)
    if not np.all(np.isfinite(h)) or np.any(h <= 0):
        raise ValueError("step sizes must be positive and finite")
    if not (min_decrease > 1 and floor_factor > 0 and slope_tol > 0 and scale > 0):
        raise ValueError("need min_decrease > 1, floor_factor > 0, slope_tol > 0, scale > 0")

    order_idx = np.argsort(-h, kind="stable")
    h, e = h[order_idx], e[order_idx]
    if np.any(h[:-1] == h[1:]):
        raise ValueError("step sizes must be distinct")

    if floor is None:
        floor = 1e3 * _EPS * float(scale)
    floor = float(floor)
    if not (floor >= 0 and math.isfinite(floor)):
        raise ValueError(f"floor must be finite and >= 0 (got {floor})")

    n = h.size
    q = _local_orders(h, e) if n >= 2 else np.empty(0)
    above = np.isfinite(e) & (e > floor_factor * floor)
    q_min = math.log(min_decrease) / math.log(2.0)
    valid_pair = above[:-1] & above[1:] & (np.nan_to_num(q, nan=-np.inf) >= q_min)

    # maximal runs of consecutive valid pairs -> point ranges [a, b]
    runs: list[tuple[int, int]] = []
    i = 0
    while i < n - 1:
        if valid_pair[i]:
            j = i
            while j + 1 < n - 1 and valid_pair[j + 1]:
                j += 1
            runs.append((i, j + 1))
            i = j + 1
        else:
            i += 1
    long_runs = [r for r in runs if r[1] - r[0] + 1 >= min_points]
    if not long_runs:
        best = max((b - a + 1 for a, b in runs), default=1 if above.any() else 0)
        raise ValueError(
            f"cannot fit an order: need {min_points} consecutive points with decreasing errors above the "
            f"floor, but only {int(above.sum())} of {n} errors exceed {floor_factor:g} x floor "
            f"({floor:.3g}) and the longest converging run has {best} point(s); "
            "use more step sizes in the asymptotic range (or pass a smaller floor)"
        )
    a, b = long_runs[-1]  # the finest qualifying run

    # Reference order: the finest window of min_points points whose local orders all agree (to half
    # the tolerance) with the window's own fitted slope (falls back to the finest window); then grow the window in both
    # directions while each added pair's local order agrees with that reference.
    lh, le = np.log(h), np.log(np.where(above, e, 1.0))
    ratio = lh[:-1] - lh[1:]
    tol = slope_tol * np.maximum(1.0, math.log(2.0) / ratio)  # per pair (i, i+1)

    def consistent(i: int, p: float, factor: float = 1.0) -> bool:
        return bool(abs(q[i] - p) <= factor * tol[i])

    start = b - min_points + 1
    p_ref = float(np.polyfit(lh[start : b + 1], le[start : b + 1], 1)[0])
    for j in range(b - min_points + 1, a - 1, -1):
        p_j = float(np.polyfit(lh[j : j + min_points], le[j : j + min_points], 1)[0])
        if all(consistent(i, p_j, 0.5) for i in range(j, j + min_points - 1)):
            start, p_ref = j, p_j
            break
    stop = start + min_points - 1
    while stop < b and consistent(stop, p_ref):
        stop += 1
    while start > a and consistent(start - 1, p_ref):
        start -= 1

    used = np.arange(start, stop + 1)
    slope, intercept = np.polyfit(lh[used], le[used], 1)
    resid = le[used] - (slope * lh[used] + intercept)
    rms = float(np.sqrt(np.mean(resid**2)))
    return OrderFit(
        order=float(slope),
        local_orders=tuple(float(x) for x in q),
        used=tuple(int(k) for k in used),
        floor=floor,
        intercept=float(intercept),
        residual=rms,
        step_sizes=tuple(float(x) for x in h),
        errors=tuple(float(x) for x in e),
    )

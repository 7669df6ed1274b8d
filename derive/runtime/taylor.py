"""The Taylor form of a step's weights: the Taylor weights c_n of the step combined with the derivative weights
of the interpolant through the stored outputs, w_j = sum_n c_n D_nj (inlined into the taylor and pc modules)."""

from __future__ import annotations

from derive.runtime.module import _DERIVATIVE_WEIGHTS, taylor_weights

# ---- inlined into the generated modules below this line ----


def _prepare_weights(sigma, sigma_next):
    """The Taylor weights c_n of every step, once for the schedule: rows n of Python floats."""
    return [row.tolist() for row in taylor_weights(sigma, sigma_next)]


def _step_weights(taylor, s, i, offsets):
    """Weights of the k = len(offsets) + 1 newest outputs on step i: sum_n c_n D_nj."""
    k = len(offsets) + 1
    rows = _DERIVATIVE_WEIGHTS[k](*offsets)
    return [sum(taylor[n][i] * rows[n][j] for n in range(k)) for j in range(k)]

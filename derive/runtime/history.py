"""How much multistep history each step uses (inlined into every solver module)."""

from __future__ import annotations

import math

from derive.runtime.module import HISTORY_STEP_RATIO, ORDER, _node_offset

# ---- inlined into the generated modules below this line ----


def _history_lengths(sigmas):
    """Usable history per step: at most ORDER outputs at distinct, decreasing sigmas.

    A node is dropped (with everything older) when the step that follows it is shorter than
    HISTORY_STEP_RATIO times the current step (for a zero-length step: the newest step it keeps): interpolating
    through nearly coincident nodes would multiply rounding errors and noise by the inverse of that ratio (a
    repeated sigma is the limit of this).
    """
    lengths = []
    steps = len(sigmas) - 1
    for i in range(steps):
        scale = sigmas[i] - sigmas[i + 1]
        k = 1
        while k < ORDER and i - k >= 0:
            gap = sigmas[i - k] - sigmas[i - k + 1]
            if not gap > 0 or gap < HISTORY_STEP_RATIO * scale:
                break
            if scale == 0:  # a zero-length step: measure older gaps against the first one it keeps
                scale = gap
            k += 1
        lengths.append(k)
    return lengths


def _amplification(w):
    """sum|w_j| / |sum w_j|: how much a perturbation of the stored outputs can grow in one step."""
    total = abs(sum(w))
    spread = sum(abs(v) for v in w)
    if total == 0:
        return 0.0 if spread == 0 else math.inf
    return spread / total


def _history_offsets(s, n_steps):
    """offsets[j][i]: node offset of sigmas[i - j] seen from sigmas[i], for all steps at once."""
    return {
        j: [0.0] * j + _node_offset(s[j:n_steps], s[: n_steps - j]).tolist()
        for j in range(1, min(ORDER, n_steps))
    }

"""The corrector of the pc and am methods: through the output at the predicted point and the stored outputs
(all K: order K + 1; the K - 1 newest: order K with a smaller error constant), with no extra model call
(inlined into the modules of both methods)."""

from __future__ import annotations

import torch

from derive.runtime.contract import _float64
from derive.runtime.history import _amplification, _history_offsets
from derive.runtime.module import (
    _CORRECTOR_WEIGHTS,
    AMPLIFICATION_LIMIT,
    CORRECTOR_DROP,
    WEIGHT_SIGN,
    _node_offset,
    taylor_weights,
)

# ---- inlined into the generated modules below this line ----


def correction_table(sigmas, weights):
    """Per step: the corrections d_i (weights on P_{i+1}, P_i, ..., newest first) or None (no correction).

    ``weights`` are the predictor's, from coefficient_table(sigmas). The corrector uses the new output and the
    predictor's history less its CORRECTOR_DROP oldest outputs (at least one stored output), with one output
    fewer while its weights amplify perturbations by more than AMPLIFICATION_LIMIT. Computed once per schedule
    in float64, like the predictor's coefficients.
    """
    s = _float64(sigmas)
    sigma, sigma_next = s[:-1], s[1:]
    safe_next = torch.where(sigma_next == 0, sigma, sigma_next)
    taylor = [row.tolist() for row in taylor_weights(sigma, safe_next)]
    # u_{i+1} - u_i (the new node) and the history's offsets, for all steps at once
    new = _node_offset(sigma, safe_next).tolist()
    offsets = _history_offsets(s, len(weights))
    values = s.tolist()
    corrections = []
    for i, w in enumerate(weights):
        # corrected: steps of positive length followed by a step of positive length that is not final (a
        # repeated sigma calls the model twice at one level: both calls see the same, uncorrected state)
        if i + 2 >= len(values) or values[i + 2] == 0 or not values[i + 2] < values[i + 1] < values[i]:
            corrections.append(None)
            continue
        k = max(len(w) - CORRECTOR_DROP, 1)
        while True:
            rows = _CORRECTOR_WEIGHTS[k](new[i], *[offsets[j][i] for j in range(1, k)])
            wc = [WEIGHT_SIGN * sum(taylor[n][i] * rows[n][j] for n in range(k + 1)) for j in range(k + 1)]
            if k == 1 or not _amplification(wc) > AMPLIFICATION_LIMIT[k + 1]:
                break
            k -= 1
        corrections.append((wc[0], *(wc[j + 1] - w[j] if j < k else -w[j] for j in range(len(w)))))
    return corrections


def _corrections(sigmas, weights):
    """The corrections of the schedule (see correction_table)."""
    return correction_table(sigmas, weights)

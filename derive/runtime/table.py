"""The whole schedule's coefficients, computed once before sampling (inlined into every solver module; the
per-step weights come from the method's file: taylor.py or adams.py)."""

from __future__ import annotations

import math

import torch

from derive.runtime.contract import _check_sigmas, _check_steps, _check_table, _float64
from derive.runtime.history import _amplification, _history_lengths, _history_offsets
from derive.runtime.module import AMPLIFICATION_LIMIT, WEIGHT_SIGN, _ratio, noise_variance
from derive.runtime.taylor import _prepare_weights, _step_weights

# ---- inlined into the generated modules below this line ----


def coefficient_table(sigmas):
    """The whole schedule's coefficients in float64, computed once before sampling.

    Returns (ratio, noise_std, weights, final) in normalized coordinates: per step i, y_{i+1} = ratio[i] y_i
    + sum_j weights[i][j] P_{i-j} + noise_std[i] z, P the stored predictions (data or noise, as FORM says);
    ``final[i]`` marks a step to sigma = 0, which returns the data prediction. Lists of Python floats, so that
    the sampling loop does no tensor arithmetic on them. A step uses one stored output fewer while its weights
    would amplify perturbations of the outputs by more than AMPLIFICATION_LIMIT.
    """
    s = _float64(sigmas)
    _check_sigmas(s)
    values = s.tolist()
    _check_steps(values)
    sigma, sigma_next = s[:-1], s[1:]
    final = sigma_next == 0
    # a finite stand-in for sigma_next on final steps keeps every branch finite; those rows are overwritten
    safe_next = torch.where(final, sigma, sigma_next)
    # one tolist() per coefficient vector: the loop below works on Python floats, not 0-d tensors
    ratio = _ratio(sigma, safe_next).tolist()
    noise_var = torch.clamp(noise_variance(sigma, safe_next), min=0.0).tolist()
    prepared = _prepare_weights(sigma, safe_next)
    final = final.tolist()
    n_steps = len(final)
    lengths = _history_lengths(values)
    offsets = _history_offsets(s, n_steps)
    ratios, stds, weights, finals = [], [], [], []
    for i, k in enumerate(lengths):
        if final[i]:
            ratios.append(0.0)
            stds.append(0.0)
            weights.append((1.0,))
            finals.append(True)
            continue
        while True:
            w = [
                WEIGHT_SIGN * value
                for value in _step_weights(prepared, s, i, [offsets[j][i] for j in range(1, k)])
            ]
            if k == 1 or not _amplification(w) > AMPLIFICATION_LIMIT[k]:
                break
            k -= 1
        ratios.append(ratio[i])
        stds.append(math.sqrt(noise_var[i]))
        weights.append(tuple(w))
        finals.append(False)
    _check_table(ratios, stds, weights, values)
    return ratios, stds, weights, finals

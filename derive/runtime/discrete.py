"""Times of a discrete schedule: integer indices into its table (inlined into the discrete-schedule modules)."""

from __future__ import annotations

import torch

from derive.runtime.contract import _float64
from derive.runtime.module import SCHEDULE_DOC, TABLE, _alpha, _sigma
from derive.runtime.native import _as_times

# ---- inlined into the generated modules below this line ----


def _times(t, name, length):
    """Times as a tensor of integer indices, refused outside the table of ``length`` entries (naming ``name``)."""
    times, scalar = _as_times(t, name)
    fractional = times != torch.round(times)
    if bool(fractional.any()):
        j = int(fractional.nonzero()[0])
        raise ValueError(
            f"{name} must be integer indices into {TABLE}, got {float(times[j])!r} at position {j}"
        )
    outside = (times < 0) | (times > length - 1)
    if bool(outside.any()):
        j = int(outside.nonzero()[0])
        raise ValueError(
            f"{name} must be indices 0..{length - 1} into {TABLE} ({length} entries), got {int(times[j])} at position {j}"
        )
    times = times.long()
    return times[0] if scalar else times


def _table(values, *parameters):
    """The table as float64, refused (naming the entry) where alpha and sigma are not real or the noise level
    sigma / alpha falls with the index."""
    table = _float64(values, TABLE)
    if table.numel() == 0:
        raise ValueError(f"{TABLE} is empty")
    alpha, sigma = _alpha(table, *parameters), _sigma(table, *parameters)
    bad = ~(
        torch.isfinite(table) & torch.isfinite(alpha) & torch.isfinite(sigma) & (alpha >= 0) & (sigma >= 0)
    )
    if bool(bad.any()):
        j = int(bad.nonzero()[0])
        raise ValueError(f"{TABLE}[{j}] = {float(table[j])!r} gives no real alpha and sigma ({SCHEDULE_DOC})")
    level = sigma / alpha
    falls = level[1:] < level[:-1]
    if bool(falls.any()):
        j = int(falls.nonzero()[0])
        raise ValueError(
            f"{TABLE} must make the noise level sigma / alpha grow with the index; it falls from "
            f"{TABLE}[{j}] = {float(table[j])!r} to {TABLE}[{j + 1}] = {float(table[j + 1])!r}"
        )
    return table

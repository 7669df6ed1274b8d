"""Times of a continuous schedule, within its domain (inlined into the continuous-schedule modules)."""

from __future__ import annotations

from derive.runtime.module import SCHEDULE, SCHEDULE_DOC, TIME_RANGE
from derive.runtime.native import _as_times

# ---- inlined into the generated modules below this line ----


def _times(t, name):
    """Times as a float64 tensor, refused outside the schedule's domain TIME_RANGE (naming ``name``)."""
    times, scalar = _as_times(t, name)
    low, high = TIME_RANGE
    outside = (times < low) if high is None else (times < low) | (times > high)
    if bool(outside.any()):
        j = int(outside.nonzero()[0])
        span = f"[{low:g}, oo)" if high is None else f"[{low:g}, {high:g}]"
        raise ValueError(
            f"{name} must lie in {span} for the schedule {SCHEDULE} ({SCHEDULE_DOC}), "
            f"got {float(times[j])!r} at position {j}"
        )
    return times[0] if scalar else times

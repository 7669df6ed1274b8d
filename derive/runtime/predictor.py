"""A method without a corrector (taylor, adams): no corrections (inlined into those modules)."""

from __future__ import annotations

# ---- inlined into the generated modules below this line ----


def _corrections(sigmas, weights):
    """This method has no corrector."""
    return None

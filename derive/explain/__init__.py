"""``derive explain``: the derivation of one solver, step by step, as data and as text, LaTeX or Markdown.

:func:`build_explanation` runs the derivation of a :class:`~derive.spec.Spec` again, one identity at a time,
and records for every step the SymPy expressions held at that point and the checks that ran with their
results; :func:`render_explanation` prints the result. Nothing in the output is typed by hand: every formula
is printed by SymPy from the expressions the derivation holds.

The submodules: ``steps`` (the walk-through as data), ``render`` (text / LaTeX / Markdown), ``command`` (the
click command), ``docs`` (the generated documentation pages).
"""

from derive.explain.model import CheckResult, Explanation, Formula, Step
from derive.explain.render import FORMATS
from derive.explain.render import render as render_explanation
from derive.explain.special import special_cases
from derive.explain.steps import build_explanation

__all__ = [
    "FORMATS",
    "CheckResult",
    "Explanation",
    "Formula",
    "Step",
    "build_explanation",
    "render_explanation",
    "special_cases",
]

"""Print an :class:`~derive.explain.model.Explanation` as text, LaTeX or Markdown.

Formulas are printed by SymPy: ``pretty()`` for text (``sstr()`` when a pretty form would be unreadably
wide), ``latex()`` for LaTeX and Markdown (MathJax through pymdownx.arithmatex). The only change made to an
expression before printing is renaming: the derivation code's ``sigma`` and ``sigma_next`` (the noise levels
at both ends of a step) are shown as s_i and s_{i+1}, ``eps`` as epsilon and ``weight_sum`` as W.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable

import sympy as sp
from sympy.printing.pretty.pretty import PrettyPrinter
from sympy.printing.pretty.stringpict import prettyForm

from derive import variants as _variants
from derive.explain.model import CheckResult, Explanation, Formula, Step
from derive.symbolic import ersde as _ersde
from derive.symbolic import families
from derive.symbolic.ersde import sigma, sigma_next

FORMATS = ("text", "latex", "markdown")
WIDTH = 100

_COMMON_NAMES = {
    families.eps: sp.Symbol("epsilon", real=True),
    families.weight_sum: sp.Symbol("Sigma_w", real=True),
    _variants.step: sp.Symbol("h", real=True),
    _ersde.v: sp.Symbol("tau", nonpositive=True),
}
_PRETTY_NAMES = {
    sigma: sp.Symbol("s_i", positive=True),
    sigma_next: sp.Symbol("s_i+1", positive=True),
    **_COMMON_NAMES,
}
_PLAIN_NAMES = {
    sigma: sp.Symbol("s_i", positive=True),
    sigma_next: sp.Symbol("s_{i+1}", positive=True),
    **_COMMON_NAMES,
}


def _rename(expr, names):
    if isinstance(expr, (sp.Basic, sp.MatrixBase)):
        return expr.xreplace(names)
    return sp.sympify(expr).xreplace(names)


def render(explanation: Explanation, fmt: str = "text") -> str:
    """The explanation as ``text``, ``latex`` (a standalone document) or ``markdown``."""
    if fmt == "text":
        return render_text(explanation)
    if fmt == "latex":
        return render_latex(explanation)
    if fmt == "markdown":
        return render_markdown(explanation)
    raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")


def status(check: CheckResult) -> str:
    return "passed" if check.passed else "FAILED"


# ---- text -----------------------------------------------------------------------------------------------------
def pretty_formula(formula: Formula, width: int = WIDTH) -> str:
    """``lhs = rhs`` by SymPy's pretty printer (unicode), or by ``sstr`` when the pretty form is too wide."""
    printer = PrettyPrinter({"use_unicode": True, "wrap_line": False})
    relation = " ≈ " if formula.relation == "~" else " = "
    lhs = printer._print(_rename(formula.lhs, _PRETTY_NAMES))
    rhs = printer._print(_rename(formula.rhs, _PRETTY_NAMES))
    form = prettyForm(*lhs.right(relation, rhs))
    text = form.render(wrap_line=False)
    if max(len(line) for line in text.splitlines()) <= width:
        return text.rstrip()
    plain = f"{sp.sstr(_rename(formula.lhs, _PLAIN_NAMES))}{relation}{sp.sstr(_rename(formula.rhs, _PLAIN_NAMES))}"
    return "\n".join(textwrap.wrap(plain, width, subsequent_indent="    ", break_on_hyphens=False)) or plain


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line if line.strip() else line.rstrip() for line in text.splitlines())


def _text_formula(formula: Formula) -> str:
    body = pretty_formula(formula, WIDTH - 4)
    note = f"({formula.note})\n" if formula.note else ""
    return _indent(note + body, "    ")


def _text_check(check: CheckResult) -> str:
    head = f"  [{status(check)}] {check.name}: {check.statement}"
    lines = textwrap.wrap(head, WIDTH, subsequent_indent="      ")
    detail = f"method: {check.method or '-'}; residual: {check.residual}; ran: {check.source}"
    lines += textwrap.wrap(detail, WIDTH, initial_indent="      ", subsequent_indent="      ")
    out = "\n".join(lines)
    for equation in check.equations:
        note = f"({equation.note})\n" if equation.note else ""
        out += "\n" + _indent(note + pretty_formula(equation, WIDTH - 8), "        ")
    return out


def _text_step(step: Step) -> str:
    title = f"{step.number}. {step.title}"
    parts = [title + "\n" + "-" * len(title)]
    for block in step.body:
        parts.append(_text_formula(block) if isinstance(block, Formula) else textwrap.fill(block, WIDTH))
    for note in step.notes:
        parts.append(textwrap.fill(note, WIDTH, initial_indent="  * ", subsequent_indent="    "))
    if step.checks:
        parts.append("Checks:\n" + "\n".join(_text_check(check) for check in step.checks))
    return "\n\n".join(parts)


def render_text(explanation: Explanation) -> str:
    head = explanation.command
    parts = [head + "\n" + "=" * len(head), textwrap.fill(explanation.title + ".", WIDTH)]
    parts += [textwrap.fill(line, WIDTH) for line in explanation.legend]
    parts += [_text_step(step) for step in explanation.steps]
    parts.append(_summary(explanation))
    return "\n\n".join(parts) + "\n"


def _summary(explanation: Explanation) -> str:
    checks = explanation.checks
    failed = explanation.failed
    if not failed:
        return f"All {len(checks)} checks passed."
    names = ", ".join(check.name for check in failed)
    return f"{len(failed)} of {len(checks)} checks FAILED: {names}."


# ---- LaTeX ------------------------------------------------------------------------------------------------------
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def latex_formula(formula: Formula) -> str:
    """``lhs = rhs`` as LaTeX math (no delimiters), printed by SymPy's ``latex()``."""
    relation = r" \approx " if formula.relation == "~" else " = "
    return (
        sp.latex(_rename(formula.lhs, _PLAIN_NAMES)) + relation + sp.latex(_rename(formula.rhs, _PLAIN_NAMES))
    )


def _latex_display(formula: Formula) -> str:
    body = latex_formula(formula)
    note = f"\\noindent\\textit{{{latex_escape(formula.note)}:}}\n" if formula.note else ""
    if len(body) > 160:
        return (
            note
            + f"\\begin{{center}}\n\\resizebox{{\\linewidth}}{{!}}{{$\\displaystyle {body}$}}\n\\end{{center}}"
        )
    return note + f"\\[\n{body}\n\\]"


def _latex_check(check: CheckResult) -> str:
    text = (
        f"\\item \\textbf{{{latex_escape(status(check))}}} \\texttt{{{latex_escape(check.name)}}}: "
        f"{latex_escape(check.statement)} (method: {latex_escape(check.method or '-')}; residual: "
        f"\\texttt{{{latex_escape(check.residual)}}}; ran: \\texttt{{{latex_escape(check.source)}}})"
    )
    for equation in check.equations:
        text += "\n" + _latex_display(equation)
    return text


def render_latex(explanation: Explanation) -> str:
    lines = [
        r"\documentclass[11pt]{article}",
        r"\usepackage{amsmath,amssymb}",
        r"\usepackage{graphicx}",
        r"\usepackage[margin=2cm]{geometry}",
        r"\allowdisplaybreaks",
        r"\begin{document}",
        r"\sloppy",
        f"\\section*{{{latex_escape(explanation.title)}}}",
        f"\\noindent\\texttt{{{latex_escape(explanation.command)}}}",
        "",
    ]
    lines += [latex_escape(line) + "\n" for line in explanation.legend]
    for step in explanation.steps:
        lines.append(f"\\subsection*{{{step.number}. {latex_escape(step.title)}}}")
        for block in step.body:
            lines.append(_latex_display(block) if isinstance(block, Formula) else latex_escape(block) + "\n")
        if step.notes:
            lines.append("\\begin{itemize}")
            lines += [f"\\item {latex_escape(note)}" for note in step.notes]
            lines.append("\\end{itemize}")
        if step.checks:
            lines.append("\\paragraph{Checks}")
            lines.append("\\begin{itemize}")
            lines += [_latex_check(check) for check in step.checks]
            lines.append("\\end{itemize}")
        lines.append("")
    lines.append(latex_escape(_summary(explanation)))
    lines.append(r"\end{document}")
    return "\n".join(lines) + "\n"


# ---- Markdown (MkDocs + pymdownx.arithmatex) ------------------------------------------------------------------
_MARKDOWN_SPECIAL = {
    "\\": "\\\\",
    "`": "\\`",
    "*": "\\*",
    "_": "\\_",
    "[": "\\[",
    "]": "\\]",
    "<": "&lt;",
    ">": "&gt;",
    "$": "\\$",
    "|": "\\|",
    "#": "\\#",
}


def markdown_escape(text: str) -> str:
    return "".join(_MARKDOWN_SPECIAL.get(char, char) for char in text)


def code_span(text: str) -> str:
    """An inline code span (literal: no Markdown or math inside)."""
    text = text.replace("|", "¦")
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if fence == "`" else f"{fence} {text} {fence}"


def markdown_math(formula: Formula) -> str:
    return f"$$\n{latex_formula(formula)}\n$$"


def markdown_formula(formula: Formula) -> str:
    note = f"*{markdown_escape(formula.note)}:*\n\n" if formula.note else ""
    return note + markdown_math(formula)


def markdown_checks(checks: Iterable[CheckResult]) -> str:
    """A table of checks, then the identities each one asserted."""
    checks = list(checks)
    rows = [
        "| result | check | statement | method | residual | ran |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for check in checks:
        mark = "passed" if check.passed else "**FAILED**"
        rows.append(
            f"| {mark} | {markdown_escape(check.name)} | {code_span(check.statement)} | {markdown_escape(check.method or '-')} "
            f"| {code_span(check.residual)} | {code_span(check.source)} |"
        )
    parts = ["\n".join(rows)]
    for check in checks:
        if check.equations:
            parts.append(f"Identities checked by *{markdown_escape(check.name)}*:")
            parts += [markdown_formula(equation) for equation in check.equations]
    return "\n\n".join(parts)


#: the checks a learner reads (shown open); every other check is engineering and folded away
LEARNER_CHECKS = (
    "phi = s is DDIM",
    "phi = s^2 is DDPM ancestral sampling",
    "phi = s is the ODE",
    "phi = s^2 is the SDE",
    "variance-exploding marginal",
    "integrating factor",
    "variance as a derivative",
    "order conditions",
    "local order",
)


def _indented(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line if line.strip() else "" for line in text.splitlines())


def _markdown_key_check(check: CheckResult) -> str:
    kind = "success" if check.passed else "failure"
    head = f'!!! {kind} "{"Checked" if check.passed else "FAILED"}: {check.name}"'
    detail = (
        f"{markdown_escape(check.statement)}. Method: {markdown_escape(check.method or '-')}; residual "
        f"{code_span(check.residual)}."
    )
    parts = [detail, *(markdown_formula(equation) for equation in check.equations)]
    return head + "\n\n" + _indented("\n\n".join(parts))


REPEATED = "*(As in the first section above.)*"


def markdown_step(step: Step, level: int = 2, seen: set[str] | None = None) -> str:
    """One step as Markdown. With ``seen`` (the blocks printed earlier on the page), a formula or a paragraph
    printed before is left out (a run of them becomes one line saying so), and the new ones are added."""
    parts = [f"{'#' * level} {step.number}. {markdown_escape(step.title)}"]
    texts = [markdown_formula(b) if isinstance(b, Formula) else markdown_escape(b) for b in step.body]
    repeated = [seen is not None and text in seen for text in texts]
    for index, (block, text) in enumerate(zip(step.body, texts)):
        # a paragraph printed before stays when it introduces a new formula
        follows = index + 1 < len(texts) and isinstance(step.body[index + 1], Formula)
        introduces = follows and not repeated[index + 1]
        if repeated[index] and (isinstance(block, Formula) or not introduces):
            if parts[-1] != REPEATED:
                parts.append(REPEATED)
            continue
        if seen is not None:
            seen.add(text)
        parts.append(text)
    key = [check for check in step.checks if check.name in LEARNER_CHECKS]
    rest = [check for check in step.checks if check.name not in LEARNER_CHECKS]
    for check in key:
        text = _markdown_key_check(check)
        if seen is not None and text in seen and check.passed:
            continue
        if seen is not None:
            seen.add(text)
        parts.append(text)
    if rest or step.notes:
        passed = sum(c.passed for c in rest)
        failed = len(rest) - passed
        kind = "failure" if failed else "note"
        opened = "???+" if failed else "???"
        title = f"Engineering checks: {passed} of {len(rest)} passed" if rest else "Engineering notes"
        inner = []
        if step.notes:
            inner.append("\n".join(f"- {markdown_escape(note)}" for note in step.notes))
        if rest:
            inner.append(markdown_checks(rest))
        parts.append(f'{opened} {kind} "{title}"\n\n' + _indented("\n\n".join(inner)))
    return "\n\n".join(parts)


def render_markdown(explanation: Explanation, level: int = 1, *, header: bool = True) -> str:
    """The walk-through as Markdown; ``level`` is the heading level of its title (steps are one deeper)."""
    parts = []
    if header:
        parts.append(f"{'#' * level} {markdown_escape(explanation.title)}")
    parts.append(f"```sh\n{explanation.command}\n```")
    parts += [markdown_escape(line) for line in explanation.legend]
    parts += [markdown_step(step, level + 1) for step in explanation.steps]
    parts.append(markdown_escape(_summary(explanation)))
    return "\n\n".join(parts) + "\n"

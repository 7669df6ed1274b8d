"""Parse user-supplied expressions (the noise-scale function phi) into SymPy, safely.

The text is parsed with :func:`ast.parse` and the SymPy expression is built by walking the syntax tree with
a strict whitelist; the user's text is never handed to ``eval``, ``exec``, ``sympify`` or ``parse_expr``.

Grammar (everything else is an :class:`~derive.errors.ExpressionError`):

* numbers: ``int`` and ``float`` literals. Floats become exact rationals through their shortest ``repr``
  (``0.3`` -> ``3/10``), so that derivations stay exact; ints become :class:`sympy.Integer`.
* names: the variables (by default only ``s``), the constants ``pi`` and ``E`` (also spelled ``e``).
* operators: unary ``+``/``-``, binary ``+ - * / **`` and ``^`` (meaning power, as users write it, with the
  precedence of ``**``: ``1 + s^2`` is ``1 + s**2``).
* calls of whitelisted functions by bare name with positional arguments: ``exp``, ``log`` (``log(x)`` or
  ``log(x, base)``), ``sqrt``, ``sin``, ``cos``, ``tan``, ``sinh``, ``cosh``, ``tanh``, ``asinh``, ``atan``,
  ``erf``, ``abs``, ``expm1(x)`` (= ``exp(x) - 1``) and ``log1p(x)`` (= ``log(1 + x)``).

Variables are **positive** SymPy symbols, ``Symbol(name, positive=True)``, so that SymPy can simplify powers
and logarithms of ``s``. Callers that substitute into or differentiate a parsed expression must use the same
symbol: get it from :func:`variable_symbol` (SymPy caches symbols, so equal name and assumptions give the
identical object).

Resource bounds: the text length (``max_length``), the nesting depth, the magnitude of numeric exponents
(at most 1000) and the size of exact numbers produced while building the expression are all bounded, so no
input can make the parser hang or exhaust memory.
"""

from __future__ import annotations

import ast
import math
import warnings
from collections.abc import Callable, Mapping
from fractions import Fraction
from types import MappingProxyType

import sympy

from derive.errors import ExpressionError

__all__ = [
    "CONSTANTS",
    "FUNCTIONS",
    "MAX_EXPONENT",
    "PRESETS",
    "parse_expression",
    "resolve_phi",
    "variable_symbol",
]

#: Largest allowed magnitude of a numeric exponent (``s**1000`` is fine, ``s**1001`` is not).
MAX_EXPONENT = 1000
#: Largest nesting depth of the syntax tree.
MAX_DEPTH = 200
#: Largest integer literal, in decimal digits.
MAX_INT_DIGITS = 1000
#: Largest numerator/denominator of an exact number built while parsing, in bits (about 30 000 digits).
MAX_NUMBER_BITS = 100_000

#: Named noise-scale functions and their expression text (keep in sync with ``derive.spec.PHI_PRESETS``).
PRESETS: Mapping[str, str] = MappingProxyType(
    {
        # The ER-SDE-Solver paper's recommended noise-scale function.
        "default": "s*(exp(s**0.3) + 10)",
        # phi(s) = s: h = 0, the probability-flow ODE (DDIM).
        "ode": "s",
        # phi(s) = s^2: h^2 = g^2, the reverse SDE (DDPM).
        "sde": "s**2",
    }
)

#: Constants by name.
CONSTANTS: Mapping[str, sympy.Expr] = MappingProxyType({"pi": sympy.pi, "E": sympy.E, "e": sympy.E})


def _log(*args: sympy.Expr) -> sympy.Expr:
    return sympy.log(*args)


#: Whitelisted functions: name -> (allowed argument counts, builder).
FUNCTIONS: Mapping[str, tuple[tuple[int, ...], Callable[..., sympy.Expr]]] = MappingProxyType(
    {
        "exp": ((1,), sympy.exp),
        "log": ((1, 2), _log),
        "sqrt": ((1,), sympy.sqrt),
        "sin": ((1,), sympy.sin),
        "cos": ((1,), sympy.cos),
        "tan": ((1,), sympy.tan),
        "sinh": ((1,), sympy.sinh),
        "cosh": ((1,), sympy.cosh),
        "tanh": ((1,), sympy.tanh),
        "asinh": ((1,), sympy.asinh),
        "atan": ((1,), sympy.atan),
        "erf": ((1,), sympy.erf),
        "abs": ((1,), sympy.Abs),
        "expm1": ((1,), lambda x: sympy.exp(x) - 1),
        "log1p": ((1,), lambda x: sympy.log(1 + x)),
    }
)

_BINARY_NAMES = {
    ast.FloorDiv: "floor division '//'",
    ast.Mod: "modulo '%'",
    ast.MatMult: "matrix product '@'",
    ast.LShift: "shift '<<'",
    ast.RShift: "shift '>>'",
    ast.BitOr: "operator '|'",
    ast.BitAnd: "operator '&'",
}

_NODE_NAMES = {
    ast.Attribute: "attribute access is",
    ast.Subscript: "subscripts are",
    ast.Lambda: "lambda is",
    ast.ListComp: "comprehensions are",
    ast.SetComp: "comprehensions are",
    ast.DictComp: "comprehensions are",
    ast.GeneratorExp: "comprehensions are",
    ast.List: "lists are",
    ast.Tuple: "tuples are",
    ast.Set: "sets are",
    ast.Dict: "dicts are",
    ast.Compare: "comparisons are",
    ast.BoolOp: "boolean operators are",
    ast.IfExp: "conditional expressions are",
    ast.NamedExpr: "assignment expressions are",
    ast.Starred: "starred expressions are",
    ast.JoinedStr: "strings are",
    ast.FormattedValue: "strings are",
    ast.Await: "await is",
    ast.Yield: "yield is",
    ast.YieldFrom: "yield is",
    ast.Slice: "slices are",
}


def variable_symbol(name: str = "s") -> sympy.Symbol:
    """The SymPy symbol :func:`parse_expression` uses for variable ``name``: ``Symbol(name, positive=True)``."""
    return sympy.Symbol(name, positive=True)


def _show(text: str, limit: int = 60) -> str:
    """``text`` quoted for a one-line message, shortened to about ``limit`` characters."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)


class _Builder:
    """Walks an ``ast`` tree and builds the SymPy expression; every rejection is an ExpressionError."""

    def __init__(self, text: str, shown: str, variables: tuple[str, ...]):
        self.text = text  # the parsed text (``^`` already rewritten to ``**``)
        self.shown = shown  # the user's text, for messages
        self.variables = {name: variable_symbol(name) for name in variables}

    # -- helpers -------------------------------------------------------------------------------------

    def piece(self, node: ast.AST) -> str:
        """The source text of ``node`` (quoted, shortened), or its type name."""
        segment = ast.get_source_segment(self.text, node)
        return _show(segment) if segment else type(node).__name__

    def fail(self, message: str) -> ExpressionError:
        return ExpressionError(f"invalid phi expression {_show(self.shown)}: {message}")

    def allowed(self) -> str:
        variables = ", ".join(self.variables) or "(none)"
        constants = ", ".join(CONSTANTS)
        functions = ", ".join(FUNCTIONS)
        return f"allowed are variables {variables}; constants {constants}; functions {functions}"

    def check_number(self, value: sympy.Expr, node: ast.AST) -> sympy.Expr:
        """Reject exact numbers that grew too large (e.g. by repeated powers of big integers)."""
        if (
            isinstance(value, sympy.Rational)
            and max(int(value.p).bit_length(), int(value.q).bit_length()) > MAX_NUMBER_BITS
        ):
            raise self.fail(f"number too large in {self.piece(node)}")
        return value

    # -- the walk --------------------------------------------------------------------------------------

    def reject_dunders(self, tree: ast.AST) -> None:
        """Reject any dunder name or attribute anywhere, before anything else is looked at."""
        for node in ast.walk(tree):
            name = (
                node.id
                if isinstance(node, ast.Name)
                else node.attr
                if isinstance(node, ast.Attribute)
                else None
            )
            if name is not None and "__" in name:
                raise self.fail(f"dunder names are not allowed ({name!r})")

    def build(self, node: ast.AST) -> sympy.Expr:
        if isinstance(node, ast.Expression):
            return self.build(node.body)
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.UnaryOp):
            return self.unary(node)
        if isinstance(node, ast.BinOp):
            return self.binary(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        what = _NODE_NAMES.get(type(node), f"{type(node).__name__} nodes are")
        raise self.fail(f"{what} not allowed ({self.piece(node)})")

    def constant(self, node: ast.Constant) -> sympy.Expr:
        value = node.value
        if isinstance(value, bool) or value is None or value is Ellipsis:
            raise self.fail(f"{value!r} is not a number ({self.piece(node)})")
        if isinstance(value, (str, bytes)):
            raise self.fail(f"strings are not allowed ({self.piece(node)})")
        if isinstance(value, complex):
            raise self.fail(f"complex numbers are not allowed ({self.piece(node)})")
        if isinstance(value, int):
            if value.bit_length() > MAX_INT_DIGITS * 3.33:
                raise self.fail(f"integer literal too large (more than {MAX_INT_DIGITS} digits)")
            return sympy.Integer(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise self.fail(f"float literal {self.piece(node)} overflows")
            if value == 0.0:
                segment = ast.get_source_segment(self.text, node) or "0"
                mantissa = segment.lower().split("e")[0]
                if any(ch in "123456789" for ch in mantissa):
                    raise self.fail(f"float literal {self.piece(node)} underflows to 0")
                return sympy.Integer(0)
            fraction = Fraction(repr(value))
            return self.check_number(sympy.Rational(fraction.numerator, fraction.denominator), node)
        raise self.fail(f"{type(value).__name__} literals are not allowed ({self.piece(node)})")

    def name(self, node: ast.Name) -> sympy.Expr:
        name = node.id
        if "__" in name:
            raise self.fail(f"dunder names are not allowed ({name!r})")
        if name in self.variables:
            return self.variables[name]
        if name in CONSTANTS:
            return CONSTANTS[name]
        if name in FUNCTIONS:
            raise self.fail(f"function {name!r} must be called, as in {name}(s)")
        raise self.fail(f"unknown name {name!r}; {self.allowed()}")

    def unary(self, node: ast.UnaryOp) -> sympy.Expr:
        if isinstance(node.op, ast.UAdd):
            return self.build(node.operand)
        if isinstance(node.op, ast.USub):
            return -self.build(node.operand)
        symbol = "not" if isinstance(node.op, ast.Not) else "~"
        raise self.fail(f"unary operator {symbol!r} is not allowed ({self.piece(node)})")

    def binary(self, node: ast.BinOp) -> sympy.Expr:
        op = node.op
        if type(op) in _BINARY_NAMES:
            raise self.fail(f"{_BINARY_NAMES[type(op)]} is not allowed ({self.piece(node)})")
        left = self.build(node.left)
        right = self.build(node.right)
        if isinstance(op, ast.Add):
            result = left + right
        elif isinstance(op, ast.Sub):
            result = left - right
        elif isinstance(op, ast.Mult):
            result = left * right
        elif isinstance(op, ast.Div):
            result = left / right
        elif isinstance(op, ast.Pow):
            result = self.power(left, right, node)
        else:  # pragma: no cover - every ast operator is handled above
            raise self.fail(f"operator {type(op).__name__} is not allowed ({self.piece(node)})")
        return self.check_number(result, node)

    def power(self, base: sympy.Expr, exponent: sympy.Expr, node: ast.AST) -> sympy.Expr:
        if isinstance(exponent, sympy.Number):
            if not exponent.is_finite or abs(exponent) > MAX_EXPONENT:
                raise self.fail(
                    f"exponent {exponent} is too large in {self.piece(node)} (at most {MAX_EXPONENT} in magnitude)"
                )
            if isinstance(base, sympy.Rational) and isinstance(exponent, sympy.Rational):
                bits = max(int(base.p).bit_length(), int(base.q).bit_length())
                if bits * abs(exponent) > MAX_NUMBER_BITS:
                    raise self.fail(f"number too large in {self.piece(node)}")
        return base**exponent

    def call(self, node: ast.Call) -> sympy.Expr:
        func = node.func
        if not isinstance(func, ast.Name):
            raise self.fail(
                f"only whitelisted functions called by bare name are allowed, not {self.piece(func)}"
            )
        name = func.id
        if "__" in name:
            raise self.fail(f"dunder names are not allowed ({name!r})")
        if name in self.variables or name in CONSTANTS:
            raise self.fail(f"{name!r} is not a function and cannot be called ({self.piece(node)})")
        if name not in FUNCTIONS:
            raise self.fail(f"unknown function {name!r}; {self.allowed()}")
        if node.keywords:
            raise self.fail(f"keyword arguments are not allowed ({self.piece(node)})")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.fail(f"starred arguments are not allowed ({self.piece(node)})")
        counts, builder = FUNCTIONS[name]
        if len(node.args) not in counts:
            expected = " or ".join(str(c) for c in counts)
            raise self.fail(
                f"{name} takes {expected} argument{'s' if counts != (1,) else ''}, got {len(node.args)}"
            )
        args = [self.build(arg) for arg in node.args]
        return builder(*args)


_WHITESPACE = str.maketrans({"\n": " ", "\r": " ", "\t": " ", "\f": " ", "\v": " "})


def _depth(tree: ast.AST) -> int:
    """The nesting depth of ``tree`` (iterative, so deep trees cannot overflow the stack)."""
    deepest = 0
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def parse_expression(text: str, variables: tuple[str, ...] = ("s",), *, max_length: int = 500) -> sympy.Expr:
    """Parse ``text`` into a SymPy expression in ``variables`` using the whitelist grammar (module docstring).

    Variables are ``Symbol(name, positive=True)`` (see :func:`variable_symbol`). Raises
    :class:`~derive.errors.ExpressionError` with a one-line message for anything outside the grammar, for
    empty or too-long input, for syntax errors and for expressions that are infinite or undefined as written
    (``1/0``, ``log(0)``).
    """
    for name in variables:
        if not isinstance(name, str) or not name.isidentifier() or "__" in name:
            raise ValueError(f"invalid variable name {name!r}")
        if name in FUNCTIONS:
            raise ValueError(f"variable name {name!r} clashes with a function name")
    if not isinstance(text, str):
        raise ExpressionError(f"phi expression must be text, got {type(text).__name__}")
    if len(text) > max_length:
        raise ExpressionError(
            f"phi expression is too long ({len(text)} characters; at most {max_length} allowed)"
        )
    stripped = text.strip()
    if not stripped:
        raise ExpressionError("phi expression is empty")
    # ``^`` means power. Rewriting it before parsing gives it the precedence of ``**`` (Python's ``^`` binds
    # looser than ``+``). A ``^`` can only be an operator here: strings are rejected anyway.
    # Line breaks and tabs are plain spaces in an expression.
    source = stripped.replace("^", "**").translate(_WHITESPACE)
    try:
        with warnings.catch_warnings():
            # e.g. "SyntaxWarning: invalid decimal literal" for '1if s else 2'; must not escape (or turn
            # into an exception under -W error).
            warnings.simplefilter("ignore")
            tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        reason = (exc.msg or "invalid syntax").splitlines()[0] if exc.msg else "invalid syntax"
        raise ExpressionError(f"cannot parse phi expression {_show(stripped)}: {reason}") from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, RecursionError):
            reason = "nested too deeply"
        raise ExpressionError(f"cannot parse phi expression {_show(stripped)}: {reason}") from None
    if _depth(tree) > MAX_DEPTH:
        raise ExpressionError(
            f"invalid phi expression {_show(stripped)}: nested too deeply (more than {MAX_DEPTH} levels)"
        )
    builder = _Builder(source, stripped, tuple(variables))
    try:
        builder.reject_dunders(tree)
        expr = builder.build(tree)
    except ExpressionError:
        raise
    except (ArithmeticError, ValueError, TypeError, RecursionError, MemoryError) as exc:
        # SymPy refused to build something (e.g. an undefined operation); report it as bad input.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise builder.fail(f"cannot be evaluated ({type(exc).__name__}: {reason[:80]})") from None
    if not isinstance(expr, sympy.Expr):  # pragma: no cover - every builder returns an Expr
        raise builder.fail("does not evaluate to an expression")
    if expr.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        raise builder.fail("is infinite or undefined as written (division by zero?)")
    return expr


def resolve_phi(text_or_preset: str) -> tuple[str, sympy.Expr]:
    """Resolve a preset name or an expression in ``s`` to ``(canonical text, expression)``.

    The canonical text is the preset's expression text for a preset name, and otherwise the given text with
    surrounding whitespace removed and inner runs of whitespace collapsed to one space.
    """
    if not isinstance(text_or_preset, str):
        raise ExpressionError(
            f"phi must be a preset name or an expression in s, got {type(text_or_preset).__name__}"
        )
    key = text_or_preset.strip()
    if key in PRESETS:
        text = PRESETS[key]
    else:
        if len(text_or_preset) > 500:
            # Same bound as parse_expression, checked before the text is rewritten.
            parse_expression(text_or_preset)
        text = " ".join(key.split())
    return text, parse_expression(text)

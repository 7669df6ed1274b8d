"""Print SymPy expressions as torch / Python source, with deterministic common-subexpression elimination.

The printer targets float64 tensors (every coefficient is computed in float64 before sampling). It raises on
anything it cannot print faithfully instead of emitting something that merely looks right.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

_TORCH_FUNCTIONS = {
    "exp": "torch.exp",
    "log": "torch.log",
    "sqrt": "torch.sqrt",
    "sin": "torch.sin",
    "cos": "torch.cos",
    "tan": "torch.tan",
    "sinh": "torch.sinh",
    "cosh": "torch.cosh",
    "tanh": "torch.tanh",
    "asinh": "torch.asinh",
    "atan": "torch.atan",
    "erf": "torch.erf",
    "expm1": "torch.expm1",
    "log1p": "torch.log1p",
    "Abs": "torch.abs",
}


class Polyval(sp.Function):
    """Polyval(x, a_0, a_1, ...) = sum_m a_m x^m; printed as a call of the module's Horner helper."""

    @classmethod
    def eval(cls, *args):
        return None


class TorchPrinter(PythonCodePrinter):
    """SymPy -> torch expressions. Numbers print as Python float literals (exact to float64 rounding)."""

    printmethod = "_torchcode"

    def __init__(self, settings=None):
        super().__init__({"fully_qualified_modules": False, **(settings or {})})

    def _print_Polyval(self, expr):
        x, *coefficients = expr.args
        return f"_polyval({self._print(x)}, ({', '.join(self._print(c) for c in coefficients)},))"

    def _print_Function(self, expr):
        name = type(expr).__name__
        if name not in _TORCH_FUNCTIONS:
            raise NotImplementedError(f"no torch translation for function {name!r} in {expr}")
        args = ", ".join(self._print(a) for a in expr.args)
        return f"{_TORCH_FUNCTIONS[name]}({args})"

    _print_exp = _print_Function
    _print_log = _print_Function
    _print_Abs = _print_Function
    _print_expm1 = _print_Function
    _print_log1p = _print_Function
    _print_sqrt = _print_Function

    def _print_Rational(self, expr):
        return repr(float(expr))

    def parenthesize(self, item, level, strict=False):
        if isinstance(item, sp.Rational) and item.q != 1 and item > 0:
            return self._print(item)
        return super().parenthesize(item, level, strict)

    _print_Half = _print_Rational

    def _print_Integer(self, expr):
        return repr(float(expr)) if abs(int(expr)) > 2**53 else str(int(expr))

    def _print_Float(self, expr):
        return repr(float(expr))

    def _print_Pi(self, expr):
        return "math.pi"

    def _print_Exp1(self, expr):
        return "math.e"

    def _print_Pow(self, expr, rational=False):
        base, exponent = expr.args
        if exponent == sp.Rational(1, 2):
            return f"torch.sqrt({self._print(base)})"
        if exponent == -sp.Rational(1, 2):
            return f"1 / torch.sqrt({self._print(base)})"
        return super()._print_Pow(expr, rational=rational)

    def _print_Piecewise(self, expr):
        raise NotImplementedError(f"piecewise expressions are not printed: {expr}")

    def _print_Integral(self, expr):
        raise NotImplementedError(f"unevaluated integral cannot be printed: {expr}")

    def emptyPrinter(self, expr):
        raise NotImplementedError(f"cannot print {type(expr).__name__}: {expr}")


_PRINTER = TorchPrinter()


def print_expr(expr: sp.Expr) -> str:
    """One expression as torch source."""
    return _PRINTER.doprint(sp.sympify(expr))


@dataclasses.dataclass(frozen=True)
class Routine:
    """A straight-line function: arguments, CSE temporaries and returned expressions, all printed."""

    name: str
    args: tuple[str, ...]
    assignments: tuple[tuple[str, str], ...]
    returns: tuple[str, ...]
    doc: str
    #: if set, the returned values are grouped into rows of this length (a tuple of tuples)
    row_length: int | None = None

    @property
    def return_rows(self) -> tuple[tuple[str, ...], ...]:
        k = self.row_length or len(self.returns)
        return tuple(self.returns[i : i + k] for i in range(0, len(self.returns), k))

    @property
    def return_tuple(self) -> bool:
        return len(self.returns) != 1


def make_routine(
    name: str,
    args: Sequence[sp.Symbol],
    exprs: Sequence[sp.Expr],
    doc: str,
    *,
    prefix: str = "t",
    row_length: int | None = None,
    tensor_like: str | None = None,
) -> Routine:
    """CSE the expressions (temporaries named prefix0, prefix1, ... in a fixed order) and print them."""
    exprs = [sp.sympify(e) for e in exprs]
    free = set().union(*(e.free_symbols for e in exprs)) if exprs else set()
    unknown = sorted(str(v) for v in free - set(args))
    if unknown:
        raise ValueError(f"routine {name}: expressions use symbols that are not arguments: {unknown}")
    temporaries, reduced = sp.cse(
        exprs, symbols=sp.numbered_symbols(prefix), optimizations="basic", order="canonical"
    )
    return Routine(
        name=name,
        args=tuple(str(a) for a in args),
        assignments=tuple((str(lhs), print_expr(rhs)) for lhs, rhs in temporaries),
        returns=tuple(_print_return(e, tensor_like) for e in reduced),
        doc=doc,
        row_length=row_length,
    )


def _print_return(expr: sp.Expr, tensor_like: str | None) -> str:
    """A constant result of a tensor routine is broadcast to the shape of the named argument."""
    if tensor_like is not None and not expr.free_symbols:
        return f"torch.full_like({tensor_like}, {print_expr(expr)})"
    return print_expr(expr)

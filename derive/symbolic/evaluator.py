r"""A guarded numeric evaluator of SymPy expressions in one symbol: the tree compiled to closures over mpmath
functions (no ``lambdify``, no ``eval``), for the admissibility checks of phi (:mod:`derive.symbolic.admissibility`).

It refuses operations whose results could not be represented in reasonable time (``exp`` of an argument
beyond :data:`MAX_EXP_ARGUMENT`, powers beyond :math:`e^{7\cdot10^5}`, trigonometric arguments beyond
:data:`MAX_TRIG_ARGUMENT`) with an :class:`EvalError` of kind ``overflow``; a division by zero or a non-finite
value is an :class:`EvalError` of kind ``undefined``; a node it does not know is :class:`Unsupported`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import mpmath
import sympy

__all__ = [
    "MAX_EXP_ARGUMENT",
    "MAX_TRIG_ARGUMENT",
    "EvalError",
    "Unsupported",
    "compile_expression",
    "evaluate",
]

#: Largest |argument| of exp/sinh/cosh (and |exponent * log(base)| of a power) the evaluator accepts.
MAX_EXP_ARGUMENT = 7e5
#: Largest |argument| of sin/cos/tan the evaluator accepts (argument reduction gets expensive beyond it).
MAX_TRIG_ARGUMENT = 1e15


class EvalError(Exception):
    """A numeric evaluation failed at one point: ``kind`` is 'overflow' or 'undefined'."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class Unsupported(Exception):
    """The expression contains something the evaluator cannot evaluate."""


def _fmt(value) -> str:
    """A short, one-line rendering of an mpmath number."""
    if isinstance(value, mpmath.mpc) and value.imag == 0:
        value = value.real
    return mpmath.nstr(value, 6)


# -- numeric evaluation ---------------------------------------------------------------------------------


def _is_real(value) -> bool:
    return not isinstance(value, mpmath.mpc) or value.imag == 0


def _real_part(value):
    return value.real if isinstance(value, mpmath.mpc) else value


def _guard_exp_argument(name: str, a) -> None:
    if abs(_real_part(a)) > MAX_EXP_ARGUMENT:
        raise EvalError("overflow", f"{name} of {_fmt(_real_part(a))}")


def _exp(a):
    _guard_exp_argument("exp", a)
    return mpmath.exp(a)


def _sinh(a):
    _guard_exp_argument("sinh", a)
    return mpmath.sinh(a)


def _cosh(a):
    _guard_exp_argument("cosh", a)
    return mpmath.cosh(a)


def _trig(func: Callable, name: str) -> Callable:
    def apply(a):
        if abs(a) > MAX_TRIG_ARGUMENT:
            raise EvalError("overflow", f"{name} of {_fmt(a)}")
        return func(a)

    return apply


def _log(a):
    if a == 0:
        raise EvalError("undefined", "log(0)")
    return mpmath.log(a)


def _tan(a):
    if abs(a) > MAX_TRIG_ARGUMENT:
        raise EvalError("overflow", f"tan of {_fmt(a)}")
    if mpmath.cos(a) == 0:
        raise EvalError("undefined", "tan at a pole")
    return mpmath.tan(a)


def _pow(b, e):
    if b == 0:
        if _real_part(e) > 0:
            return mpmath.mpf(0)
        raise EvalError("undefined", "division by zero")
    # |e * log|b||, estimated from the binary exponent of b (cheap; only large values matter)
    size = abs(_real_part(e)) * (abs(mpmath.mag(b)) + 1) * _LN2
    if size > MAX_EXP_ARGUMENT:
        raise EvalError("overflow", f"power of magnitude exp({_fmt(size)})")
    return mpmath.power(b, e)


def _integer_pow(b, n: int):
    if b == 0:
        if n > 0:
            return b
        raise EvalError("undefined", "division by zero")
    size = abs(n) * (abs(mpmath.mag(b)) + 1) * _LN2
    if size > MAX_EXP_ARGUMENT:
        raise EvalError("overflow", f"power of magnitude exp({_fmt(size)})")
    return b**n


_LN2 = math.log(2)


def _heaviside(a):
    a = _real_part(a)
    return mpmath.mpf(1) if a > 0 else mpmath.mpf(0) if a < 0 else mpmath.mpf(0.5)


_FUNCTIONS: dict[type, Callable] = {
    sympy.exp: _exp,
    sympy.log: _log,
    sympy.sin: _trig(mpmath.sin, "sin"),
    sympy.cos: _trig(mpmath.cos, "cos"),
    sympy.tan: _tan,
    sympy.sinh: _sinh,
    sympy.cosh: _cosh,
    sympy.tanh: mpmath.tanh,
    sympy.asinh: mpmath.asinh,
    sympy.atan: mpmath.atan,
    sympy.erf: mpmath.erf,
    sympy.Abs: abs,
    sympy.sign: mpmath.sign,
    sympy.re: mpmath.re,
    sympy.im: mpmath.im,
    sympy.Heaviside: _heaviside,
}


def _constant(value) -> Callable:
    return lambda ctx: value


def compile_expression(expr: sympy.Expr, s: sympy.Symbol) -> Callable:
    """``expr`` as a function of one mpmath number; call it inside ``mpmath.workdps(...)``: constants take that precision.

    Common subexpressions are evaluated once per call (``sympy.cse``), which matters for derivatives.
    """
    try:
        replacements, (reduced,) = sympy.cse(
            [expr], symbols=sympy.numbered_symbols("cse", cls=sympy.Dummy), order="none"
        )
    except (
        RecursionError,
        ValueError,
        TypeError,
    ):  # pragma: no cover - cse is robust; evaluate the plain tree
        replacements, reduced = [], expr
    slots = {s: 0}
    steps = []
    for index, (symbol, sub) in enumerate(replacements, start=1):
        steps.append(_compile_node(sub, slots))
        slots[symbol] = index
    out = _compile_node(reduced, slots)

    def run(x):
        ctx = [x]
        for step in steps:
            ctx.append(step(ctx))
        return out(ctx)

    return run


def _compile_node(expr: sympy.Expr, slots: dict) -> Callable:
    """One node of a (cse-reduced) tree as a function of ``ctx`` = [s, cse values...]."""
    if expr in slots:
        index = slots[expr]
        return lambda ctx: ctx[index]
    if expr.is_Integer:
        return _constant(mpmath.mpf(int(expr)))
    if expr.is_Rational:
        return _constant(mpmath.mpf(int(expr.p)) / mpmath.mpf(int(expr.q)))
    if expr.is_Float:
        return _constant(mpmath.mpf(expr._to_mpmath(mpmath.mp.prec + 20)))
    if expr is sympy.I:
        return _constant(mpmath.mpc(0, 1))
    if expr.is_NumberSymbol:
        return _constant(mpmath.mpf(sympy.N(expr, mpmath.mp.dps + 10)._to_mpmath(mpmath.mp.prec + 20)))
    if isinstance(expr, sympy.Add):
        terms = [_compile_node(arg, slots) for arg in expr.args]

        def add(ctx):
            total = terms[0](ctx)
            for term in terms[1:]:
                total = total + term(ctx)
            return total

        return add
    if isinstance(expr, sympy.Mul):
        factors = [_compile_node(arg, slots) for arg in expr.args]

        def mul(ctx):
            product = factors[0](ctx)
            for factor in factors[1:]:
                product = product * factor(ctx)
            return product

        return mul
    if isinstance(expr, sympy.Pow):
        base = _compile_node(expr.base, slots)
        if expr.exp == sympy.Rational(1, 2):
            return lambda ctx: mpmath.sqrt(base(ctx))
        if expr.exp.is_Integer:
            n = int(expr.exp)
            return lambda ctx: _integer_pow(base(ctx), n)
        exponent = _compile_node(expr.exp, slots)
        return lambda ctx: _pow(base(ctx), exponent(ctx))
    func = _FUNCTIONS.get(type(expr))
    if func is not None and len(expr.args) == 1:
        arg = _compile_node(expr.args[0], slots)
        return lambda ctx: func(arg(ctx))
    raise Unsupported(str(expr) if len(str(expr)) <= 60 else type(expr).__name__)


def evaluate(func: Callable, x):
    """``func(x)``; ZeroDivisionError and non-finite results become ``EvalError('undefined')``."""
    try:
        value = func(x)
    except ZeroDivisionError:
        raise EvalError("undefined", "division by zero") from None
    except (ValueError, OverflowError) as exc:
        raise EvalError("overflow", str(exc).splitlines()[0][:60] or type(exc).__name__) from None
    if isinstance(value, mpmath.mpc):
        if not (mpmath.isfinite(value.real) and mpmath.isfinite(value.imag)):
            raise EvalError("undefined", f"value {_fmt(value)}")
        if value.imag == 0:
            value = value.real
    elif not mpmath.isfinite(value):
        raise EvalError("undefined", f"value {_fmt(value)}")
    return value

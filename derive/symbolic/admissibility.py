r"""Check that a noise-scale function phi is admissible before anything is derived from it.

The ER SDE injects noise with :math:`h^2 = g^2\,(s\varphi'(s)/\varphi(s) - 1)`, so on the interval
:math:`[s_{lo}, s_{hi}]` phi must be

1. a function of ``s`` alone (no other symbols; a constant is rejected as "must depend on s", although it
   would also fail condition 4),
2. free of singularities (poles of denominators, zeros of logarithm arguments, poles of ``tan``),
3. real, finite and positive,
4. differentiable with :math:`\varphi(s)/s` non-decreasing, i.e. :math:`s\varphi' \ge \varphi`, i.e.
   :math:`h^2 \ge 0`.

"phi is increasing" needs no separate test: with :math:`\varphi > 0` and :math:`(\varphi/s)' \ge 0`,
:math:`\varphi' = \varphi/s + s(\varphi/s)' \ge \varphi/s > 0`.

Method. Condition 4 is first tried symbolically: :math:`N = s\varphi' - \varphi` is multiplied out
(``expand_mul``, only when that stays small) and accepted when it is 0 or SymPy proves it non-negative
(``s`` is a positive symbol). Poles with polynomial denominators are found exactly (``real_roots``); other
poles by sign changes on the grid. Everything else is checked numerically: phi and :math:`N` are evaluated
with mpmath at 30 significant digits on 400 log-spaced points of the interval, and the local minima of
:math:`r = s\varphi'/\varphi - 1 = h^2/g^2` are refined by golden-section search. "``r >= 0``" allows a
relative tolerance of 1e-12, so that :math:`\varphi = s` (where :math:`r` is exactly 0) passes.

The numeric evaluator (:mod:`derive.symbolic.evaluator`) is a small compiler from the SymPy tree to closures
over mpmath functions (no ``lambdify``, no ``eval``); it refuses operations whose results could not be
represented in reasonable time (``exp`` of an argument beyond 7e5, powers beyond :math:`e^{7\cdot10^5}`),
which are then reported as an overflow of phi.

Every violation raises :class:`~derive.errors.AdmissibilityError` with a one-line message naming the violated
condition and a witness value of ``s``.
"""

from __future__ import annotations

import math

import mpmath
import sympy

from derive.errors import AdmissibilityError
from derive.symbolic.evaluator import EvalError, Unsupported, _fmt, _is_real, compile_expression, evaluate

__all__ = ["DEFAULT_S_HI", "DEFAULT_S_LO", "check_phi"]

DEFAULT_S_LO = 1e-4
DEFAULT_S_HI = 1e4

#: Working precision of the numeric checks, in significant decimal digits.
DIGITS = 30
#: Number of log-spaced grid points.
GRID_POINTS = 400
#: ``r = s phi'/phi - 1`` counts as non-negative when ``r >= -TOLERANCE``.
TOLERANCE = 1e-12
#: Local minima of r refined by golden-section search (the smallest ones), and iterations per refinement.
REFINED_MINIMA = 8
REFINE_ITERATIONS = 30
#: Largest polynomial degree whose real roots are computed exactly.
MAX_EXACT_DEGREE = 12
#: Largest expected term count for which ``expand_mul`` is tried in the symbolic proof.
MAX_EXPANSION = 400

_PREFIX = "phi is not admissible: "


def _fail(message: str) -> AdmissibilityError:
    return AdmissibilityError(_PREFIX + message)


def _grid(s_lo: float, s_hi: float, points: int) -> list:
    lo, hi = mpmath.mpf(repr(s_lo)), mpmath.mpf(repr(s_hi))
    log_lo, log_hi = mpmath.log(lo), mpmath.log(hi)
    step = (log_hi - log_lo) / (points - 1)
    return [lo] + [mpmath.exp(log_lo + k * step) for k in range(1, points - 1)] + [hi]


# -- symbolic helpers -----------------------------------------------------------------------------------


def _expansion_size(expr: sympy.Expr) -> int:
    """An upper estimate of the number of terms ``expand_mul`` produces (capped), to avoid blow-ups."""
    cap = 10 * MAX_EXPANSION

    def size(e) -> int:
        if isinstance(e, sympy.Add):
            return min(cap, sum(size(a) for a in e.args))
        if isinstance(e, sympy.Mul):
            total = 1
            for a in e.args:
                total = min(cap, total * size(a))
            return total
        inner = max((size(a) for a in e.args), default=1)
        return min(cap, inner) if e.args else 1

    return size(expr)


def _proves_nonnegative(numerator: sympy.Expr) -> bool:
    """True when SymPy proves ``numerator >= 0`` for positive ``s`` cheaply; False when unsure."""
    try:
        if numerator.is_nonnegative:
            return True
        if _expansion_size(numerator) > MAX_EXPANSION:
            return False
        expanded = sympy.expand_mul(numerator)
        return bool(expanded == 0 or expanded.is_nonnegative)
    except (RecursionError, ArithmeticError, ValueError, TypeError):
        return False


def _critical_expressions(phi: sympy.Expr) -> list[tuple[str, sympy.Expr]]:
    """Expressions whose zeros are singularities of phi: denominators, log arguments, cos of tan arguments."""
    found: list[tuple[str, sympy.Expr]] = []
    for node in sympy.preorder_traversal(phi):
        if isinstance(node, sympy.Pow) and node.exp.is_negative:
            found.append(("pole", node.base))
        elif isinstance(node, sympy.log):
            found.append(("log", node.args[0]))
        elif isinstance(node, sympy.tan):
            found.append(("pole", sympy.cos(node.args[0])))
    unique: list[tuple[str, sympy.Expr]] = []
    for item in found:
        if item not in unique:
            unique.append(item)
    return unique


def _format_root(root: sympy.Expr) -> str:
    if root.is_Rational or (not isinstance(root, sympy.CRootOf) and sympy.count_ops(root) <= 4):
        return str(root)
    return mpmath.nstr(mpmath.mpf(sympy.N(root, 15)._to_mpmath(60)), 6)


def _exact_roots(critical: sympy.Expr, s: sympy.Symbol, s_lo: float, s_hi: float) -> list[sympy.Expr] | None:
    """Real roots of a polynomial ``critical`` in [s_lo, s_hi] computed exactly, or None if not applicable."""
    try:
        if not critical.is_polynomial(s):
            return None
        poly = sympy.Poly(critical, s)
        if poly.degree() < 1 or poly.degree() > MAX_EXACT_DEGREE or not poly.domain.is_Exact:
            return None
        if not (poly.domain.is_ZZ or poly.domain.is_QQ):
            return None
        roots = sympy.real_roots(poly)
    except (sympy.PolynomialError, NotImplementedError, ValueError, TypeError):
        return None
    lo, hi = sympy.Rational(repr(s_lo)), sympy.Rational(repr(s_hi))
    inside = []
    for root in roots:
        if lo <= root <= hi and root not in inside:
            inside.append(root)
    return inside


def _check_singularities(phi, s, phi_at, grid, s_lo, s_hi) -> None:
    for kind, critical in _critical_expressions(phi):
        roots = _exact_roots(critical, s, s_lo, s_hi)
        if roots is None:
            _check_singularities_numerically(kind, critical, phi, s, phi_at, grid)
            continue
        for root in roots:
            if root.is_Rational or sympy.count_ops(root) <= 8:
                value = phi.subs(s, root)
                if value.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
                    raise _fail(f"phi is singular at s = {_format_root(root)} (phi = {value})")
            x = mpmath.mpf(sympy.N(root, DIGITS + 5)._to_mpmath(mpmath.mp.prec + 20))
            _report_singularity(
                kind, phi, s, phi_at, x, x * (1 - mpmath.mpf("1e-3")), x * (1 + mpmath.mpf("1e-3"))
            )


def _check_singularities_numerically(kind: str, critical, phi, s, phi_at, grid) -> None:
    """Find sign changes of ``critical`` on the grid, bisect to the zero, and test phi next to it."""
    try:
        crit_at = compile_expression(critical, s)
    except Unsupported:
        return
    previous = None
    for x in grid:
        try:
            value = evaluate(crit_at, x)
        except EvalError:
            previous = None
            continue
        if not _is_real(value):
            previous = None
            continue
        if value == 0:
            _report_singularity(kind, phi, s, phi_at, x, x, x)
        if previous is not None and (previous[1] < 0) != (value < 0):
            _bisect_and_test(kind, crit_at, phi, s, phi_at, previous[0], x, previous[1] < 0)
        previous = (x, value)


def _bisect_and_test(kind, crit_at, phi, s, phi_at, a, b, negative_at_a: bool) -> None:
    lo, hi = a, b
    for _ in range(3 * DIGITS + 10):
        mid = mpmath.sqrt(lo * hi)
        try:
            value = evaluate(crit_at, mid)
        except EvalError:
            return
        if not _is_real(value):
            return
        if value == 0:
            lo = hi = mid
            break
        if (value < 0) == negative_at_a:
            lo = mid
        else:
            hi = mid
    _report_singularity(kind, phi, s, phi_at, (lo + hi) / 2, a, b)


def _identify(phi, s, root) -> str | None:
    """A message naming ``root`` exactly (e.g. ``s = pi/2 (phi = zoo)``) if it is a simple closed form."""
    try:
        candidate = sympy.nsimplify(float(root), [sympy.pi, sympy.E], tolerance=1e-12)
        if sympy.count_ops(candidate) > 6 or abs(float(candidate) - float(root)) > 1e-9 * float(root):
            return None
        value = phi.subs(s, candidate)
    except (ValueError, TypeError, ArithmeticError, RecursionError):
        return None
    if value.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        return f"s = {candidate} (phi = {value})"
    return None


def _report_singularity(kind, phi, s, phi_at, root, a, b) -> None:
    """Raise if phi blows up at ``root`` (a zero of a denominator / log argument bracketed by a, b)."""
    try:
        near = [abs(evaluate(phi_at, root * (1 + d))) for d in (mpmath.mpf("-1e-20"), mpmath.mpf("1e-20"))]
        far = [abs(evaluate(phi_at, x)) for x in (a, b)]
        detail = "|phi| -> infinity"
        singular = kind == "log" or max(near) > 1e8 * max(max(far), mpmath.mpf("1e-30"))
    except EvalError as exc:
        detail, singular = exc.detail, True
    if singular:
        exact = _identify(phi, s, root)
        raise _fail(
            f"phi is singular at {exact}" if exact else f"phi is singular at s = {_fmt(root)} ({detail})"
        )


# -- the check ------------------------------------------------------------------------------------------


def _validate_interval(s_lo, s_hi) -> tuple[float, float]:
    try:
        lo, hi = float(s_lo), float(s_hi)
    except (TypeError, ValueError):
        raise ValueError(f"s_lo and s_hi must be numbers, got {s_lo!r} and {s_hi!r}") from None
    if not (0 < lo < hi < math.inf):
        raise ValueError(f"need 0 < s_lo < s_hi < inf, got s_lo={s_lo!r}, s_hi={s_hi!r}")
    return lo, hi


def check_phi(
    phi: sympy.Expr, s: sympy.Symbol, *, s_lo: float = DEFAULT_S_LO, s_hi: float = DEFAULT_S_HI
) -> None:
    """Raise :class:`~derive.errors.AdmissibilityError` unless ``phi`` is admissible on ``[s_lo, s_hi]``.

    ``s`` must be the symbol ``phi`` is written in (for parsed expressions:
    :func:`derive.symbolic.expression.variable_symbol`). See the module docstring for the conditions and the
    method. Returns None when phi passes.
    """
    if not isinstance(phi, sympy.Expr):
        raise TypeError(f"phi must be a SymPy expression, got {type(phi).__name__}")
    if not isinstance(s, sympy.Symbol):
        raise TypeError(f"s must be a SymPy Symbol, got {type(s).__name__}")
    s_lo, s_hi = _validate_interval(s_lo, s_hi)

    others = sorted((sym for sym in phi.free_symbols if sym != s), key=str)
    if others:
        names = ", ".join(str(sym) for sym in others)
        hint = ""
        if any(sym.name == s.name for sym in others if isinstance(sym, sympy.Symbol)):
            hint = f" (a symbol named {s.name} with different assumptions; use variable_symbol({s.name!r}))"
        raise _fail(f"phi must depend only on {s}, but it also contains {names}{hint}")
    if s not in phi.free_symbols:
        raise _fail(f"phi must depend on {s}, but phi = {phi} is constant")
    if phi.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        bad = next(v for v in (sympy.zoo, sympy.nan, sympy.oo, -sympy.oo) if phi.has(v))
        raise _fail(f"phi is undefined as written (it contains {bad})")

    dphi = sympy.diff(phi, s)
    if dphi.has(sympy.Derivative, sympy.Subs):
        raise _fail(f"phi must be differentiable, but SymPy cannot differentiate it (d/ds phi = {dphi})")
    numerator = s * dphi - phi  # s^2 d/ds(phi/s) = s phi' - phi; h^2 = g^2 * numerator / phi

    with mpmath.workdps(DIGITS):
        try:
            phi_at = compile_expression(phi, s)
            numerator_at = compile_expression(numerator, s)
        except Unsupported as exc:
            raise _fail(f"phi contains {exc}, which cannot be evaluated") from None
        grid = _grid(s_lo, s_hi, GRID_POINTS)
        _check_singularities(phi, s, phi_at, grid, s_lo, s_hi)
        values = _check_values(phi_at, grid)
        if not _proves_nonnegative(numerator):
            _check_noise_fraction(phi_at, numerator_at, grid, values)


def _check_values(phi_at, grid) -> list:
    """phi on the grid, which must be real, finite and positive everywhere."""
    values = []
    for x in grid:
        try:
            value = evaluate(phi_at, x)
        except EvalError as exc:
            if exc.kind == "overflow":
                raise _fail(
                    f"phi must be positive and finite, but phi({_fmt(x)}) overflows ({exc.detail})"
                ) from None
            raise _fail(f"phi is singular at s = {_fmt(x)} ({exc.detail})") from None
        if not _is_real(value):
            raise _fail(f"phi must be real, but phi({_fmt(x)}) = {_fmt(value)}")
        if value <= 0:
            raise _fail(f"phi must be positive and finite, but phi({_fmt(x)}) = {_fmt(value)}")
        values.append(value)
    return values


def _noise_fraction(phi_at, numerator_at, x, phi_value=None):
    """r = (s phi' - phi)/phi at x, and N = s phi' - phi; raises AdmissibilityError when undefined."""
    try:
        if phi_value is None:
            phi_value = evaluate(phi_at, x)
        n = evaluate(numerator_at, x)
    except EvalError as exc:
        raise _fail(
            f"phi must be differentiable, but d/ds phi is undefined at s = {_fmt(x)} ({exc.detail})"
        ) from None
    if not _is_real(n) or not _is_real(phi_value):
        raise _fail(f"phi must be real and differentiable, but s*phi' - phi = {_fmt(n)} at s = {_fmt(x)}")
    if phi_value <= 0:
        raise _fail(f"phi must be positive and finite, but phi({_fmt(x)}) = {_fmt(phi_value)}")
    return n / phi_value, n


def _violation(x, n) -> AdmissibilityError:
    slope = n / (x * x)
    return _fail(
        f"phi(s)/s must be non-decreasing (h^2 >= 0), but d/ds(phi/s) = {_fmt(slope)} < 0 at s = {_fmt(x)}"
    )


def _check_noise_fraction(phi_at, numerator_at, grid, values) -> None:
    """r = s phi'/phi - 1 >= -TOLERANCE on the grid and at refined local minima."""
    fractions = [_noise_fraction(phi_at, numerator_at, x, v) for x, v in zip(grid, values)]
    ratios = [r for r, _ in fractions]
    for x, (r, n) in zip(grid, fractions):
        if r < -TOLERANCE:  # the first violation, from small s up
            raise _violation(x, n)

    last = len(grid) - 1
    minima = [
        i
        for i in range(len(grid))
        if (i == 0 or ratios[i] <= ratios[i - 1]) and (i == last or ratios[i] <= ratios[i + 1])
    ]
    minima.sort(key=lambda i: ratios[i])
    for i in minima[:REFINED_MINIMA]:
        a, b = grid[max(i - 1, 0)], grid[min(i + 1, last)]
        x, r, n = _golden_minimum(phi_at, numerator_at, a, b)
        if r < -TOLERANCE:
            raise _violation(x, n)


def _golden_minimum(phi_at, numerator_at, a, b):
    """Golden-section search for the minimum of r on [a, b] in log s; returns (x, r, N) of the best point."""
    invphi = (mpmath.sqrt(5) - 1) / 2
    lo, hi = mpmath.log(a), mpmath.log(b)

    def at(u):
        x = mpmath.exp(u)
        r, n = _noise_fraction(phi_at, numerator_at, x)
        return x, r, n

    c = hi - invphi * (hi - lo)
    d = lo + invphi * (hi - lo)
    fc, fd = at(c), at(d)
    best = min(fc, fd, key=lambda t: t[1])
    for _ in range(REFINE_ITERATIONS):
        if fc[1] < fd[1]:
            hi, d, fd = d, c, fc
            c = hi - invphi * (hi - lo)
            fc = at(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + invphi * (hi - lo)
            fd = at(d)
        best = min(best, fc, fd, key=lambda t: t[1])
        if best[1] < -TOLERANCE:
            break
    return best

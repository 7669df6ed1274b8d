"""Checks of every derived identity. A failed check raises DerivationError and nothing is emitted.

Identities that hold for every phi are proved with a generic SymPy function phi; the ones that depend on the
spec's phi are simplified to zero when SymPy can, and otherwise compared with mpmath at 50 digits.
"""

from __future__ import annotations

import dataclasses
import functools
import random

import mpmath
import sympy as sp

from derive.errors import DerivationError
from derive.symbolic.ersde import ERSDEStep, drift_and_diffusion, phi_generic, s, sigma, sigma_next
from derive.symbolic.ersde import v as log_step
from derive.symbolic.interpolation import (
    corrector_derivative_weights,
    derivative_weights,
    lagrange_basis,
    next_offset,
    offset_symbols,
    x,
)

CHECK_DPS = 50


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    statement: str
    method: str  # "symbolic" or "mpmath-50"
    residual: str


def _require(ok: bool, name: str, detail: str) -> None:
    if not ok:
        raise DerivationError(f"derived identity failed: {name}: {detail}")


def _is_zero(expr: sp.Expr) -> bool:
    return sp.simplify(expr) == 0


def _numerically_zero(expr: sp.Expr, points: list[dict], scale: sp.Expr | None = None) -> float:
    """Largest |expr| (relative to |scale|) at the given points, evaluated at 50 digits."""
    worst = mpmath.mpf(0)
    with mpmath.workdps(CHECK_DPS):
        for point in points:
            subs = {k: sp.Float(v, CHECK_DPS) for k, v in point.items()}
            value = abs(sp.N(expr.subs(subs), CHECK_DPS))
            if scale is not None:
                value /= abs(sp.N(scale.subs(subs), CHECK_DPS))
            worst = max(worst, mpmath.mpf(str(value)))
    return float(worst)


@functools.lru_cache(maxsize=1)
def generic_checks() -> tuple[Check, ...]:
    """Identities of the ER SDE solution that hold for every phi (proved symbolically)."""
    phi = phi_generic(s)
    dphi = sp.diff(phi, s)
    checks = []

    # 1. the ER SDE drift is linear: (phi'/phi) (y - x0)
    drift, h2 = drift_and_diffusion(phi)
    y, x0 = sp.symbols("y x0", real=True)
    _require(_is_zero(drift - dphi / phi * (y - x0)), "drift", f"{drift}")
    checks.append(
        Check("drift", "dy/ds = phi'/phi (y - x0) + h dw, h^2 = 2 s (s phi'/phi - 1)", "symbolic", "0")
    )

    # 2. variation of constants: with x0 constant, y(s) = r(s) y_i + (1 - r(s)) x0 solves the drift ODE
    r_of_s = phi / phi_generic(sigma)
    y_of_s = r_of_s * y + (1 - r_of_s) * x0
    residual = sp.diff(y_of_s, s) - (dphi / phi * (y_of_s - x0))
    _require(_is_zero(residual), "exact mean", str(residual))
    checks.append(
        Check("exact mean", "y(s) = r y_i + (1 - r) x0 solves the drift for constant x0", "symbolic", "0")
    )

    # 3. the noise variance solves the linear SDE's variance equation (reverse time): dV/ds = 2 phi'/phi V - h^2
    variance = s**2 - sigma**2 * r_of_s**2
    residual = sp.diff(variance, s) - (2 * dphi / phi * variance - h2)
    _require(_is_zero(residual), "variance equation", str(sp.simplify(residual)))
    _require(_is_zero(variance.subs(s, sigma)), "variance initial value", str(variance.subs(s, sigma)))
    checks.append(
        Check(
            "variance",
            "V = s^2 - sigma^2 r^2 solves dV/ds = 2 phi'/phi V - h^2, V(sigma) = 0",
            "symbolic",
            "0",
        )
    )

    # 4. integration by parts: d/ds[-(s - sigma)^n/(n! phi)] = phi'/phi^2 (s-sigma)^n/n! - (s-sigma)^(n-1)/((n-1)! phi)
    n = sp.Symbol("n", positive=True, integer=True)
    lhs = sp.diff(-((s - sigma) ** n) / (sp.factorial(n) * phi), s)
    rhs = dphi / phi**2 * (s - sigma) ** n / sp.factorial(n) - (s - sigma) ** (n - 1) / (
        sp.factorial(n - 1) * phi
    )
    # with s = sigma + d (d > 0) SymPy can combine the powers (s - sigma)^n = d * (s - sigma)^(n-1)
    d = sp.Symbol("d", positive=True)
    residual = sp.gammasimp((lhs - rhs).rewrite(sp.gamma)).subs(s, sigma + d)
    _require(_is_zero(sp.expand(residual)), "integration by parts", str(lhs - rhs))
    checks.append(
        Check(
            "integration by parts",
            "c_n = (sigma_next - sigma)^n/n! + phi(sigma_next) int (s-sigma)^(n-1)/((n-1)! phi) ds",
            "symbolic",
            "0",
        )
    )
    return tuple(checks)


def step_checks(step: ERSDEStep, closed_weights: dict[int, sp.Expr], reference) -> tuple[Check, ...]:
    """Checks specific to one phi. ``reference(n, a, b)`` is an independent mpmath quadrature of c_n."""
    checks = []
    phi = step.phi
    expected_ratio = phi.subs(s, sigma_next) / phi.subs(s, sigma)
    _require(_is_zero(step.ratio - expected_ratio), "ratio", str(step.ratio))
    expected_variance = sigma_next**2 - sigma**2 * expected_ratio**2
    _require(_is_zero(step.noise_variance - expected_variance), "noise variance", str(step.noise_variance))
    h2 = 2 * s * (s * sp.diff(phi, s) / phi - 1)
    v_of_s = s**2 - sigma**2 * (phi / phi.subs(s, sigma)) ** 2
    residual = sp.diff(v_of_s, s) - (2 * sp.diff(phi, s) / phi * v_of_s - h2)
    _require(_is_zero(residual), "variance equation for this phi", str(residual))
    checks.append(
        Check(
            "ratio and variance",
            "r = phi(s')/phi(s), v = s'^2 - s^2 r^2 solve the SDE for this phi",
            "symbolic",
            "0",
        )
    )

    # dyadic points: exactly representable, so the float reference and the exact closed form see the same step
    points = [(a, a * rho) for a in (0.0625, 1.0, 32.0) for rho in (0.875, 0.375)]
    for n, closed in sorted(closed_weights.items()):
        worst = 0.0
        for a, b in points:
            with mpmath.workdps(CHECK_DPS):
                value = sp.N(closed.subs({sigma: sp.Rational(a), sigma_next: sp.Rational(b)}), CHECK_DPS)
                exact = reference(n, a, b)
                worst = max(worst, float(abs((mpmath.mpf(str(value)) - exact) / exact)))
        _require(worst < 1e-25, f"closed form of c_{n}", f"differs from quadrature by {worst:.3g} (relative)")
        checks.append(
            Check(
                f"c_{n} closed form",
                f"SymPy's closed form of c_{n} equals the quadrature of its integral",
                "mpmath (30-digit quadrature)",
                f"{worst:.1e}",
            )
        )
    return tuple(checks)


@functools.cache
def interpolation_check(k: int, corrector: bool = False) -> Check:
    """D (or the corrector's D') is exact on polynomials of degree < k (<= k), with exact rational offsets."""
    D = corrector_derivative_weights(k) if corrector else derivative_weights(k)
    deltas = (next_offset, *offset_symbols(k)) if corrector else offset_symbols(k)
    size = len(D)
    rng = random.Random(k)
    for _ in range(2):
        values = sorted({sp.Rational(rng.randint(1, 997), rng.randint(1, 97)) for _ in range(k - 1)})
        while len(values) < k - 1:
            values.append(values[-1] + 1 if values else sp.Integer(1))
        nodes = [sp.Integer(0), *values]
        if corrector:  # the new point lies on the other side of u_i, a random fraction of the last step away
            nodes.insert(0, -sp.Rational(rng.randint(1, 997), rng.randint(1, 97)))
        subs = dict(zip(deltas, [nodes[0], *values] if corrector else values))
        for n in range(size):
            for p in range(size):
                got = sum(D[n][j].subs(subs) * nodes[j] ** p for j in range(size))
                want = sp.factorial(p) if p == n else 0
                name = "corrector" if corrector else "interpolation"
                _require(got == want, f"{name} derivative D[{n}] (k={k})", f"x^{p} gives {got}, want {want}")
    if corrector:
        return Check(
            f"corrector k={k}",
            f"D'_n through the new point is exact for x^p, p <= {k}",
            "symbolic (exact rationals)",
            "0",
        )
    return Check(f"interpolation k={k}", f"D_n is exact for x^p, p < {k}", "symbolic (exact rationals)", "0")


@functools.cache
def adams_identity_check(step: ERSDEStep, k: int, form: str, variable: str) -> Check:
    r"""Adams (integrated Lagrange basis) = Taylor (c_n times interpolated derivatives), in exact arithmetic.

    1. Exactly, at random rational nodes: :math:`\ell_j(x) = \sum_n D_{nj} x^n / n!` (the basis is its own
       Taylor polynomial), so :math:`\int \rho\,\ell_j = \sum_n D_{nj} c_n` by linearity.
    2. At 50 digits: both weight vectors for random step ratios, the Adams side by mpmath's tanh-sinh
       quadrature of :math:`\rho\,\ell_j`, the Taylor side from the Gauss-Legendre c_n; relative difference
       below 1e-40.
    """
    from derive.coefficients import weight_quantity

    basis, D, deltas = lagrange_basis(k), derivative_weights(k), offset_symbols(k)
    rng = random.Random(1000 + k)
    values = [
        sp.Rational(rng.randint(1, 997), rng.randint(1, 97)) * (-1 if variable == "lambda" else 1)
        for _ in range(k - 1)
    ]
    subs = dict(zip(deltas, values))
    for j in range(k):
        residual = sp.expand(
            basis[j].subs(subs) - sum(D[n][j].subs(subs) * x**n / sp.factorial(n) for n in range(k))
        )
        _require(residual == 0, f"Adams basis l_{j} (k={k})", str(residual))
    worst = 0.0
    with mpmath.workdps(CHECK_DPS):
        a = mpmath.mpf(1)
        b = a - mpmath.mpf(rng.uniform(0.05, 0.5))
        offsets, last = [], mpmath.mpf(0)
        for _ in range(k - 1):
            last += (a - b) * mpmath.mpf(rng.uniform(0.2, 4.5))
            offsets.append(last if variable == "s" else -mpmath.log1p(last))
        q0 = weight_quantity(step, 0, form, closed=False, variable=variable)
        density = sp.lambdify((sigma, log_step), q0.integrand, "mpmath")
        prefactor = sp.lambdify((sigma, sigma_next), q0.prefactor, "mpmath")(a, b)
        basis_mp = [sp.lambdify((x, *deltas), ell, "mpmath") for ell in basis]
        to_u = (lambda vv: mpmath.expm1(vv)) if variable == "s" else (lambda vv: -vv)
        lower = -mpmath.log(a / b)
        adams = [
            prefactor * mpmath.quad(lambda vv, f=f: density(a, vv) * f(to_u(vv), *offsets), [lower, 0])
            for f in basis_mp
        ]
        c = [order_integral(step, form, variable, a, b, n) / mpmath.factorial(n) for n in range(k)]
        matrix = [[sp.lambdify(deltas, D[n][j], "mpmath")(*offsets) for j in range(k)] for n in range(k)]
        taylor = [mpmath.fsum(c[n] * matrix[n][j] for n in range(k)) for j in range(k)]
        scale = max(abs(w) for w in taylor)
        worst = max(float(abs(p - q) / scale) for p, q in zip(adams, taylor))
    _require(
        worst < 1e-40, f"Adams = Taylor (k={k})", f"weights differ by {worst:.3g} (relative) at 50 digits"
    )
    return Check(
        f"adams k={k}",
        "int rho l_j = sum_n c_n D_nj (integrated Lagrange basis = Taylor weights)",
        "symbolic + mpmath-50",
        f"{worst:.1e}",
    )


def order_integral(step: ERSDEStep, form: str, variable: str, a, b, p: int, dps: int = 60):
    """prefactor * int (u - u_i)^p rho over the step [b, a] by a 128-point Gauss-Legendre rule in v = log(s/a)."""
    from derive.coefficients import _mp_rule, weight_quantity

    nodes, weights = _mp_rule(128, dps)
    with mpmath.workdps(dps):
        half = mpmath.log(a / b) / 2
        q = weight_quantity(step, p, form, closed=False, variable=variable)
        f = sp.lambdify((sigma, log_step), q.integrand, "mpmath")
        pre = sp.lambdify((sigma, sigma_next), q.prefactor, "mpmath")(a, b)
        return (
            pre
            * half
            * mpmath.fsum(w * f(a, half * (xk - 1)) for xk, w in zip(nodes, weights))
            * mpmath.factorial(p)
        )


@dataclasses.dataclass(frozen=True)
class OrderConditions:
    """Residuals of the update on monomials (x - s_i)^p, p = 0..K, relative to the exact integral."""

    residuals: tuple[float, ...]
    leading_constant: float

    def holds(self, order: int, tolerance: float = 1e-40) -> bool:
        below = all(abs(r) < tolerance for r in self.residuals[:order])
        return below and abs(self.residuals[order]) > 1e-20


def order_conditions(
    step: ERSDEStep,
    order: int,
    form: str,
    offsets: list,
    h: float,
    dps: int = 60,
    variable: str = "s",
    corrector: bool = False,
) -> OrderConditions:
    """Check that the K-step update integrates (x - s_i)^p exactly for p < K, and not for p = K, at ``dps`` digits.

    ``offsets`` are u_{i-j} - u_i (j = 1..K-1) in the expansion variable u (s, or lambda = -log s) and
    h = s_i - s_{i+1}, all relative to s_i = 1; the monomials are (u - u_i)^p. The update's
    weights are sum_n c_n D_nj with D from :func:`derivative_weights` (exact rationals) and c_n from a
    Gauss-Legendre rule at ``dps`` digits; the exact value is the integral of the monomial against the form's
    density. Returns the relative residuals and the leading local error constant residual_K / h^(K+1).

    ``corrector``: the corrector of the predictor-corrector method instead, with K + 1 nodes (the new point
    u_{i+1} first) and weights c_0 .. c_K: exact for p <= K, not for p = K + 1; residuals p = 0 .. K + 1 and
    the constant residual_{K+1} / h^(K+2).
    """
    from derive.coefficients import _mp_rule, weight_quantity

    size = order + 1 if corrector else order
    D = corrector_derivative_weights(order) if corrector else derivative_weights(order)
    deltas = (next_offset, *offset_symbols(order)) if corrector else offset_symbols(order)
    nodes, weights = _mp_rule(128, dps)
    with mpmath.workdps(dps):
        a = mpmath.mpf(1)
        b = a - mpmath.mpf(h)
        half = mpmath.log(a / b) / 2
        v_nodes = [half * (x - 1) for x in nodes]
        prefactor = sp.lambdify(
            (sigma, sigma_next), weight_quantity(step, 0, form, closed=False).prefactor, "mpmath"
        )(a, b)
        density = step.weight_density_log if form == "data" else s * step.noise_density
        dens = sp.lambdify(s, density, "mpmath")
        values = [dens(a * mpmath.exp(vv)) for vv in v_nodes]

        def integral(p: int):
            # prefactor * int (x - 1)^p rho(x) dx over [b, a], in v = log x (dx = x dv is inside `density`)
            terms = (
                w * f * (mpmath.expm1(vv) if variable == "s" else -vv) ** p
                for w, f, vv in zip(weights, values, v_nodes)
            )
            return prefactor * half * mpmath.fsum(terms)

        points = [mpmath.mpf(o) for o in offsets]
        if corrector:  # u_{i+1} - u_i: -h in s, log(s_i / s_{i+1}) in lambda = -log s
            points.insert(0, -mpmath.mpf(h) if variable == "s" else mpmath.log(a / b))
        c = [integral(n) / mpmath.factorial(n) for n in range(size)]
        subs = {
            d: sp.Float(o, dps) for d, o in zip(deltas, [points[0], *points[1:]] if corrector else points)
        }
        matrix = [[mpmath.mpf(str(sp.N(D[n][j].subs(subs), dps))) for j in range(size)] for n in range(size)]
        w = [mpmath.fsum(c[n] * matrix[n][j] for n in range(size)) for j in range(size)]
        points = [points[0], mpmath.mpf(0), *points[1:]] if corrector else [mpmath.mpf(0), *points]
        residuals = []
        for p in range(size + 1):
            exact = integral(p)
            got = mpmath.fsum(w[j] * points[j] ** p for j in range(size))
            residuals.append(float((got - exact) / abs(exact)) if exact != 0 else float(got))
        leading = float(
            (mpmath.fsum(w[j] * points[j] ** size for j in range(size)) - integral(size))
            / mpmath.mpf(h) ** (size + 1)
        )
    return OrderConditions(tuple(residuals), leading)

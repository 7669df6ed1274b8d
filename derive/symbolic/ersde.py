r"""The extended reverse-time SDE (ER SDE) in normalized coordinates, solved by variation of constants.

Normalized coordinates: :math:`y = x/\alpha`, :math:`s = \sigma/\alpha`; every diffusion process reduces to
the variance-exploding form :math:`y_s = x_0 + s\,\varepsilon`, whose forward SDE in the time variable
:math:`s` has :math:`f = 0`, :math:`g^2 = \mathrm{d}(s^2)/\mathrm{d}s = 2s`.

The ER SDE :math:`\mathrm{d}y = -\tfrac12 (g^2 + h^2)\nabla\log p_s(y)\,\mathrm{d}s + h\,\mathrm{d}\bar w`
with :math:`h^2 = g^2\,(s\varphi'/\varphi - 1)` and the data prediction
:math:`\nabla\log p_s(y) = (\hat x_0 - y)/s^2` is linear in :math:`y`:

.. math:: \mathrm{d}y = \frac{\varphi'}{\varphi}\,(y - \hat x_0)\,\mathrm{d}s + h\,\mathrm{d}\bar w .

What is typed and what is derived: the step's linear factor :math:`r = \varphi(s')/\varphi(s)` and its noise
variance :math:`V = s'^2 - s^2 r^2` are written here in closed form (the solutions of the linear drift and of
the variance equation by an integrating factor) and then *proved* for every phi
(:func:`derive.checks.generic_checks`, symbolically for a generic :math:`\varphi`, and
:func:`derive.checks.step_checks` for the concrete one: they must solve :math:`r' = (\varphi'/\varphi)\,r`
and :math:`V' = 2(\varphi'/\varphi)V - h^2` with :math:`r = 1`, :math:`V = 0` at the start). The noise
fraction, the weight densities and every Taylor weight :math:`c_n` with its closed form and small-step
series are derived by SymPy from :math:`\varphi`; the closed forms are then compared with the weights'
definition by mpmath quadrature. Nothing here is printed. Symbols: ``sigma`` is the
current noise level :math:`s_i`, ``sigma_next`` the next one :math:`s_{i+1} < s_i`, ``h = sigma - sigma_next``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

#: The expansion variable. Positive, so that SymPy simplifies powers and logs of it.
s = sp.Symbol("s", positive=True)
sigma = sp.Symbol("sigma", positive=True)
sigma_next = sp.Symbol("sigma_next", positive=True)
h = sp.Symbol("h", positive=True)
#: log(s / sigma) inside a step (<= 0): the quadrature variable.
v = sp.Symbol("v", nonpositive=True)
#: A generic noise-scale function, for identities that hold for every phi.
phi_generic = sp.Function("phi")


@dataclasses.dataclass(frozen=True)
class ERSDEStep:
    r"""The exact one-step solution of the ER SDE for a given phi, as SymPy expressions.

    .. math::
        y_{i+1} = r\,y_i + \varphi(s_{i+1}) \int_{s_{i+1}}^{s_i} \frac{\varphi'(s)}{\varphi(s)^2}
                  \hat x_0(y_s, s)\,\mathrm{d}s + \sqrt{v}\,z ,

    with :math:`r = \varphi(s_{i+1})/\varphi(s_i)` and :math:`v = s_{i+1}^2 - s_i^2 r^2`. Expanding
    :math:`\hat x_0` in a Taylor series about :math:`s_i` gives the weights
    :math:`c_n = \varphi(s_{i+1})\int_{s_{i+1}}^{s_i} \frac{\varphi'}{\varphi^2} \frac{(s-s_i)^n}{n!}\,\mathrm{d}s`
    of the n-th derivative.
    """

    phi: sp.Expr
    #: h^2 / g^2 = s phi'/phi - 1 (must be >= 0).
    noise_fraction: sp.Expr
    #: r = phi(sigma_next)/phi(sigma).
    ratio: sp.Expr
    #: v = sigma_next^2 - sigma^2 r^2, the variance of the injected noise.
    noise_variance: sp.Expr
    #: phi'/phi^2 as a function of s: the density that weights x0 in the exact solution.
    weight_density: sp.Expr
    #: s phi'/phi^2: the same density after the substitution s = e^u (ds = s du).
    weight_density_log: sp.Expr

    def weight_integrand(self, n: int) -> sp.Expr:
        """The integrand of c_n (without the phi(sigma_next) factor), a function of s."""
        return self.weight_density * (s - sigma) ** n / sp.factorial(n)

    def weight_integrand_log(self, n: int, variable: str = "s") -> sp.Expr:
        """The integrand of c_n in v = log(s/sigma), as a function of sigma and v.

        With s = sigma e^v, ds = s dv and s - sigma = sigma expm1(v): written this way the factor (s - sigma)^n
        is computed without cancellation even for tiny steps. In the variable lambda = -log s the expansion
        factor is (lambda - lambda_i)^n = (-v)^n.
        """
        return self.weight_density_log.subs(s, sigma * sp.exp(v)) * expansion_factor(n, variable)

    def weight_series_coefficients(self, n: int, terms: int, max_ops: int = 400) -> tuple[sp.Expr, ...]:
        """Small-step series of the data-form weight c_n (see :func:`series_coefficients`)."""
        return series_coefficients(self.weight_density, n, terms, max_ops)

    # ---- the noise-prediction form ------------------------------------------------------------------------
    # With eps = (y - x0)/s the same SDE reads dy = (s phi'/phi) eps ds + h dw: no linear term, so
    # y_{i+1} = y_i - sum_n e_n E_n + sqrt(w) z with e_n = int_{s'}^{s} (x phi'/phi) (x - s)^n / n! dx
    # and w = int_{s'}^{s} h^2 dx (eps frozen over the step, as in DPM-Solver's noise-prediction form).

    @property
    def noise_density(self) -> sp.Expr:
        """s phi'/phi: the density that weights eps in the noise-prediction form."""
        return sp.simplify(s * sp.diff(self.phi, s) / self.phi)

    def noise_integrand_log(self, n: int, variable: str = "s") -> sp.Expr:
        """Integrand of e_n in v = log(x/sigma) (dx = x dv, x - sigma = sigma expm1(v))."""
        x_of_v = sigma * sp.exp(v)
        return x_of_v * self.noise_density.subs(s, x_of_v) * expansion_factor(n, variable)

    def noise_form_variance_integrand_log(self) -> sp.Expr:
        """h^2 dx in v = log(x/sigma): the variance of the noise-form step."""
        x_of_v = sigma * sp.exp(v)
        return (x_of_v * 2 * s * self.noise_fraction).subs(s, x_of_v)


#: expansion variables: s = sigma/alpha (ER-SDE-Solver) or lambda = -log s = log(alpha/sigma) (DPM-Solver)
VARIABLES = ("s", "lambda")


def expansion_factor(n: int, variable: str) -> sp.Expr:
    """(u - u_i)^n / n! at x = sigma e^v, for the expansion variable u."""
    if variable == "s":
        return (sigma * expm1(v)) ** n / sp.factorial(n)
    if variable == "lambda":
        return (-v) ** n / sp.factorial(n)
    raise ValueError(f"unknown expansion variable {variable!r}")


def node_offset(variable: str) -> sp.Expr:
    """u(sigma_next) - u(sigma): the offset of an interpolation node in the expansion variable."""
    if variable == "s":
        return sigma_next - sigma
    # -log(sigma_next/sigma) as -log1p of the exact difference: no cancellation for nearby nodes
    return -log1p((sigma_next - sigma) / sigma)


def series_coefficients(density: sp.Expr, n: int, terms: int, max_ops: int = 400) -> tuple[sp.Expr, ...]:
    r"""Coefficients a_m(sigma) of the small-step series of int_{sigma-h}^{sigma} rho(x) (x - sigma)^n / n! dx

    .. math:: \sum_m a_m h^{n+m+1},\qquad a_m = \frac{(-1)^{n+m}\,\rho^{(m)}(\sigma)}{n!\,m!\,(n+m+1)},

    from expanding the density :math:`\rho` about :math:`\sigma` and integrating term by term. Stops early
    (returns fewer terms) once a coefficient grows beyond ``max_ops`` operations: such a series is not worth
    printing, and the caller falls back to quadrature.
    """
    out = []
    derivative = density
    for m in range(terms):
        if m:
            derivative = sp.diff(derivative, s)
            if sp.count_ops(derivative) > max_ops:
                break
            derivative = sp.factor(derivative) if sp.count_ops(derivative) < 60 else derivative
        coeff = (
            (-1) ** (n + m) * derivative.subs(s, sigma) / (sp.factorial(n) * sp.factorial(m) * (n + m + 1))
        )
        out.append(coeff)
    return tuple(out)


def closed_form_noise_weight(step: ERSDEStep, n: int) -> sp.Expr | None:
    """e_n in closed form, or None."""
    antiderivative = _antiderivative(sp.expand(step.noise_density * (s - sigma) ** n / sp.factorial(n)))
    if antiderivative is None:
        return None
    return sp.factor(antiderivative.subs(s, sigma) - antiderivative.subs(s, sigma_next))


def closed_form_noise_variance(step: ERSDEStep) -> sp.Expr | None:
    """w = int_{sigma_next}^{sigma} h^2 ds in closed form, or None."""
    antiderivative = _antiderivative(sp.expand(2 * s * step.noise_fraction))
    if antiderivative is None:
        return None
    return sp.factor(antiderivative.subs(s, sigma) - antiderivative.subs(s, sigma_next))


@functools.lru_cache(maxsize=256)
def closed_form_weight(step: ERSDEStep, n: int) -> sp.Expr | None:
    """c_n in closed form, or None when SymPy finds no antiderivative (or proves there is none).

    Uses the integration-by-parts form, which needs only antiderivatives of (s - sigma)^k / phi:

        c_0 = 1 - r,   c_n = (sigma_next - sigma)^n / n! + phi(sigma_next) * int_{sigma_next}^{sigma} (s - sigma)^(n-1) / ((n-1)! phi) ds.
    """
    phi_next = step.phi.subs(s, sigma_next)
    if n == 0:
        # factored, so that a factor (sigma - sigma_next) appears explicitly where it can
        return sp.factor(sp.together(1 - step.ratio))
    integrand = sp.expand((s - sigma) ** (n - 1)) / step.phi
    antiderivative = _antiderivative(sp.expand(integrand))
    if antiderivative is None:
        return None
    definite = antiderivative.subs(s, sigma) - antiderivative.subs(s, sigma_next)
    return sp.expand((sigma_next - sigma) ** n / sp.factorial(n)) + phi_next * definite / sp.factorial(n - 1)


def _antiderivative(expr: sp.Expr) -> sp.Expr | None:
    """Antiderivative in s by SymPy's Risch algorithm, or None where it finds none.

    Only deterministic algorithms decide: the Risch algorithm either returns an elementary antiderivative,
    proves there is none (a NonElementaryIntegral) or declines (an unevaluated Integral or
    NotImplementedError; the algebraic case). Rational powers s^(p/q) are first removed by s = u^L, L the
    least common denominator, so the default phi's s^(3/10) reaches the transcendental Risch algorithm.
    No time limit decides anything here: the answer, and so the generated text, is the same on any machine
    (a derivation that runs too long is refused as a whole, see ``derive_spec``).
    """
    expr = sp.expand(expr)
    denominators = sorted(
        {p.exp.q for p in expr.atoms(sp.Pow) if p.base == s and isinstance(p.exp, sp.Rational)}
    )
    scale = math.lcm(*denominators) if denominators else 1
    variable = _substitution_variable
    if scale > 1:
        integrand = sp.expand(
            sp.powsimp(expr.subs(s, variable**scale) * scale * variable ** (scale - 1), force=True)
        )
    else:
        integrand, variable = expr, s
    try:
        result = sp.integrate(integrand, variable, risch=True)
    except NotImplementedError:
        return None
    if result.has(sp.Integral):  # includes NonElementaryIntegral: proved to have no elementary antiderivative
        return None
    if scale > 1:
        result = sp.powsimp(result.subs(variable, s ** sp.Rational(1, scale)), force=True)
    return result


#: u with s = u^L in :func:`_antiderivative`
_substitution_variable = sp.Symbol("u_subst", positive=True)


@functools.lru_cache(maxsize=64)
def derive_step(phi: sp.Expr) -> ERSDEStep:
    """Derive the one-step solution for a noise-scale function ``phi`` of the symbol :data:`s`."""
    dphi = sp.diff(phi, s)
    noise_fraction = sp.simplify(s * dphi / phi - 1)
    ratio = sp.powsimp(sp.simplify(phi.subs(s, sigma_next) / phi.subs(s, sigma)), force=True)
    noise_variance = sp.factor(sp.simplify(sigma_next**2 - sigma**2 * ratio**2))
    weight_density = sp.simplify(dphi / phi**2)
    weight_density_log = sp.simplify(s * dphi / phi**2)
    return ERSDEStep(
        phi=phi,
        noise_fraction=noise_fraction,
        ratio=ratio,
        noise_variance=noise_variance,
        weight_density=weight_density,
        weight_density_log=weight_density_log,
    )


def drift_and_diffusion(phi: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """The ER SDE in s for the data prediction symbol ``x0``: returns (drift(y, x0, s), h^2(s)).

    Built from the general form dy = [f y - (g^2 + h^2)/2 * score] ds + h dw with f = 0, g^2 = 2s,
    score = (x0 - y)/s^2 and h^2 = g^2 (s phi'/phi - 1).
    """
    y, x0 = sp.symbols("y x0", real=True)
    g2 = sp.diff(s**2, s)
    h2 = g2 * (s * sp.diff(phi, s) / phi - 1)
    score = (x0 - y) / s**2
    drift = -(g2 + h2) / 2 * score
    return sp.simplify(drift), sp.simplify(h2)

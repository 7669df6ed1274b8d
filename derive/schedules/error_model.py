r"""The leading local error of a generated multistep step, derived from the same pieces as its weights.

A step of a data-form module replaces the prediction :math:`q(u)` (``x0``; ``eps`` in the noise form) inside
the exact one-step integral by the polynomial :math:`P` through the last :math:`k` outputs, at the nodes
:math:`\delta_0 = 0, \delta_1, \dots, \delta_{k-1}` (offsets :math:`u_{i-j} - u_i` in the expansion variable
``u`` = s or lambda). The interpolation error is
:math:`q - P = q^{(k)}(\xi)/k!\ \prod_{j<k} (x - \delta_j)` with :math:`x = u - u_i`, so the local error of the
step is, to leading order,

.. math:: y_{exact} - y_{step} = \frac{q^{(k)}(u_i)}{k!}\;
          \underbrace{\mathrm{pre}(s_i, s_{i+1}) \int_{-\log(s_i/s_{i+1})}^{0}
          \rho(s_i, v) \prod_{j<k}\big(x(v) - \delta_j\big)\,\mathrm{d}v}_{\kappa_k(s_i, s_{i+1}, \delta)},

with the prefactor and density :math:`\rho` of :math:`c_0` (:func:`derive.coefficients.weight_quantity`, the
quantity the emitter prints) and :math:`x(v) = s_i\,\mathrm{expm1}(v)` (u = s) or :math:`-v` (u = lambda).
The corrector of a predictor-corrector module adds the new node :math:`\delta_{next} = u_{i+1} - u_i` (k + 1
nodes, order k + 1). SymPy builds the kernel's integrand from those expressions; :func:`kernel_check` proves
at 50 digits that :math:`\kappa_k` equals minus the order-condition residual of :func:`derive.checks.order_conditions`
on the monomial :math:`x^k` (the weights the module uses, applied to :math:`x^k`, against the exact integral):
the kernel is the error of the derived weights, not a separate model of it.

Schedules are optimised with these kernels evaluated in float64 torch (16-point Gauss-Legendre in v, the
integrand is smooth and the product one-signed except across the corrector's new node), so the gradient
with respect to the noise levels comes from autograd.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import sympy as sp
import torch

from derive.families import FAMILIES as SPEC_FAMILIES
from derive.symbolic.ersde import derive_step, sigma, sigma_next, v
from derive.symbolic.interpolation import next_offset, offset_symbols

#: SymPy's printed names -> torch functions, for lambdify
_TORCH = {
    "expm1": torch.expm1,
    "exp": torch.exp,
    "log": torch.log,
    "log1p": torch.log1p,
    "sqrt": torch.sqrt,
    "sinh": torch.sinh,
    "cosh": torch.cosh,
    "tanh": torch.tanh,
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "asinh": torch.asinh,
    "atan": torch.atan,
    "erf": torch.erf,
    "Abs": torch.abs,
    "pi": np.pi,
    "E": np.e,
}

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)


def _x_of_v(variable: str) -> sp.Expr:
    """u(sigma e^v) - u(sigma): the expansion variable's offset inside the step."""
    from sympy.codegen.cfunctions import expm1

    if variable == "s":
        return sigma * expm1(v)
    if variable == "lambda":
        return -v
    raise ValueError(f"unknown expansion variable {variable!r}")


@dataclasses.dataclass(frozen=True)
class Kernel:
    """kappa_k for one (phi, form, variable, k, corrector): SymPy expressions and their torch functions."""

    k: int
    corrector: bool
    prefactor: sp.Expr
    integrand: sp.Expr
    symbols: tuple[sp.Symbol, ...]
    #: the density rho(sigma, v) of c_0 alone (the integrand without the node product)
    density: sp.Expr
    variable: str

    @functools.cached_property
    def _prefactor_fn(self):
        return sp.lambdify((sigma, sigma_next), self.prefactor, modules=[_TORCH, "math"])

    @functools.cached_property
    def _integrand_fn(self):
        return sp.lambdify((sigma, v, *self.symbols), self.integrand, modules=[_TORCH, "math"])

    @functools.cached_property
    def _density_fn(self):
        return sp.lambdify((sigma, v), self.density, modules=[_TORCH, "math"])

    @functools.cached_property
    def _x_fn(self):
        return sp.lambdify((sigma, v), _x_of_v(self.variable), modules=[_TORCH, "math"])

    def _quadrature(self, s_from, s_to, integrand):
        """pre * integral over the step of integrand(v) (Gauss-Legendre in v), per step."""
        nodes = torch.tensor(_GL_NODES, dtype=torch.float64)
        weights = torch.tensor(_GL_WEIGHTS, dtype=torch.float64)
        half = 0.5 * torch.log(s_from / s_to)
        vv = half[:, None] * (nodes[None, :] - 1)
        values = integrand(vv)
        values = torch.as_tensor(values, dtype=torch.float64) * torch.ones_like(vv)
        pre = torch.as_tensor(self._prefactor_fn(s_from, s_to), dtype=torch.float64) * torch.ones_like(half)
        return pre * half * (values @ weights)

    def __call__(self, s_from: torch.Tensor, s_to: torch.Tensor, offsets: list[torch.Tensor]) -> torch.Tensor:
        """kappa_k per step (float64 tensors of equal length; ``offsets`` as in :attr:`symbols`)."""
        args = [o[:, None] for o in offsets]
        return self._quadrature(s_from, s_to, lambda vv: self._integrand_fn(s_from[:, None], vv, *args))

    def weights(self, s_from: torch.Tensor, s_to: torch.Tensor, offsets: list[torch.Tensor]) -> torch.Tensor:
        """The step's weights on its outputs, shape (steps, nodes): pre * integral of rho times the Lagrange
        basis polynomial of each node (nodes 0 and ``offsets``; the corrector's new node first). These are the
        weights the module applies (up to its sign convention), whose residual on x^k is this kernel."""
        zero = torch.zeros_like(s_from)
        nodes = [offsets[0], zero, *offsets[1:]] if self.corrector else [zero, *offsets]
        out = []
        for j, node in enumerate(nodes):

            def basis(vv, j=j, node=node):
                x = self._x_fn(s_from[:, None], vv) * torch.ones_like(vv)
                value = self._density_fn(s_from[:, None], vv) * torch.ones_like(vv)
                for m, other in enumerate(nodes):
                    if m != j:
                        value = value * (x - other[:, None]) / (node - other)[:, None]
                return value

            out.append(self._quadrature(s_from, s_to, basis))
        return torch.stack(out, dim=1)

    def amplification(self, s_from: torch.Tensor, s_to: torch.Tensor, offsets: list[torch.Tensor]):
        """sum|w_j| / |sum w_j| per step: the module's test for dropping a stored output."""
        w = self.weights(s_from, s_to, offsets)
        return w.abs().sum(dim=1) / w.sum(dim=1).abs()


def _phi_expr(phi_text: str) -> sp.Expr:
    from derive.symbolic.expression import parse_expression

    return parse_expression(phi_text)


@functools.cache
def kernel(phi_text: str, form: str, variable: str, k: int, corrector: bool = False) -> Kernel:
    """The SymPy kernel of a step with ``k`` stored outputs (plus the new one for the corrector)."""
    from derive.coefficients import weight_quantity

    if k < 1:
        raise ValueError(f"k must be >= 1 (got {k})")
    step = derive_step(_phi_expr(phi_text))
    q0 = weight_quantity(step, 0, form, closed=False, variable=variable)
    history = offset_symbols(k)
    nodes = [sp.Integer(0), *history]
    symbols = tuple(history)
    if corrector:
        nodes = [next_offset, *nodes]
        symbols = (next_offset, *history)
    x = _x_of_v(variable)
    product = sp.Mul(*[x - node for node in nodes])
    return Kernel(
        k=k,
        corrector=corrector,
        prefactor=q0.prefactor,
        integrand=q0.integrand * product,
        symbols=symbols,
        density=q0.integrand,
        variable=variable,
    )


def kernel_check(
    phi_text: str, form: str, variable: str, k: int, corrector: bool, offsets, h: float
) -> tuple[float, float]:
    """(kappa at 50 digits, -residual of derive.checks.order_conditions), at s_i = 1, s_{i+1} = 1 - h.

    ``offsets`` are u_{i-j} - u_i (j = 1 .. k-1), as order_conditions takes them. Equal to ~45 digits when the
    kernel is the error of the derived weights.
    """
    import mpmath

    from derive.checks import order_conditions
    from derive.coefficients import _mp_rule

    kern = kernel(phi_text, form, variable, k, corrector)
    step = derive_step(_phi_expr(phi_text))
    cond = order_conditions(step, k, form, list(offsets), h, dps=60, variable=variable, corrector=corrector)
    size = k + 1 if corrector else k
    want = -cond.leading_constant * h ** (size + 1)
    nodes, weights = _mp_rule(128, 60)
    with mpmath.workdps(60):
        a, b = mpmath.mpf(1), 1 - mpmath.mpf(h)
        half = mpmath.log(a / b) / 2
        values = [mpmath.mpf(o) for o in offsets]
        if corrector:
            new = -mpmath.mpf(h) if variable == "s" else mpmath.log(a / b)
            values = [new, *values]
        f = sp.lambdify((sigma, v, *kern.symbols), kern.integrand, "mpmath")
        pre = sp.lambdify((sigma, sigma_next), kern.prefactor, "mpmath")(a, b)
        got = pre * half * mpmath.fsum(w * f(a, half * (xk - 1), *values) for xk, w in zip(nodes, weights))
    return float(got), float(want)


def module_error_spec(module) -> tuple[str, str, str, str]:
    """(phi text, form, variable, method) of a generated module, from its SPEC; ValueError if unsupported."""
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, dict) or "coefficient_table" not in dir(module):
        raise ValueError("module is not a generated sampler module (no SPEC / coefficient_table)")
    family = SPEC_FAMILIES.get(getattr(module, "FAMILY", spec.get("family")))
    if (family is None or not family.normalized) and not hasattr(module, "noise_scale_fn"):
        raise ValueError(
            f"module {spec} has no normalized-coordinate sample(); schedules need an ersde module"
        )
    if "variant" in spec or hasattr(module, "CLAIMED_ORDER"):
        raise ValueError(
            "published-sampler variants have no derived error kernel; use a catalogue ersde module"
        )
    phi = spec.get("phi", "s")  # the resolved expression (a process family's dynamics fix it)
    return (
        str(phi),
        str(module.FORM),
        str(spec.get("variable", "s")),
        str(getattr(module, "METHOD", "taylor")),
    )

r"""Derivatives of the interpolating polynomial through the last k model outputs.

The multistep Taylor method needs :math:`\hat x_0^{(n)}(s_i)` for n < k from the outputs at
:math:`s_i, s_{i-1}, \dots, s_{i-k+1}`. With offsets :math:`\delta_j = s_{i-j} - s_i` (:math:`\delta_0 = 0`)
the interpolating polynomial is :math:`P(x) = \sum_j \ell_j(x)\,\hat x_{0,i-j}` in :math:`x = s - s_i`, with
the Lagrange basis :math:`\ell_j(x) = \prod_{m \ne j} (x - \delta_m)/(\delta_j - \delta_m)`, so

.. math:: P^{(n)}(0) = \sum_j D_{n j}\,\hat x_{0,i-j},\qquad D_{nj} = n!\,[x^n]\,\ell_j(x).

Unlike plain backward differences (which are first-order accurate for the derivatives they estimate and so
cost the method an order), :math:`P^{(n)}(0)` is exact for every polynomial of degree < k.
"""

from __future__ import annotations

import functools

import sympy as sp

x = sp.Symbol("x")


def offset_symbols(k: int) -> tuple[sp.Symbol, ...]:
    """delta_1 .. delta_{k-1}: s_{i-j} - s_i, positive on a decreasing schedule."""
    return tuple(sp.Symbol(f"delta{j}", positive=True) for j in range(1, k))


def _lagrange_derivatives(nodes: tuple[sp.Expr, ...]) -> tuple[tuple[sp.Expr, ...], ...]:
    """D_nj = n! [x^n] l_j(x) for the Lagrange basis l_j on ``nodes``: P^(n)(0) = sum_j D_nj P(nodes[j])."""
    k = len(nodes)
    rows = [[sp.Integer(0)] * k for _ in range(k)]
    for j in range(k):
        numerator = sp.Poly(sp.prod([x - nodes[m] for m in range(k) if m != j]), x)
        denominator = sp.prod([nodes[j] - nodes[m] for m in range(k) if m != j])
        for n in range(k):
            coeff = numerator.coeff_monomial(x**n)
            rows[n][j] = sp.factor(sp.factorial(n) * coeff / denominator)
    return tuple(tuple(row) for row in rows)


@functools.cache
def derivative_weights(k: int) -> tuple[tuple[sp.Expr, ...], ...]:
    """The matrix D (k x k): row n gives the n-th derivative at s_i from the outputs at s_i, s_{i-1}, ...."""
    return _lagrange_derivatives((sp.Integer(0), *offset_symbols(k)))


@functools.cache
def lagrange_basis(k: int) -> tuple[sp.Expr, ...]:
    r"""The Lagrange basis :math:`\ell_j(x)` (j < k) on the nodes 0, delta_1, ..., delta_{k-1}, in x = u - u_i.

    The Adams (DEIS-type) weights integrate these directly against the step's density; expanding them in
    powers of x gives back the rows of :func:`derivative_weights` (:math:`D_{nj} = \ell_j^{(n)}(0)`).
    """
    nodes = (sp.Integer(0), *offset_symbols(k))
    return tuple(
        sp.sympify(sp.prod([(x - nodes[m]) / (nodes[j] - nodes[m]) for m in range(k) if m != j]))
        for j in range(k)
    )


#: u_{i+1} - u_i: the offset of the new point, where the predictor's state gives the next model output
next_offset = sp.Symbol("delta_next", real=True)


@functools.cache
def corrector_derivative_weights(k: int) -> tuple[tuple[sp.Expr, ...], ...]:
    r"""The matrix D' ((k+1) x (k+1)) of the corrector: derivatives at u_i of the polynomial through k + 1 outputs.

    Nodes, newest first: :math:`\delta_{next} = u_{i+1} - u_i` (the output at the predicted state), 0 (u_i),
    :math:`\delta_1, \dots, \delta_{k-1}`. Exact for every polynomial of degree <= k, so an update
    :math:`\sum_{n \le k} c_n D'_n` integrates one degree more than the k-output predictor.
    """
    return _lagrange_derivatives((next_offset, sp.Integer(0), *offset_symbols(k)))


@functools.cache
def adams_bashforth_lebesgue(k: int) -> sp.Rational:
    r"""The error-amplification (Lebesgue) constant of the k-step Adams-Bashforth quadrature on equal steps.

    Integrating the interpolating polynomial through nodes :math:`0, -1, \dots, -(k-1)` over :math:`[0, 1]`
    gives the weights :math:`b_j = \int_0^1 \ell_j`; :math:`\sum_j |b_j|` is the factor by which a
    perturbation of the stored outputs (rounding, model error, the noise an SDE feeds into them) can grow in
    one step. 1, 2, 11/3, 20/3, ... for k = 1, 2, 3, 4. Generated modules compare each step's own
    :math:`\sum_j |w_j| / |\sum_j w_j|` with a multiple of this value to decide how much history to use.
    """
    t = sp.Symbol("t")
    nodes = [sp.Integer(-j) for j in range(k)]
    total = sp.Integer(0)
    for j in range(k):
        basis = sp.prod([(t - nodes[m]) / (nodes[j] - nodes[m]) for m in range(k) if m != j])
        total += sp.Abs(sp.integrate(sp.expand(basis), (t, 0, 1)))
    return sp.nsimplify(total)

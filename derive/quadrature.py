"""Gauss-Legendre rules computed in mpmath, so the emitted nodes are the same on every machine."""

from __future__ import annotations

import functools

import mpmath


@functools.cache
def gauss_legendre(n: int, dps: int = 40) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Nodes and weights of the n-point rule on [-1, 1], correctly rounded to float64."""
    nodes, weights = gauss_legendre_mp(n, dps)
    return tuple(float(x) for x in nodes), tuple(float(w) for w in weights)


@functools.cache
def gauss_legendre_mp(n: int, dps: int = 40) -> tuple[tuple[mpmath.mpf, ...], tuple[mpmath.mpf, ...]]:
    """Nodes and weights of the n-point rule on [-1, 1] as mpmath numbers accurate to about ``dps`` digits.

    Roots of P_n by Newton's method from the Tricomi initial guesses, at ``dps`` digits.
    """
    if n < 1:
        raise ValueError("a Gauss-Legendre rule needs at least one node")
    with mpmath.workdps(dps):
        nodes, weights = [], []
        # the rule is symmetric: the roots in (0, 1) (and 0 for odd n) determine the rest
        for i in range(1, n // 2 + n % 2 + 1):
            middle = n % 2 and i == n // 2 + 1
            xk = (
                mpmath.mpf(0)
                if middle
                else mpmath.cos(mpmath.pi * (i - mpmath.mpf(1) / 4) / (n + mpmath.mpf(1) / 2))
            )
            for _ in range(0 if middle else 100):
                p, dp = _legendre_and_derivative(n, xk)
                step = p / dp
                xk -= step
                if abs(step) < mpmath.mpf(10) ** (-dps + 3):
                    break
            p, dp = _legendre_and_derivative(n, xk)
            wk = 2 / ((1 - xk**2) * dp**2)
            nodes.append(xk)
            weights.append(wk)
            if xk != 0:
                nodes.append(-xk)
                weights.append(wk)
        order = sorted(range(n), key=lambda j: nodes[j])
        return tuple(nodes[j] for j in order), tuple(weights[j] for j in order)


def _legendre_and_derivative(n: int, x):
    p0, p1 = mpmath.mpf(1), x
    for k in range(2, n + 1):
        p0, p1 = p1, ((2 * k - 1) * x * p1 - (k - 1) * p0) / k
    if n == 1:
        p0, p1 = mpmath.mpf(1), x
    dp = n * (x * p1 - p0) / (x**2 - 1)
    return p1, dp

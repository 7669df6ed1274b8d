"""What ``derive verify`` checks each measured order against, all in one place.

A study *passes* when its fitted order is at least ``claim - tolerance`` (only falling short fails: doing
better than claimed is reported, never an error), or when every error is at round-off level (the sampler is
exact on that problem; flagged as such). The claims, for a module of multistep order ``K``:

* **method order** (deterministic part, exact starting values): ``K``. For a probability-flow-ODE module
  (``phi = s``) this is the order of the sampler itself; for an SDE module it is measured with the noise
  switched off, i.e. on the drift ODE ``dy/ds = (phi'/phi) (y - x0(y, s))``, which is what the derived
  weights integrate. Float64 runs against closed-form or DOP853 references: tolerance 0.2.
* **strong order** (pathwise error against the module's own fine-grid limit on the same Brownian path):
  ``min(K, 1)``. The noise is additive and each step integrates it exactly, but the prediction along a
  Brownian path is only Hoelder-1/2 in ``s``, so no polynomial in ``s`` through past outputs reproduces it
  to better than ``O(h^(1/2))`` inside a step: the local error is ``O(h^(3/2))`` with (conditional) mean
  zero and the global pathwise error ``O(h)`` whatever ``K`` is (as for Euler-Maruyama on additive noise).
  Monte-Carlo estimate over a batch of paths: tolerance 0.3.
* **weak order** (computed exactly, no sampling error: mean and variance of the output on Gaussian data):
  ``min(K, 2)``. Measured: 1 for K = 1 and 2 for every K >= 2, with the module's own start and with the
  sub-step warm-up alike, so the limit is the scheme's, not its start's (the extrapolated predictions carry
  the previous steps' noise). Tolerance 0.2.

Reported, not checked: the as-used order of the deterministic part (the sampler started from a single state
with its lower-order first steps; 2 for K >= 3 asymptotically) and the orders with the ``--warmup substep``
start.
"""

from __future__ import annotations

#: method order (deterministic part, float64): pass if measured >= K - ODE_ORDER_TOL
ODE_ORDER_TOL = 0.2
#: strong (pathwise) order, Monte-Carlo estimate: pass if measured >= claim - STRONG_ORDER_TOL
STRONG_ORDER_TOL = 0.3
#: weak order, computed exactly on Gaussian data: pass if measured >= claim - WEAK_ORDER_TOL
WEAK_ORDER_TOL = 0.2

#: error floors relative to the magnitude of the solution; errors within 20x of them are not fitted. The
#: closed-form references are exact and the samplers' float64 round-off stays below ~1e-14 relative over
#: 1024 steps; DOP853 at rtol 3e-14 agrees with rtol 1e-13 to ~5e-14 relative. High orders need the room:
#: order 6 reaches its asymptotic slope only around 64 steps and 1e-12 relative error around 512.
EXACT_REFERENCE_FLOOR = 1e-14
DOP853_REFERENCE_FLOOR = 1e-13


def claimed_method_order(order: int) -> float:
    """Order of the deterministic part with exact starting values (pass the module's METHOD_ORDER: K, or K + 1
    for a predictor-corrector)."""
    return float(order)


def claimed_strong_order(order: int) -> float:
    """Strong (pathwise) order of an ER-SDE multistep sampler with exact noise integrals."""
    return float(min(order, 1))


def claimed_weak_order(order: int) -> float:
    """Weak order of an ER-SDE multistep sampler (exact noise integrals, polynomial predictions)."""
    return float(min(order, 2))


def tolerance_table() -> dict:
    """The claims and tolerances as plain data (written into the JSON report)."""
    return {
        "method_order": {"claim": "K", "tolerance": ODE_ORDER_TOL},
        "strong_order": {"claim": "min(K, 1)", "tolerance": STRONG_ORDER_TOL},
        "weak_order": {"claim": "min(K, 2)", "tolerance": WEAK_ORDER_TOL},
        "reported_only": ["as-used", "as-used+warmup", "weak+warmup"],
        "floors": {"exact_reference": EXACT_REFERENCE_FLOOR, "dop853_reference": DOP853_REFERENCE_FLOOR},
    }

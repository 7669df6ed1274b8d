"""The multistep methods, as values: one registry entry each.

A method says how a step's weights on the stored model outputs are formed from the derivation, which orders it
claims, which checks its derivation needs, and which runtime files (:mod:`derive.runtime`) carry it into a
generated module. Everything else -- the spec's choices, the emitter, the derivation's checks, the declared
orders -- reads these fields instead of comparing method names.
"""

from __future__ import annotations

import dataclasses

__all__ = ["METHODS", "Method", "method"]


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    summary: str
    #: the order over the interpolation order K: 1 for a corrector through the output at the predicted point
    order_gain: int = 0
    #: the weights are the step's density integrated against the Lagrange basis of the nodes (Adams form),
    #: rather than the Taylor weights c_n combined with the interpolant's derivative weights
    direct_weights: bool = False
    #: a corrector through the output at the predicted point (its derivative weights and checks are derived)
    corrector: bool = False
    #: the runtime files, besides the shared ones, that carry the method into a module
    runtime: tuple[str, ...] = ("taylor", "predictor")

    def order(self, k: int) -> int:
        """The convergence order of this method with K = k stored outputs."""
        return k + self.order_gain


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "taylor",
            "Taylor form: w_j = sum_n c_n D_nj, the step's Taylor weights times the interpolant's derivative weights",
        ),
        Method(
            "adams",
            "Adams form: w_j = the step's density against the Lagrange basis of the nodes (DEIS-style quadrature)",
            direct_weights=True,
            runtime=("adams", "predictor"),
        ),
        Method(
            "pc",
            "predictor-corrector: the Taylor predictor and a corrector through the output at the predicted point",
            order_gain=1,
            corrector=True,
            runtime=("taylor", "corrector"),
        ),
    )
}


def method(name: str) -> Method:
    """The registered method called ``name`` (KeyError if there is none)."""
    return METHODS[name]

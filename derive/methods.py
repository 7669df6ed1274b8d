"""The multistep methods, as values: one registry entry each.

A method says how a step's weights on the stored model outputs are formed from the derivation, which orders it
claims, which checks its derivation needs, and which runtime files (:mod:`derive.runtime`) carry it into a
generated module. Everything else -- the spec's choices, the emitter, the derivation's checks, the declared
orders -- reads these fields instead of comparing method names.
"""

from __future__ import annotations

import dataclasses

_ADAMS_DOC = """\
Adams form (this module): the weights are computed per stored output, by integrating the Lagrange basis
l_j of the nodes u_i, u_{i-1}, ... directly against the step's density (DEIS-style),

    w_ij = $weight_integral,

by Gauss-Legendre quadrature in log s. In exact arithmetic w_ij = sum_n ${c}_n D_nj (checked at 50 digits when
this file was generated); only the floating-point arrangement differs from the Taylor form."""

_CORRECTION_DOC = """\
applied as y^c_{i+1} = y^p_{i+1} + sum_j d_ij P_{i+1-j} with d_i = wc_i minus the predictor's weights (the
same noise z_i). The next step starts from y^c_{i+1} with the stored output P_{i+1} from y^p_{i+1}. There is
no correction after the last step, on or before a final step to sigma = 0, or on or before a zero-length
step (a repeated sigma)."""

_PC_DOC = f"""\
Predictor-corrector (order K + 1 = $method_order, no extra model call): the step above is the predictor
y^p_{{i+1}}. The model output there, P_{{i+1}}, is the next step's output anyway; with it the polynomial through
K + 1 outputs (P_{{i+1}} first) gives the corrector, exact for polynomials of degree <= K:

    y^c_{{i+1}} = ratio_i y_i + sum_{{j=0..K}} wc_ij P_{{i+1-j}} + std_i z_i,   wc_ij = sum_{{n<=K}} c_n D'_nj,

{_CORRECTION_DOC}"""

_AM_DOC = f"""\
Predictor-corrector with an Adams-Moulton corrector of the predictor's order (order K = $method_order, no extra
model call): the step above is the predictor y^p_{{i+1}}. The model output there, P_{{i+1}}, is the next step's
output anyway; with it the polynomial through P_{{i+1}} and the K - 1 newest stored outputs gives the corrector,
exact for polynomials of degree < K like the predictor, with the smaller error constant of an interpolant
whose nodes span the step instead of extrapolating beyond them:

    y^c_{{i+1}} = ratio_i y_i + sum_{{j=0..K-1}} wc_ij P_{{i+1-j}} + std_i z_i,   wc_ij = sum_{{n<K}} c_n D'_nj,

{_CORRECTION_DOC} The predictor's error reaches the corrector only through P_{{i+1}}, times a weight of the
order of the step, so it does not enter the leading error."""

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
    #: how many of the oldest stored outputs the corrector leaves out: 0, it interpolates the new output and
    #: all K stored ones (order K + 1); 1, the new output and the K - 1 newest (order K, Adams-Moulton style)
    corrector_drop: int = 0
    #: the smallest K the method is defined for
    min_order: int = 1
    #: the runtime files, besides the shared ones, that carry the method into a module
    runtime: tuple[str, ...] = ("taylor", "predictor")
    #: the module's title, after the dynamics: {order} is K, {method_order} the method's order
    title: str = "solver of order {order}"
    #: the paragraph of the module's docstring that describes the method (a string.Template: $order,
    #: $method_order, $weight_integral -- the form's weight integral -- and $c, the form's coefficient letter)
    doc: str = ""

    def __post_init__(self) -> None:
        if self.corrector and self.order_gain != 1 - self.corrector_drop:
            raise ValueError(
                f"method {self.name}: a corrector through K + 1 - drop nodes gains 1 - drop orders"
            )

    def order(self, k: int) -> int:
        """The convergence order of this method with K = k stored outputs."""
        return k + self.order_gain

    def corrector_sizes(self, k: int) -> range:
        """The stored-output counts the corrector of a K = k module may use (its guard may use fewer)."""
        if not self.corrector:
            return range(0)
        return range(1, max(k - self.corrector_drop, 1) + 1)


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
            title="Adams-type solver of order {order}",
            doc=_ADAMS_DOC,
        ),
        Method(
            "pc",
            "predictor-corrector: the Taylor predictor and a corrector through the output at the predicted point",
            order_gain=1,
            corrector=True,
            runtime=("taylor", "corrector"),
            title="predictor-corrector of order {method_order} (predictor of order {order})",
            doc=_PC_DOC,
        ),
        Method(
            "am",
            "Adams-Moulton corrector of the predictor's order: the Taylor predictor corrected through the output "
            "at the predicted point and the K - 1 newest stored outputs (order K, a smaller error constant)",
            corrector=True,
            corrector_drop=1,
            min_order=2,
            runtime=("taylor", "corrector"),
            title="predictor-corrector of order {method_order} (Adams-Moulton corrector of the predictor's order)",
            doc=_AM_DOC,
        ),
    )
}


def method(name: str) -> Method:
    """The registered method called ``name`` (KeyError if there is none)."""
    return METHODS[name]

r"""Published samplers, written with the framework's own symbolic pieces.

A *variant* is a published multistep update of the ER SDE in normalized coordinates. What it shares with the
derived solvers comes from the derivation: the dynamics (phi), the exact step ratio ``r``, the noise variance
and the Taylor weights of the exponential integrator,

.. math:: c_n = \varphi(s_{i+1}) \int_{s_{i+1}}^{s_i} \frac{\varphi'}{\varphi^2} \frac{(u - u_i)^n}{n!}\,\mathrm ds
   \quad\text{(data form)},\qquad
   e_n = \int_{s_{i+1}}^{s_i} \frac{s\varphi'}{\varphi} \frac{(u - u_i)^n}{n!}\,\mathrm ds \quad\text{(noise form)},

in the expansion variable ``u`` (``s`` or ``lambda = -log s``). What the variant fixes, as its authors
published it, is how the derivatives of the prediction are estimated from the stored outputs and which weight
multiplies each estimate. Those choices are definitions (cited next to each), not derivations.

Every update is written for ``k`` stored outputs ``m0`` (newest), ``m1``, ``m2`` with

* ``step`` = ``u_{i+1} - u_i`` (``h`` of DPM-Solver in lambda, ``s_{i+1} - s_i < 0`` in s),
* ``delta_j`` = ``u_{i-j} - u_i`` (``-r_0 h``, ``-(r_0 + r_1) h`` in DPM-Solver's notation),
* ``c0, c1, c2`` (data form) or ``e0, e1, e2`` (noise form) the framework's Taylor weights of this step,

and the stage is the prediction term ``P`` of ``y_{i+1} = r y_i + P + sqrt(v) z``. Nothing here prints.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools

import sympy as sp

from derive.errors import DerivationError, SpecError
from derive.spec import Spec
from derive.symbolic.interpolation import derivative_weights, offset_symbols

#: the step in the expansion variable, u_{i+1} - u_i
step = sp.Symbol("step", nonzero=True)
delta1, delta2 = offset_symbols(3)
outputs = sp.symbols("m0 m1 m2", real=True)
m0, m1, m2 = outputs
#: the model output at the predicted state, which a corrector (UniC) uses to correct that state
mt = sp.Symbol("mt", real=True)
#: names of the published derivative estimates, as they appear in the printed update formulas
D1, D2 = sp.symbols("D1 D2", real=True)


def taylor_symbols(form: str) -> tuple[sp.Symbol, ...]:
    """c0, c1, c2 (data form) or e0, e1, e2 (noise form): the framework's weights of one step."""
    return sp.symbols(("c0 c1 c2 c3" if form == "data" else "e0 e1 e2 e3"), real=True)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A published finite-difference estimate: ``expr`` ~ ``scale`` x (n-th derivative in u at u_i).

    ``exact_degree``: the estimate is exact for every polynomial of at most this degree (checked).
    """

    symbol: sp.Symbol
    expr: sp.Expr
    derivative: int
    scale: sp.Expr
    exact_degree: int


@dataclasses.dataclass(frozen=True)
class Stage:
    """The update with ``k`` stored outputs: P = ``published`` with the estimates substituted."""

    k: int
    published: sp.Expr
    estimates: tuple[Estimate, ...] = ()
    #: a corrector stage: its first input is ``mt``, the output at the state it corrects, then m0, m1, ...
    corrector: bool = False

    @property
    def prediction_term(self) -> sp.Expr:
        return sp.expand(self.published.subs({e.symbol: e.expr for e in self.estimates}))

    @property
    def inputs(self) -> tuple[sp.Symbol, ...]:
        return (mt, *outputs[: self.k - 1]) if self.corrector else outputs[: self.k]

    def output_weights(self) -> tuple[sp.Expr, ...]:
        """W_j: the coefficient of each input in P (P is linear in them)."""
        term = self.prediction_term
        return tuple(sp.factor(sp.together(sp.diff(term, symbol))) for symbol in self.inputs)


@dataclasses.dataclass(frozen=True)
class Claim:
    """What a publication (or the code that ships it) says about the method's order."""

    order: int
    where: str


@dataclasses.dataclass(frozen=True)
class Peer:
    """An installable implementation the variant is checked against, and how to configure it alike."""

    name: str
    config: str


@dataclasses.dataclass(frozen=True)
class Variant:
    """A published sampler: the base derivation (phi, form, variable) plus one stage per history length."""

    key: str
    title: str
    phi: str
    form: str
    variable: str
    stages: tuple[Stage, ...]
    #: citation lines: where the update (its estimates and weights) is published
    source: tuple[str, ...]
    claim: Claim
    peer: Peer | None = None
    #: per predictor stage (history length p), the corrector applied once the next output is known (UniC)
    correctors: tuple[Stage, ...] = ()

    # ---- the interface of a Spec that emission and the manifest use -------------------------------------
    @property
    def order(self) -> int:
        return len(self.stages)

    @property
    def name(self) -> str:
        return f"variant_{self.key}"

    @property
    def base_spec(self) -> Spec:
        """The derivation whose ratio, noise variance and Taylor weights the variant uses. Its own module (the
        interpolating polynomial's derivatives instead of the published estimates) is the derived solver of the
        same cost per step."""
        return Spec("ersde", self.weights_needed, self.phi, prediction=self.form, variable=self.variable)

    @property
    def weights_needed(self) -> int:
        """How many Taylor weights c_0, c_1, ... the stages use (a corrector uses one more than the history)."""
        return self.order + (1 if self.correctors else 0)

    @property
    def derived(self) -> str:
        return self.base_spec.name

    def as_dict(self) -> dict:
        return {
            "variant": self.key,
            "family": "ersde",
            "order": self.order,
            "phi": self.base_spec.phi_text,
            "method": "published",
            "prediction": self.form,
            "variable": self.variable,
        }

    @property
    def digest(self) -> str:
        stages = [str(s.prediction_term) for s in (*self.stages, *self.correctors)]
        from derive.provenance import digest

        return digest({**self.as_dict(), "stages": stages})


# --------------------------------------------------------------------------------------------------
# the published derivative estimates
# --------------------------------------------------------------------------------------------------

# DPM-Solver / DPM-Solver++ (Lu et al. 2022, arXiv:2206.00927 and arXiv:2211.01095): r0 = h_0/h, r1 = h_1/h with
# h_0 = lambda_i - lambda_{i-1}, h_1 = lambda_{i-1} - lambda_{i-2}; in our offsets h_0 = -delta1, h_1 = delta1 - delta2.
_r0 = -delta1 / step
_r1 = (delta1 - delta2) / step
_D1_0 = (m0 - m1) / _r0
_D1_1 = (m1 - m2) / _r1

#: DPM-Solver++(2M), Algorithm 2 of arXiv:2211.01095: D1 = (m0 - m1) / r0 ~ h x0'
DPM_D1_2M = Estimate(D1, _D1_0, 1, step, 1)
#: the third-order multistep update (DPM-Solver's multistep_dpm_solver_third_update, diffusers'
#: multistep_dpm_solver_third_order_update): D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1) ~ h x0',
#: D2 = (D1_0 - D1_1)/(r0 + r1) ~ h^2 x0''/2
DPM_D1_3M = Estimate(D1, _D1_0 + _r0 / (_r0 + _r1) * (_D1_0 - _D1_1), 1, step, 2)
DPM_D2_3M = Estimate(D2, (_D1_0 - _D1_1) / (_r0 + _r1), 2, step**2 / 2, 2)

# ER-SDE-Solver (Cui et al. 2023, arXiv:2309.06169, the multistep Taylor solvers of orders 2 and 3): backward
# differences in s, D1_i = (m_i - m_{i-1}) / (s_i - s_{i-1}) ~ x0', D2 = 2 (D1_i - D1_{i-1}) / (s_i - s_{i-2}) ~ x0''.
_ER_D1_0 = (m0 - m1) / (-delta1)
_ER_D1_1 = (m1 - m2) / (delta1 - delta2)
ER_D1 = Estimate(D1, _ER_D1_0, 1, sp.Integer(1), 1)
ER_D2 = Estimate(D2, 2 * (_ER_D1_0 - _ER_D1_1) / (-delta2), 2, sp.Integer(1), 1)


def _interpolation_stage(k: int, weights: tuple[sp.Symbol, ...]) -> sp.Expr:
    """sum_n w_n P^(n)(u_i): the derivatives of the polynomial through k outputs (the framework's own rows)."""
    rows = derivative_weights(k)
    return sum(weights[n] * sum(rows[n][j] * outputs[j] for j in range(k)) for n in range(k))


# --------------------------------------------------------------------------------------------------
# the catalogue of variants
# --------------------------------------------------------------------------------------------------

_c0, _c1, _c2, _c3 = taylor_symbols("data")
_e0, _e1, _e2, _e3 = taylor_symbols("noise")

_DIFFUSERS = "diffusers 0.42.1 scheduling_dpmsolver_multistep.py"
_DPMPP_PAPER = "Lu et al. 2022, DPM-Solver++ (arXiv:2211.01095)"
_DPM_PAPER = "Lu et al. 2022, DPM-Solver (arXiv:2206.00927)"
_DPM_CODE = "LuChengTHU/dpm-solver dpm_solver_pytorch.py multistep_dpm_solver_third_update"
_ERSDE_PAPER = (
    "Cui et al. 2023, Elucidating the solution space of extended reverse-time SDE (arXiv:2309.06169)"
)


# The DPM-Solver-type stages. Data form: x0 expanded in lambda (DPM-Solver++); noise form: eps expanded in lambda
# (DPM-Solver). The weights of the published updates are the framework's Taylor weights divided by h^n, except the
# "midpoint" weight of D1, c0/2 (= -alpha_t (e^{-h} - 1)/2 in VP coordinates), and the D2 weight of the
# third-order update, c2/h^2 (= -alpha_t phi_3 there): the Taylor term of x0'' needs 2 c2/h^2 with this D2.
_FIRST = Stage(1, _c0 * m0)
_MIDPOINT = Stage(2, _c0 * m0 + _c0 / 2 * D1, (DPM_D1_2M,))
_HEUN = Stage(2, _c0 * m0 + _c1 / step * D1, (DPM_D1_2M,))
_THIRD = Stage(3, _c0 * m0 + _c1 / step * D1 + _c2 / step**2 * D2, (DPM_D1_3M, DPM_D2_3M))
_N_FIRST = Stage(1, -_e0 * m0)
_N_MIDPOINT = Stage(2, -(_e0 * m0 + _e0 / 2 * D1), (DPM_D1_2M,))
_N_HEUN = Stage(2, -(_e0 * m0 + _e1 / step * D1), (DPM_D1_2M,))
_N_THIRD = Stage(3, -(_e0 * m0 + _e1 / step * D1 + _e2 / step**2 * D2), (DPM_D1_3M, DPM_D2_3M))


#: (key, title, dynamics, form, second stage, order, diffusers algorithm_type, sources, claim order, claim text)
_DPM_TABLE = (
    ("dpmpp_2m", "DPM-Solver++(2M), midpoint form (data prediction, probability-flow ODE)", "ode", "data",
     "midpoint", 2, "dpmsolver++",
     (f"{_DPMPP_PAPER}, Algorithm 2 (DPM-Solver++(2M)): D = (1 + 1/(2 r)) m0 - 1/(2 r) m1", _DIFFUSERS),
     f"{_DPMPP_PAPER}, Algorithm 2: second-order multistep"),
    ("dpmpp_2m_heun", "DPM-Solver++(2M), heun form (data prediction, probability-flow ODE)", "ode", "data",
     "heun", 2, "dpmsolver++",
     (f"{_DIFFUSERS} solver_type='heun': D1 weight alpha_t ((e^-h - 1)/h + 1)", _DPMPP_PAPER),
     f"{_DIFFUSERS}: solver_order=2"),
    ("dpmpp_3m", "DPM-Solver++(3M) (data prediction, probability-flow ODE; second step: 2M midpoint)", "ode",
     "data", "midpoint", 3, "dpmsolver++",
     (f"{_DPM_CODE} (algorithm dpmsolver++)", f"{_DIFFUSERS} multistep_dpm_solver_third_order_update"),
     f"{_DIFFUSERS}: solver_order=3 (third-order multistep)"),
    ("dpm_2m", "DPM-Solver 2M, midpoint form (noise prediction, probability-flow ODE)", "ode", "noise",
     "midpoint", 2, "dpmsolver",
     (f"{_DPM_PAPER}, multistep form as in {_DIFFUSERS} (algorithm_type='dpmsolver')",),
     f"{_DIFFUSERS}: solver_order=2"),
    ("dpm_2m_heun", "DPM-Solver 2M, heun form (noise prediction, probability-flow ODE)", "ode", "noise",
     "heun", 2, "dpmsolver",
     (f"{_DIFFUSERS} algorithm_type='dpmsolver', solver_type='heun'", _DPM_PAPER),
     f"{_DIFFUSERS}: solver_order=2"),
    ("dpm_3m", "DPM-Solver 3M (noise prediction, probability-flow ODE; second step: 2M midpoint)", "ode",
     "noise", "midpoint", 3, "dpmsolver",
     (f"{_DPM_CODE} (algorithm dpmsolver)", f"{_DIFFUSERS} multistep_dpm_solver_third_order_update"),
     f"{_DIFFUSERS}: solver_order=3 (third-order multistep)"),
    ("sde_dpmpp_2m", "SDE-DPM-Solver++(2M), midpoint form (data prediction, reverse SDE)", "sde", "data",
     "midpoint", 2, "sde-dpmsolver++",
     (f"{_DPMPP_PAPER}, SDE-DPM-Solver++(2M)", f"{_DIFFUSERS} algorithm_type='sde-dpmsolver++'"),
     f"{_DIFFUSERS}: solver_order=2 (drift: second order)"),
    ("sde_dpmpp_2m_heun", "SDE-DPM-Solver++(2M), heun form (data prediction, reverse SDE)", "sde", "data",
     "heun", 2, "sde-dpmsolver++",
     (f"{_DIFFUSERS} algorithm_type='sde-dpmsolver++', solver_type='heun'", _DPMPP_PAPER),
     f"{_DIFFUSERS}: solver_order=2 (drift: second order)"),
)  # fmt: skip


def _dpm_variants() -> list[Variant]:
    out = []
    for key, title, dynamics, form, second, order, algorithm, source, claim in _DPM_TABLE:
        first, midpoint, heun, third = (
            (_FIRST, _MIDPOINT, _HEUN, _THIRD)
            if form == "data"
            else (_N_FIRST, _N_MIDPOINT, _N_HEUN, _N_THIRD)
        )
        stages = (first, midpoint if second == "midpoint" else heun, third)[:order]
        config = f"algorithm_type={algorithm!r}, solver_order={order}, solver_type={second!r}"
        peer = Peer("DPMSolverMultistepScheduler", config)
        out.append(Variant(key, title, dynamics, form, "lambda", stages, source, Claim(order, claim), peer))
    return out


def _first_order_variants() -> list[Variant]:
    return [
        Variant(
            "ddim",
            "DDIM, eta = 0 (data prediction, probability-flow ODE)",
            "ode",
            "data",
            "s",
            (Stage(1, _c0 * m0),),
            ("Song, Meng & Ermon 2021, DDIM (arXiv:2010.02502), eq. 12 with sigma_t = 0",),
            Claim(
                1, "Song et al. 2021: the Euler step of the probability-flow ODE in (sigma/alpha, x/alpha)"
            ),
            Peer("DDIMScheduler", "eta=0"),
        ),
        Variant(
            "ddpm",
            "DDPM ancestral sampling, eta = 1 (data prediction, reverse SDE)",
            "sde",
            "data",
            "s",
            (Stage(1, _c0 * m0),),
            (
                "Ho, Jain & Abbeel 2020, DDPM (arXiv:2006.11239), Algorithm 2 with the posterior q(x_t' | x_t, x0)",
            ),
            Claim(
                1,
                "no order stated by Ho et al.; 1: the Euler-Maruyama-type discretization it is (Song et al. 2021, score SDE)",
            ),
            Peer("DDPMScheduler", "variance_type='fixed_small'"),
        ),
    ]


def _deis_variants() -> list[Variant]:
    # DEIS with the Lagrange polynomial of eps in log rho, integrated exactly against d rho (rhoAB-DEIS): in
    # normalized coordinates rho = s and log rho = -lambda, so this is the framework's noise form expanded in
    # lambda with the interpolating polynomial's derivatives (the same polynomial, so the same update).
    out = []
    for k in (1, 2, 3):
        stages = tuple(Stage(j, -_interpolation_stage(j, (_e0, _e1, _e2))) for j in range(1, k + 1))
        out.append(
            Variant(
                f"deis_{k}",
                f"DEIS, rhoAB order {k} (noise prediction, probability-flow ODE)",
                "ode",
                "noise",
                "lambda",
                stages,
                (
                    "Zhang & Chen 2023, DEIS (arXiv:2204.13902), rhoAB-DEIS: Lagrange polynomial of eps in log rho",
                    "diffusers 0.42.1 scheduling_deis_multistep.py (algorithm_type='deis', ind_fn integrals)",
                ),
                Claim(k, "Zhang & Chen 2023: order of the extrapolating polynomial"),
                Peer("DEISMultistepScheduler", f"solver_order={k}"),
            )
        )
    return out


def _ersde_variants() -> list[Variant]:
    # ER-SDE-Solver-k (data prediction, expanded in s, the paper's default noise-scale function): the weights are
    # the exact Taylor weights c_n (the paper's integrals; its code evaluates them by numerical quadrature), the
    # derivatives are the backward differences ER_D1, ER_D2.
    stages = (
        Stage(1, _c0 * m0),
        Stage(2, _c0 * m0 + _c1 * D1, (ER_D1,)),
        Stage(3, _c0 * m0 + _c1 * D1 + _c2 * D2, (ER_D1, ER_D2)),
    )
    out = []
    for k in (1, 2, 3):
        out.append(
            Variant(
                f"ersde_solver_{k}",
                f"ER-SDE-Solver-{k} (data prediction, ER SDE with the paper's noise-scale function)",
                "default",
                "data",
                "s",
                stages[:k],
                (
                    f"{_ERSDE_PAPER}: ER-SDE-Solver-{k}, Taylor expansion of x0 in sigma with backward differences",
                ),
                Claim(k, f"{_ERSDE_PAPER}: order-{k} solver"),
            )
        )
    return out


_MRS_PAPER = "Li et al. 2025, MRS: a fast sampler for mean reverting diffusion (arXiv:2502.07856)"
_MRS_CODE = (
    "the authors' code, universal-image-restoration/utils/sampler.py (MRSampler.step_ode_*, step_sde_*)"
)


def _mrs_variants() -> list[Variant]:
    # MR Sampler, in the normalized coordinates of the mean-reverting process (y = (x - mu)/alpha, s = sigma/alpha;
    # the update in the process's own coordinates adds the mu terms of the authors' code, which cancel here):
    # DPM-Solver-type updates in lambda with the heun-form second stage (phi_2 = phi_1/h + 1 in the data form,
    # phi_1/h - 1 in the noise form) and, for the ODE, the third-order stage with the DPM-Solver estimates and
    # phi_3 = phi_2/h - 1/2. The SDE solvers use phi = s^2 (the reverse SDE): data form as SDE-DPM-Solver++,
    # noise form with weights 2 sigma_t (e^h - 1) = e0 and 2 sigma_t phi_2 = e1/h and noise sigma_t sqrt(e^{2h} - 1).
    data = (_FIRST, _HEUN, _THIRD)
    noise = (_N_FIRST, _N_HEUN, _N_THIRD)
    out = []
    for dynamics, orders in (("ode", (1, 2, 3)), ("sde", (1, 2))):
        for form, stages in (("data", data), ("noise", noise)):
            for k in orders:
                what = "probability-flow ODE" if dynamics == "ode" else "reverse SDE"
                out.append(
                    Variant(
                        f"mrs_{dynamics}_{k}_{form}",
                        f"MR Sampler {dynamics.upper()}-{k} ({form} prediction, {what}, normalized coordinates)",
                        dynamics,
                        form,
                        "lambda",
                        stages[:k],
                        (f"{_MRS_PAPER}, {dynamics.upper()} solvers", _MRS_CODE),
                        Claim(k, f"{_MRS_PAPER}: order-{k} {dynamics.upper()} solver"),
                    )
                )
    return out


_UNIPC_PAPER = "Zhao et al. 2023, UniPC (arXiv:2302.04867)"
_UNIPC_CODE = (
    "diffusers 0.42.1 scheduling_unipc_multistep.py (multistep_uni_p_bh_update, multistep_uni_c_bh_update)"
)


def unipc_phi(k: int, form: str = "data") -> sp.Expr:
    """h phi_{k+1}(hh) of UniPC's updates by the published recursion, hh = -h (data prediction) or h (noise):
    h phi_1 = e^{hh} - 1, h phi_{k+1} = h phi_k / hh - 1/k!. :func:`check_unipc_phi` proves it equals
    -c_k / h^k (data) and e_k / (sigma' h^k) (noise)."""
    hh = -step if form == "data" else step
    value = sp.exp(hh) - 1
    for j in range(1, k + 1):
        value = value / hh - 1 / sp.factorial(j)
    return value


def _unipc_stage(p: int, solver_type: str, corrector: bool, form: str) -> Stage:
    """UniP-p (predictor) or UniC-p (corrector), B(h) = h (bh1) or e^h - 1 (bh2), expanded in lambda.

    With hh = -h (data prediction) or h (noise prediction): r_k = (lambda_{i-k} - lambda_i)/h,
    D1_k = (m_k - m0)/r_k, b_i = h phi_{i+1}(hh) i! / B(hh), R_ij = r_j^(i-1) (r_p = 1); rho solves R rho = b
    (the predictor: the system without its last row and column; rho = 1/2 when that system is 1 x 1, and for
    UniC-1). Data: y' = r y + c0 m0 - B(hh) R_p with h phi_{k+1} = -c_k/h^k; noise: y' = y - e0 m0 - sigma' B(hh) R_p
    with sigma' h phi_{k+1} = e_k/h^k, sigma' h = e0 - e1 and sigma' (e^h - 1) = e0 (checked);
    R_p = sum_k rho_k D1_k [+ rho_p (mt - m0)].
    """
    if form == "data":
        c = (_c0, _c1, _c2, _c3)
        B = -step if solver_type == "bh1" else -_c0  # bh2: e^{-h} - 1 = -c0
        hphi = [-c[k] / step**k for k in range(4)]
    else:  # everything times sigma' (the factor cancels in b)
        c = (_e0, _e1, _e2, _e3)
        B = _e0 - _e1 if solver_type == "bh1" else _e0
        hphi = [c[k] / step**k for k in range(4)]
    rks = [(delta1, delta2)[k] / step for k in range(p - 1)] + [sp.Integer(1)]
    size = p if corrector else p - 1
    if size == 1 and (p == 2 or corrector):
        rhos = [sp.Rational(1, 2)]
    elif size == 0:
        rhos = []
    else:
        R = sp.Matrix(size, size, lambda i, j: rks[j] ** i)
        b = sp.Matrix([hphi[i] * sp.factorial(i) / B for i in range(1, size + 1)])
        rhos = [sp.factor(sp.cancel(rho)) for rho in R.LUsolve(b)]
    differences = [(outputs[k] - m0) / rks[k - 1] for k in range(1, p)]
    residual = sum(rho * d for rho, d in zip(rhos, differences))
    if corrector:
        residual += rhos[-1] * (mt - m0)
    published = _c0 * m0 - B * residual if form == "data" else -(_e0 * m0 + B * residual)
    return Stage(p + 1 if corrector else p, published, corrector=corrector)


def _unipc_variants() -> list[Variant]:
    out = []
    for form in ("data", "noise"):
        for solver_type in ("bh1", "bh2"):
            for p in (1, 2, 3):
                B = "h" if solver_type == "bh1" else "e^h - 1"
                out.append(
                    Variant(
                        f"unipc_{solver_type}_{p}" + ("" if form == "data" else "_noise"),
                        f"UniPC-{p}, B(h) = {B} (UniP-{p} + UniC-{p}, {form} prediction, probability-flow ODE)",
                        "ode",
                        form,
                        "lambda",
                        tuple(_unipc_stage(j, solver_type, False, form) for j in range(1, p + 1)),
                        (
                            f"{_UNIPC_PAPER}, Algorithms 1-2 (UniP-p, UniC-p) with B(h) = {solver_type}",
                            _UNIPC_CODE,
                        ),
                        Claim(p + 1, f"{_UNIPC_PAPER}: UniC-p raises the order of UniP-p to p + 1"),
                        Peer(
                            "UniPCMultistepScheduler",
                            f"solver_order={p}, solver_type={solver_type!r}, predict_x0={form == 'data'}",
                        ),
                        tuple(_unipc_stage(j, solver_type, True, form) for j in range(1, p + 1)),
                    )
                )
    return out


@functools.lru_cache(maxsize=1)
def variant_table() -> dict[str, Variant]:
    variants = [
        *_first_order_variants(),
        *_dpm_variants(),
        *_deis_variants(),
        *_ersde_variants(),
        *_mrs_variants(),
        *_unipc_variants(),
    ]
    return {v.key: v for v in variants}


def variant_names() -> tuple[str, ...]:
    return tuple(variant_table())


def get_variant(key: str) -> Variant:
    """The variant called ``key`` (``variant_`` prefix accepted); SpecError with suggestions otherwise."""
    table = variant_table()
    key = key.removeprefix("variant_")
    if key not in table:
        close = difflib.get_close_matches(key, list(table), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SpecError(f"unknown variant {key!r}{hint}; choose one of: {', '.join(table)}")
    return table[key]


# --------------------------------------------------------------------------------------------------
# checks of the transcription
# --------------------------------------------------------------------------------------------------


def _polynomial_outputs(degree: int) -> dict:
    """m_j = x(u_{i-j}) for x(u) = (u - u_i)^degree (u_i = 0, so the outputs sit at 0, delta1, delta2)."""
    nodes = (sp.Integer(0), delta1, delta2)
    return {outputs[j]: nodes[j] ** degree for j in range(3)}


@functools.cache
def check_variant(key: str) -> tuple[str, ...]:
    """Symbolic checks of a variant's transcription; DerivationError on failure. Returns the statements checked.

    1. each estimate reproduces ``scale x`` the n-th derivative of every polynomial up to its ``exact_degree``;
    2. each stage is consistent: a constant prediction gives P = (weight 0) x constant, i.e. sum_j W_j is the
       framework's c0 (e0 with the noise form's sign), so the step is exact for constant predictions.
    """
    variant = get_variant(key)
    checked = []
    u = sp.Symbol("u")
    for stage in (*variant.stages, *variant.correctors):
        for estimate in stage.estimates:
            for degree in range(estimate.exact_degree + 1):
                exact = sp.diff(u**degree, u, estimate.derivative).subs(u, 0) * estimate.scale
                residual = sp.cancel(sp.together(estimate.expr.subs(_polynomial_outputs(degree)) - exact))
                if residual != 0:
                    raise DerivationError(
                        f"variant {key}: estimate {estimate.symbol} is not exact on u^{degree}: residual {residual}"
                    )
            checked.append(
                f"{estimate.symbol} = {estimate.scale} * d^{estimate.derivative}x/du^{estimate.derivative} on degree <= {estimate.exact_degree}"
            )
        weights = stage.output_weights()
        first = taylor_symbols(variant.form)[0]
        expected = first if variant.form == "data" else -first
        if sp.cancel(sp.together(sum(weights) - expected)) != 0:  # rational in the weights and offsets
            raise DerivationError(f"variant {key}: stage {stage.k} weights do not sum to {expected}")
        checked.append(f"stage {stage.k}: sum of output weights = {expected}")
    if variant.correctors:
        checked.extend(check_unipc_phi(variant.form))
    return tuple(checked)


@functools.lru_cache(maxsize=2)
def check_unipc_phi(form: str = "data", count: int = 4) -> tuple[str, ...]:
    """UniPC's h phi_{k+1} in the framework's weights (phi = s, expanded in lambda), integrated by SymPy from the
    framework's own integrand (sigma' = sigma e^{-h}): data h phi_{k+1}(-h) = -c_k / h^k; noise
    sigma' h phi_{k+1}(h) = e_k / h^k; and the noise form's B(h): sigma' h = e0 - e1, sigma' (e^h - 1) = e0."""
    from derive.coefficients import weight_quantity
    from derive.symbolic.ersde import derive_step, s, sigma, sigma_next, v

    derivation = derive_step(s)
    weights = []
    for k in range(count):
        q = weight_quantity(derivation, k, form, closed=False, variable="lambda")
        value = sp.integrate(q.integrand.rewrite(sp.exp), (v, -step, 0)) * q.prefactor
        weights.append(value.subs(sigma_next, sigma * sp.exp(-step)))
    checked = []
    scale = 1 if form == "data" else sigma * sp.exp(-step)
    for k in range(count):
        expected = -weights[k] / step**k if form == "data" else weights[k] / step**k
        if sp.simplify(scale * unipc_phi(k, form) - expected) != 0:
            raise DerivationError(f"UniPC ({form} prediction): h phi_{k + 1} does not match the weight {k}")
        checked.append(f"h phi_{k + 1} = {'-c' if form == 'data' else 'e'}_{k} / h^{k} ({form})")
    if form == "noise":
        for name, published, expected in (
            ("sigma' h", scale * step, weights[0] - weights[1]),
            ("sigma' (e^h - 1)", scale * (sp.exp(step) - 1), weights[0]),
        ):
            if sp.simplify(published - expected) != 0:
                raise DerivationError(f"UniPC (noise prediction): {name} does not match the weights")
            checked.append(f"{name} in e0, e1")
    return tuple(checked)

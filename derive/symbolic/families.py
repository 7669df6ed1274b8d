r"""Diffusion processes defined by their marginals, and what SymPy derives from them.

A family gives :math:`\alpha(t)`, :math:`\sigma(t)` (and, for the mean-reverting family, a mean
:math:`\mu`) such that the forward marginal is

.. math:: x_t = \alpha_t x_0 + (1 - \alpha_t)\,\mu\,[\text{MR only}] + \sigma_t \varepsilon .

From these SymPy derives the forward SDE :math:`\mathrm{d}x = f(t)(x - \mu)\,\mathrm{d}t + g(t)\,\mathrm{d}w`
with :math:`f = \dot\alpha/\alpha`, :math:`g^2 = \dot{(\sigma^2)} - 2 f \sigma^2`, the half log-SNR
:math:`\lambda = \log(\alpha/\sigma)`, and the normalized coordinates :math:`y = (x - \mu)/\alpha`,
:math:`s = \sigma/\alpha` in which every family is the variance-exploding process :math:`y_s = y_0 + s\varepsilon`
(checked: :math:`\mathrm{d}(s^2)/\mathrm{d}t = g^2/\alpha^2` and :math:`y` has no drift).

Parameterizations of the model output: data :math:`\hat x_0`, noise :math:`\hat\varepsilon`, velocity
:math:`\hat v` (where the family defines one) and score :math:`-\hat\varepsilon/\sigma`; SymPy solves for the
conversions between them.
"""

from __future__ import annotations

import dataclasses
import functools

import sympy as sp

t = sp.Symbol("t", nonnegative=True)
alpha, sigma_t, mu = sp.symbols("alpha sigma mu", real=True)
x, x0, eps, vel = sp.symbols("x x0 eps v", real=True)
beta_min, beta_max = sp.symbols("beta_min beta_max", positive=True)
cosine_offset = sp.Symbol("cosine_offset", positive=True)
sigma_min, sigma_max = sp.symbols("sigma_min sigma_max", positive=True)
theta, stationary_std = sp.symbols("theta stationary_std", positive=True)
#: a value read from a discrete schedule's table (alphas_cumprod for VP, theta_bar for MR)
table_value = sp.Symbol("value", nonnegative=True)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """alpha(t), sigma(t) with their parameters (continuous), or a table of alpha_t (discrete)."""

    name: str
    alpha: sp.Expr | None
    sigma: sp.Expr | None
    parameters: tuple[tuple[sp.Symbol, float], ...] = ()
    discrete: bool = False
    description: str = ""
    #: the times a continuous schedule is defined on, [domain[0], domain[1]] (None: unbounded above)
    domain: tuple[float, float | None] = (0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    title: str
    schedules: tuple[Schedule, ...]
    default_prediction: str
    predictions: tuple[str, ...]
    #: v in terms of x0 and eps (None: the family has no standard velocity)
    velocity: sp.Expr | None
    velocity_doc: str
    mean_reverting: bool = False
    time_doc: str = ""

    def schedule(self, name: str | None) -> Schedule:
        if name is None:
            return self.schedules[0]
        for item in self.schedules:
            if item.name == name:
                return item
        raise KeyError(name)


def _vp_linear() -> Schedule:
    log_alpha = -(t**2) * (beta_max - beta_min) / 4 - t * beta_min / 2
    a = sp.exp(log_alpha)
    return Schedule(
        "linear",
        a,
        sp.sqrt(1 - a**2),
        ((beta_min, 0.1), (beta_max, 20.0)),
        description="beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1] (score SDE / DDPM continuous)",
    )


def _vp_cosine() -> Schedule:
    angle = lambda u: sp.cos((u + cosine_offset) / (1 + cosine_offset) * sp.pi / 2)  # noqa: E731
    a = angle(t) / angle(0)
    return Schedule(
        "cosine",
        a,
        sp.sqrt(1 - a**2),
        ((cosine_offset, 0.008),),
        description="alpha(t) = cos((t + o)/(1 + o) pi/2) / cos(o/(1 + o) pi/2), t in [0, 1) (improved DDPM)",
    )


def _table_schedule(description: str, a: sp.Expr, sg: sp.Expr, parameters=()) -> Schedule:
    """alpha and sigma as functions of the table value at the requested index."""
    return Schedule("discrete", a, sg, parameters, discrete=True, description=description)


FAMILIES: dict[str, Family] = {
    "vpsde": Family(
        "vpsde",
        "variance-preserving process",
        (
            _vp_linear(),
            _vp_cosine(),
            _table_schedule(
                "a table alphas_cumprod[t] (DDPM 'linear' / 'scaled_linear' betas); alpha_t = sqrt(alphas_cumprod[t])",
                sp.sqrt(table_value),
                sp.sqrt(1 - table_value),
            ),
        ),
        "noise",
        ("data", "noise", "velocity"),
        alpha * eps - sigma_t * x0,
        "v = alpha eps - sigma x0 (Salimans & Ho's v-prediction)",
        time_doc="t: continuous time in [0, 1] (continuous schedules) or an integer index into the table",
    ),
    "vesde": Family(
        "vesde",
        "variance-exploding process",
        (
            Schedule(
                "geometric",
                sp.Integer(1),
                sigma_min * (sigma_max / sigma_min) ** t,
                ((sigma_min, 0.01), (sigma_max, 50.0)),
                description="sigma(t) = sigma_min (sigma_max / sigma_min)^t, t in [0, 1] (score SDE VE)",
            ),
        ),
        "noise",
        ("data", "noise"),
        None,
        "",
        time_doc="t in [0, 1]",
    ),
    "edm": Family(
        "edm",
        "EDM (Karras et al.): sigma = t",
        (Schedule("edm", sp.Integer(1), t, (), description="sigma(t) = t, alpha = 1", domain=(0.0, None)),),
        "data",
        ("data", "noise"),
        None,
        "",
        time_doc="t = sigma",
    ),
    "flow": Family(
        "flow",
        "rectified flow (SD3 / Flux)",
        (Schedule("linear", 1 - t, t, (), description="alpha(t) = 1 - t, sigma(t) = t, t in [0, 1]"),),
        "velocity",
        ("data", "noise", "velocity"),
        eps - x0,
        "v = eps - x0 = dx/dt (flow matching)",
        time_doc="t in [0, 1]",
    ),
    "mrsde": Family(
        "mrsde",
        "mean-reverting process (IR-SDE)",
        (
            Schedule(
                "constant",
                sp.exp(-theta * t),
                stationary_std * sp.sqrt(1 - sp.exp(-2 * theta * t)),
                ((theta, 1.0), (stationary_std, 1.0)),
                description="theta_t = theta (constant), alpha = exp(-theta t), sigma = lambda sqrt(1 - alpha^2)",
                domain=(0.0, None),
            ),
            _table_schedule(
                "a table theta_bar[t] (cumulative theta, e.g. IR-SDE's cosine schedule); alpha = exp(-theta_bar),"
                " sigma = lambda sqrt(1 - alpha^2)",
                sp.exp(-table_value),
                stationary_std * sp.sqrt(1 - sp.exp(-2 * table_value)),
                ((stationary_std, 1.0),),
            ),
        ),
        "noise",
        ("data", "noise"),
        None,
        "",
        mean_reverting=True,
        time_doc="t: continuous time (constant theta) or an integer index into the theta_bar table",
    ),
}


@dataclasses.dataclass(frozen=True)
class FamilyDerivation:
    family: Family
    schedule: Schedule
    drift: sp.Expr | None  # f(t)
    diffusion2: sp.Expr | None  # g(t)^2
    log_snr_half: sp.Expr | None  # lambda(t) = log(alpha/sigma)
    normalized_sigma: sp.Expr | None  # s(t) = sigma/alpha
    to_data: dict[str, sp.Expr]  # x0 from (x, output) per prediction
    to_noise: dict[str, sp.Expr]  # eps from (x, output) per prediction
    marginal: sp.Expr


def _check_marginal(schedule: Schedule, mean_reverting: bool) -> None:
    """The forward SDE dx = f (x - mu) dt + g dw has the family's marginal, and y = (x - mu)/alpha is VE.

    Mean: d/dt E[x - mu] = f E[x - mu] holds iff alpha' = f alpha; variance: (sigma^2)' = 2 f sigma^2 + g^2.
    Normalized: y has no drift, and s = sigma/alpha has (s^2)' = g^2 / alpha^2.
    """
    from derive.errors import DerivationError

    a, sg = schedule.alpha, schedule.sigma
    f = sp.diff(a, t) / a
    g2 = sp.diff(sg**2, t) - 2 * f * sg**2
    checks = {
        "mean ODE": sp.diff(a, t) - f * a,
        "variance ODE": sp.diff(sg**2, t) - (2 * f * sg**2 + g2),
        "normalized variance": sp.diff((sg / a) ** 2, t) - g2 / a**2,
    }
    for name, residual in checks.items():
        if sp.simplify(residual) != 0:
            raise DerivationError(f"family {schedule.name}: {name} fails: {sp.simplify(residual)}")


@functools.cache
def derive_family(name: str, schedule_name: str | None = None) -> FamilyDerivation:
    family = FAMILIES[name]
    schedule = family.schedule(schedule_name)
    mean_term = (1 - alpha) * mu if family.mean_reverting else 0
    marginal = alpha * x0 + mean_term + sigma_t * eps
    drift = diffusion2 = lam = s_of_t = None
    if not schedule.discrete:
        _check_marginal(schedule, family.mean_reverting)
        a, sg = schedule.alpha, schedule.sigma
        drift = sp.simplify(sp.diff(a, t) / a)
        diffusion2 = sp.simplify(sp.diff(sg**2, t) - 2 * drift * sg**2)
        lam = sp.log(a / sg)
        s_of_t = sp.simplify(sg / a)
    # conversions: solve the marginal (and the velocity definition) for x0 and eps
    output = sp.Symbol("output", real=True)
    to_data, to_noise = {}, {}
    for prediction in family.predictions:
        if prediction == "data":
            solution = sp.solve([sp.Eq(x, marginal.subs(x0, output))], [eps], dict=True)[0]
            to_data[prediction], to_noise[prediction] = output, sp.simplify(solution[eps])
        elif prediction == "noise":
            solution = sp.solve([sp.Eq(x, marginal.subs(eps, output))], [x0], dict=True)[0]
            to_data[prediction], to_noise[prediction] = sp.simplify(solution[x0]), output
        elif prediction == "velocity":
            solution = sp.solve([sp.Eq(x, marginal), sp.Eq(output, family.velocity)], [x0, eps], dict=True)[0]
            to_data[prediction], to_noise[prediction] = sp.simplify(solution[x0]), sp.simplify(solution[eps])
    return FamilyDerivation(family, schedule, drift, diffusion2, lam, s_of_t, to_data, to_noise, marginal)


# ---- the update in the family's own coordinates -----------------------------------------------------------
alpha_next, sigma_next_t = sp.symbols("alpha_next sigma_next", positive=True)
ratio, weight_sum, std = sp.symbols("ratio weight_sum std", real=True)


@dataclasses.dataclass(frozen=True)
class FamilyUpdate:
    """x_{i+1} = A x_i + B sum_j w_j P_j + C z + M mu, from the normalized update by y = (x - mu)/alpha."""

    A: sp.Expr
    B: sp.Expr
    C: sp.Expr
    M: sp.Expr
    text: str


@functools.cache
def family_update(form: str, mean_reverting: bool) -> FamilyUpdate:
    r"""Substitute y = (x - mu)/alpha into y' = r y + sum_j w_j P_j + std z and collect.

    In the data form the normalized prediction is x0 - mu (y_0 = x_0 - mu); in the noise form it is eps itself.
    The coefficients are checked: mapping the collected update back to y reproduces the normalized one.
    """
    m = mu if mean_reverting else sp.Integer(0)
    xs, z = sp.symbols("x_i z", real=True)
    p = sp.Symbol("P", real=True)  # one stored prediction (in the family's coordinates), weight sum w
    y = (xs - m) / alpha
    normalized_prediction = p - m if form == "data" else p
    y_next = ratio * y + weight_sum * normalized_prediction + std * z
    x_next = sp.expand(alpha_next * y_next + m)
    A = sp.simplify(x_next.coeff(xs))
    B = sp.simplify(x_next.coeff(p) / weight_sum)
    C = sp.simplify(x_next.coeff(z))
    M = (
        sp.simplify((x_next - A * xs - B * weight_sum * p - C * z).coeff(mu))
        if mean_reverting
        else sp.Integer(0)
    )
    rebuilt = A * xs + B * weight_sum * p + C * z + M * m
    if sp.simplify(rebuilt - x_next) != 0:
        raise ArithmeticError("family update does not reproduce the normalized update")
    # back in normalized coordinates the update must be the normalized one
    if sp.simplify((rebuilt - m) / alpha_next - y_next) != 0:
        raise ArithmeticError("family update is not the normalized update under y = (x - mu)/alpha")
    pieces = [f"x_(i+1) = ({sp.sstr(A)}) x_i", f"+ ({sp.sstr(B)}) sum_j w_j P_j", f"+ ({sp.sstr(C)}) z"]
    if mean_reverting:
        pieces.append(f"+ ({sp.sstr(M)}) mu")
    return FamilyUpdate(A, B, C, M, " ".join(pieces))


def pure_noise_limits(phi: sp.Expr, s: sp.Symbol) -> tuple[sp.Expr, sp.Expr]:
    """lim_{s->oo} s/phi(s) =: L and the first step from alpha = 0 (s = oo) in the data form.

    As alpha -> 0 with sigma fixed, r/alpha = phi(s')/(alpha phi(sigma/alpha)) -> phi(s') L / sigma,
    c_0 = 1 - r -> 1 and v = s'^2 - s^2 r^2 -> s'^2 - phi(s')^2 L^2. Returns (L, phi).
    """
    limit = sp.limit(s / phi, s, sp.oo)
    if limit.has(sp.oo, sp.nan, sp.zoo):
        raise ArithmeticError(f"s/phi(s) has no finite limit at infinity: {limit}")
    return limit, phi


def pure_noise_step(phi: sp.Expr, s: sp.Symbol, update: FamilyUpdate) -> tuple[sp.Expr, ...]:
    """(A, B, C, M) of a data-form first step from alpha = 0 (s = oo): the limit of ``update`` (the family
    update of :func:`family_update`) as alpha -> 0 with sigma fixed, from :func:`pure_noise_limits`.

    Functions of the family's sigma, alpha_next and sigma_next."""
    limit, _ = pure_noise_limits(phi, s)
    s_next = sigma_next_t / alpha_next
    rho = phi.subs(s, s_next) * limit / sigma_t  # lim ratio/alpha as alpha -> 0
    variance = s_next**2 - phi.subs(s, s_next) ** 2 * limit**2
    return (
        sp.simplify(update.A.subs(ratio, rho * alpha)),
        update.B,
        update.C.subs(std, sp.sqrt(variance)),
        sp.simplify(update.M.subs({ratio: rho * alpha, weight_sum: 1})),
    )

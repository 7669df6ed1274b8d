r"""The noise levels that minimise the predicted global error for a budget of N model calls.

The predicted error of a schedule :math:`s_0 > \dots > s_N` for a module of order K is

.. math:: E = \Big(\sum_m w_m \Big(\sum_{i<N} P_{m,p_i}(s_i)\,|\kappa_i|\Big)^2\Big)^{1/2},

step i using the history the module itself uses (:math:`k_i = \min(i + 1, K)` stored outputs, so the first
K - 1 steps are the low-order start), :math:`\kappa_i` its derived kernel and :math:`p_i` its order (``k_i``;
the corrector's on a corrected step of a module with a corrector, whose last step is not corrected). The start is not
special-cased: its low-order steps enter with their own kernels, so the minimiser shortens them until their
error no longer dominates (a graded start, at no extra model call).

The steps are parametrised by a softmax over N logits (positive steps in log s summing to
:math:`\log(s_0/s_N)`), started from the asymptotic equidistribution (steps in log s proportional to
:math:`P_K^{-1/(K+1)}`) and minimised by L-BFGS on :math:`\log E`, with a penalty on consecutive step ratios
beyond :data:`MAX_STEP_RATIO` and one on each step's weight amplification (sum|w| / |sum w|, the weights from
the same kernel) beyond :data:`AMPLIFICATION_MARGIN` times the module's ``AMPLIFICATION_LIMIT``: a module drops
a stored output on a step whose weights amplify perturbations beyond that limit, which would make the step one
order lower than :math:`E` assumes (the result is judged with the module's own coefficient table).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from derive.methods import METHODS
from derive.schedules.error_model import kernel
from derive.schedules.profile import Profile

#: consecutive steps (in log s) may grow or shrink by at most this factor without penalty
MAX_STEP_RATIO = 4.0
#: the optimiser keeps every step's weight amplification below this share of the module's limit (a margin
#: for the rounding of the levels)
AMPLIFICATION_MARGIN = 0.9


class ErrorModel:
    """Predicted error of schedules for one module and one profile (torch, differentiable in the levels)."""

    def __init__(
        self,
        phi: str,
        form: str,
        variable: str,
        method: str,
        order: int,
        profile: Profile,
        amplification_limits: dict | None = None,
    ):
        self.phi, self.form, self.variable, self.method, self.order = phi, form, variable, method, order
        self.profile = profile
        #: the module's AMPLIFICATION_LIMIT (per count of weights): a step whose weights exceed it runs with
        #: one output fewer, so the optimiser keeps every step below it (None: no such guard)
        self.amplification_limits = dict(amplification_limits or {})
        self.method_entry = METHODS[method]
        self.corrector = self.method_entry.corrector
        if profile.max_order < self.method_entry.order(order):
            raise ValueError("profile does not reach the method's order")

    def _offset(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """u(b) - u(a) in the expansion variable."""
        return b - a if self.variable == "s" else -(torch.log(b) - torch.log(a))

    def step_errors(self, s: torch.Tensor, lengths=None) -> torch.Tensor:
        """Per member and step: the signed contribution P_{m,p_i}(s_i) kappa_i, shape (members, N).

        ``lengths``: the stored outputs each step uses (default min(i + 1, K); pass the module's own, from its
        coefficient table, to account for the outputs it drops on abruptly growing steps)."""
        n = len(s) - 1
        K = self.order
        if lengths is None:
            lengths = [min(i + 1, K) for i in range(n)]
        lengths = torch.tensor(list(lengths))
        members = len(self.profile.weights)
        errors = torch.zeros(members, n, dtype=torch.float64)
        for k in sorted(set(lengths.tolist())):
            index = torch.nonzero(lengths == k).reshape(-1)
            s_from, s_to = s[index], s[index + 1]
            offsets = [self._offset(s_from, s[index - j]) for j in range(1, k)]
            kp = kernel(self.phi, self.form, self.variable, k, False)(s_from, s_to, offsets)
            part = self.profile(k, s_from) * kp[None]
            if self.corrector:
                # the corrector's own stored outputs: the predictor's less the ones the method drops
                kc_size = max(k - self.method_entry.corrector_drop, 1)
                new = self._offset(s_from, s_to)
                kc = kernel(self.phi, self.form, self.variable, kc_size, True)(
                    s_from, s_to, [new, *offsets[: kc_size - 1]]
                )
                corrected = (index < n - 1)[None]
                part = torch.where(corrected, self.profile(kc_size + 1, s_from) * kc[None], part)
            errors = errors.index_put((torch.arange(members)[:, None], index[None, :]), part)
        return errors

    def amplification_excess(self, s: torch.Tensor, margin: float = AMPLIFICATION_MARGIN) -> torch.Tensor:
        """Sum over steps of relu(log(amplification / (margin * limit)))^2, predictor and corrector.

        Zero when every step keeps all the outputs :meth:`step_errors` assumes (the module drops one on a step
        whose weights amplify perturbations beyond its limit, lowering that step's order)."""
        n = len(s) - 1
        total = torch.zeros((), dtype=torch.float64)
        if not self.amplification_limits:
            return total
        lengths = torch.tensor([min(i + 1, self.order) for i in range(n)])
        for k in sorted(set(lengths.tolist())):
            index = torch.nonzero(lengths == k).reshape(-1)
            s_from, s_to = s[index], s[index + 1]
            offsets = [self._offset(s_from, s[index - j]) for j in range(1, k)]
            parts = []
            if k > 1:
                parts.append((kernel(self.phi, self.form, self.variable, k, False), offsets, k, index >= 0))
            if self.corrector:
                kc_size = max(k - self.method_entry.corrector_drop, 1)
                new = self._offset(s_from, s_to)
                kc = kernel(self.phi, self.form, self.variable, kc_size, True)
                parts.append((kc, [new, *offsets[: kc_size - 1]], kc_size + 1, index < n - 1))
            for kern, nodes, size, used in parts:
                limit = self.amplification_limits.get(size)
                if limit is None:
                    continue
                amp = kern.amplification(s_from, s_to, nodes)
                excess = torch.relu(torch.log(amp) - math.log(margin * limit))
                total = total + torch.where(used, excess**2, torch.zeros_like(excess)).sum()
        return total

    def predict(self, s: torch.Tensor, lengths=None) -> torch.Tensor:
        """The predicted (pooled RMS) error of the schedule ``s``."""
        contributions = self.step_errors(s, lengths)
        beta = self.profile.bound_weight
        per_member = (1 - beta) * contributions.sum(dim=1).abs() + beta * contributions.abs().sum(dim=1)
        w = torch.tensor(self.profile.weights, dtype=torch.float64)
        return torch.sqrt((w * per_member**2).sum())

    def density_order(self) -> int:
        return self.method_entry.order(self.order)


def _levels(theta: torch.Tensor, log_max: float, log_min: float) -> torch.Tensor:
    steps = torch.softmax(theta, 0) * (log_max - log_min)
    inner = log_max - torch.cumsum(steps, 0)[:-1]
    log_s = torch.cat(
        [torch.tensor([log_max], dtype=torch.float64), inner, torch.tensor([log_min], dtype=torch.float64)]
    )
    return torch.exp(log_s)


def equidistributed(model: ErrorModel, nfe: int, sigma_max: float, sigma_min: float) -> np.ndarray:
    """Asymptotic optimum: step density in log s proportional to P_p^(1/(p+1)), pooled over members."""
    p = model.density_order()
    grid = torch.linspace(math.log(sigma_max), math.log(sigma_min), 2001, dtype=torch.float64)
    with torch.no_grad():
        table = model.profile(p, torch.exp(grid)).abs()
        w = torch.tensor(model.profile.weights, dtype=torch.float64)[:, None]
        pooled = torch.sqrt((w * table**2).sum(0))
    # error per step ~ P h_lambda^(p+1) |s-factor|: in u = s the kernel carries s^(p+1), folded in here
    scale = torch.exp(grid) ** (p + 1) if model.variable == "s" else torch.ones_like(grid)
    density = (pooled * scale + 1e-300) ** (1.0 / (p + 1))
    cumulative = torch.cat(
        [torch.zeros(1, dtype=torch.float64), torch.cumsum(0.5 * (density[1:] + density[:-1]), 0)]
    )
    cumulative = (cumulative / cumulative[-1]).numpy()
    targets = np.linspace(0.0, 1.0, nfe + 1)
    log_s = np.interp(targets, cumulative, grid.numpy())
    return np.exp(log_s)


#: the graded start of the initial guess: step j < K - 1 of the start is this factor per missing order shorter
#: than the regular step there (the optimiser then sizes it; this only keeps the first iterate sensible)
START_GRADING = 1.5


def graded(model: ErrorModel, nfe: int, sigma_max: float, sigma_min: float) -> np.ndarray:
    """The equidistributed levels with the first K - 1 steps shortened geometrically (the initial guess)."""
    s = equidistributed(model, nfe, sigma_max, sigma_min)
    steps = -np.diff(np.log(s))
    start = min(model.order - 1, nfe - 1)
    factors = np.ones(nfe)
    factors[:start] = START_GRADING ** -np.arange(start, 0, -1, dtype=np.float64)
    steps = steps * factors
    steps *= math.log(sigma_max / sigma_min) / steps.sum()
    out = np.exp(math.log(sigma_max) - np.concatenate([[0.0], np.cumsum(steps)]))
    out[0], out[-1] = sigma_max, sigma_min
    return out


def optimise(
    model: ErrorModel,
    nfe: int,
    sigma_max: float,
    sigma_min: float,
    *,
    max_ratio: float = MAX_STEP_RATIO,
    iterations: int = 200,
    start: np.ndarray | None = None,
) -> tuple[torch.Tensor, dict]:
    """Minimise the predicted error over the N - 1 inner levels; returns (levels, info)."""
    log_max, log_min = math.log(sigma_max), math.log(sigma_min)
    s0 = graded(model, nfe, sigma_max, sigma_min) if start is None else np.asarray(start)
    steps0 = -np.diff(np.log(s0))
    theta = torch.tensor(np.log(np.maximum(steps0, 1e-12)), dtype=torch.float64, requires_grad=True)
    limit = math.log(max_ratio)

    def objective():
        s = _levels(theta, log_max, log_min)
        steps = -torch.diff(torch.log(s))
        value = torch.log(model.predict(s))
        if nfe > 1:
            excess = torch.relu(torch.abs(torch.diff(torch.log(steps))) - limit)
            value = value + 10.0 * (excess**2).sum() + 10.0 * model.amplification_excess(s)
        return value

    with torch.no_grad():
        initial = float(model.predict(_levels(theta, log_max, log_min)))
    if nfe > 1:
        opt = torch.optim.LBFGS(
            [theta], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe", tolerance_change=1e-12
        )

        def closure():
            opt.zero_grad()
            value = objective()
            if not torch.isfinite(value):  # a line-search probe beyond the kernels' range: reject it
                return torch.tensor(math.inf, dtype=torch.float64)
            value.backward()
            return value

        opt.step(closure)
    with torch.no_grad():
        s = _levels(theta, log_max, log_min)
        final = float(model.predict(s))
    if not math.isfinite(final) or final > initial:  # never worse than the equidistributed start
        s, final = torch.tensor(s0, dtype=torch.float64), initial
    return s.detach(), {"predicted_error": final, "predicted_error_equidistributed": initial}

r"""Smoothness profiles: how large the prediction's derivatives are along the trajectory, and how much an error
made at a noise level still matters at the end.

A profile gives, per order :math:`k` and per *member* m (a component of an analytic proxy, or the pooled
pilot batch of a model), :math:`P_{m,k}(s) = G_m(s)\,|\partial_u^k q_m(s)|/k!`: the k-th derivative of the
expanded prediction ``q`` (``x0`` in the data form, ``eps`` in the noise form) in the module's expansion
variable ``u``, times the factor :math:`G_m(s)` by which the flow carries a perturbation at ``s`` to
``sigma_min``. The predicted error of a schedule is then :math:`E_m = \sum_i P_{m,k_i}(s_i)\,|\kappa_i|`
(kernels :math:`\kappa` from :mod:`derive.schedules.error_model`), pooled as :math:`\sqrt{\sum_m w_m E_m^2}`.

Two sources:

* :func:`gaussian_proxy` (data-free): Gaussian data with standard deviations ``tau`` spread over a range of
  scales. Along the probability-flow trajectory of :math:`N(\mu, \tau^2)` data,
  :math:`x_0 - \mu = \tau^2 z/\sqrt{\tau^2 + s^2}` and :math:`\varepsilon = s z/\sqrt{\tau^2 + s^2}` per unit
  of the trajectory's noise :math:`z`, and perturbations scale like :math:`\sqrt{\tau^2 + s^2}`, so
  :math:`G = \sqrt{\tau^2 + s_{min}^2}/\sqrt{\tau^2 + s^2}`. The derivatives are SymPy's.
* :func:`measured` (model-tuned): tables on a fine log-s grid from a pilot run of the user's model.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import sympy as sp
import torch

_s = sp.Symbol("s", positive=True)
_tau = sp.Symbol("tau", positive=True)


@functools.cache
def _gaussian_derivative(form: str, variable: str, k: int):
    r"""torch function (s, tau) -> |d^k q / du^k| / k! for the Gaussian proxy (SymPy derivative)."""
    q = _tau**2 / sp.sqrt(_tau**2 + _s**2) if form == "data" else _s / sp.sqrt(_tau**2 + _s**2)
    expr = q
    for _ in range(k):
        # d/du: u = s directly; u = lambda = -log s gives d/dlambda = -s d/ds
        expr = sp.diff(expr, _s) if variable == "s" else -_s * sp.diff(expr, _s)
    expr = sp.simplify(expr / sp.factorial(k))
    fn = sp.lambdify((_s, _tau), expr, modules=[{"sqrt": torch.sqrt}, "math"])
    return lambda s, tau: torch.abs(torch.as_tensor(fn(s, tau), dtype=torch.float64))


@dataclasses.dataclass(frozen=True)
class Profile:
    """P_{m,k}(s) for k = 1 .. max_order, members m with weights; evaluated as torch functions of s."""

    kind: str
    max_order: int
    weights: tuple[float, ...]
    #: gaussian proxy: the members' tau; measured: None
    taus: tuple[float, ...] | None = None
    sigma_min: float = 0.0
    form: str = "data"
    variable: str = "s"
    #: measured: log s grid (increasing) and the signed tables P [member][k-1][grid index]
    log_s: tuple[float, ...] | None = None
    log_table: tuple = None
    #: the share of the triangle bound (sum of |contributions|) in each member's predicted error; the rest is
    #: the signed sum. 1 for the proxy (whose few members would otherwise be fitted to cancel), less for a
    #: measured profile with many members (cancellation along a real trajectory is measured, not assumed)
    bound_weight: float = 1.0

    def __call__(self, k: int, s: torch.Tensor) -> torch.Tensor:
        """P_{m,k} at the noise levels ``s``: shape (members, len(s))."""
        if not 1 <= k <= self.max_order:
            raise ValueError(f"profile has orders 1..{self.max_order}, not {k}")
        if self.kind == "gaussian":
            tau = torch.tensor(self.taus, dtype=torch.float64)[:, None]
            deriv = _gaussian_derivative(self.form, self.variable, k)(s[None, :], tau)
            growth = torch.sqrt((tau**2 + self.sigma_min**2) / (tau**2 + s[None, :] ** 2))
            return deriv * growth
        grid, tables = self._tensors
        return _interp(torch.log(s), grid, tables[k - 1])

    @functools.cached_property
    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The measured grid and tables as tensors (built once: (max_order, members, grid))."""
        grid = torch.tensor(self.log_s, dtype=torch.float64)
        tables = torch.tensor(self.log_table, dtype=torch.float64).transpose(0, 1)
        return grid, tables

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> Profile:
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        for name in ("weights", "taus", "log_s"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        if values.get("log_table") is not None:
            values["log_table"] = tuple(tuple(tuple(row) for row in member) for member in values["log_table"])
        return cls(**values)


def _interp(x: torch.Tensor, grid: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of each row of ``table`` (members, len(grid)) at ``x`` (clamped ends)."""
    x = torch.clamp(x, grid[0], grid[-1])
    index = torch.clamp(torch.searchsorted(grid, x.detach()) - 1, 0, len(grid) - 2)
    x0, x1 = grid[index], grid[index + 1]
    t = (x - x0) / (x1 - x0)
    return table[:, index] * (1 - t) + table[:, index + 1] * t


#: The data-free proxy: Gaussian data at these multiples of sigma_data, equally weighted. The spread covers the
#: structure of mixtures (components narrower than the data's overall scale by up to ~30x); see the docs page
#: on schedules for how it was chosen.
PROXY_SCALES = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0, 4.0, 8.0)


def gaussian_proxy(
    form: str, variable: str, max_order: int, sigma_min: float, sigma_data: float = 0.5, scales=PROXY_SCALES
) -> Profile:
    """The data-free profile: Gaussian data with std ``tau = sigma_data * scale`` for each scale."""
    if not sigma_data > 0 or not math.isfinite(sigma_data):
        raise ValueError(f"sigma_data must be positive and finite (got {sigma_data})")
    taus = tuple(float(sigma_data * c) for c in scales)
    weights = tuple(1.0 / len(taus) for _ in taus)
    return Profile("gaussian", max_order, weights, taus, float(sigma_min), form, variable)


def derivative_tables(log_s: np.ndarray, values: np.ndarray, variable: str, max_order: int) -> np.ndarray:
    """d^k q/du^k / k! on a fine grid (k = 1..max_order) by repeated second-order differences in log s.

    ``values``: (len(log_s), members) predictions along the pilot trajectories (one member per point and
    projection), ``log_s`` decreasing or increasing. Returns (max_order, len(log_s), members), signed.
    """
    out = []
    current = np.asarray(values, dtype=np.float64)
    s = np.exp(log_s)[:, None]
    for k in range(1, max_order + 1):
        grad = np.gradient(current, log_s, axis=0)  # d/dlog s
        current = grad if variable == "lambda" else grad / s  # d/ds = (1/s) d/dlog s
        out.append(current / math.factorial(k))
    return np.stack(out)


def measured(
    log_s, derivatives, growth, max_order: int, form: str, variable: str, sigma_min: float
) -> Profile:
    """A profile from pilot tables: ``derivatives`` (max_order, grid, members), ``growth`` (grid, members).

    Each member (a pilot point seen along one projection) keeps its sign: the error it predicts is the signed
    sum of the steps' contributions, as the flow adds them up.
    """
    log_s = np.asarray(log_s, dtype=np.float64)
    order = np.argsort(log_s)
    table = np.asarray(derivatives) * np.asarray(growth)[None]  # (k, grid, members)
    members = table.shape[-1]
    return Profile(
        "measured",
        max_order,
        tuple(1.0 / members for _ in range(members)),
        None,
        float(sigma_min),
        form,
        variable,
        tuple(float(x) for x in log_s[order]),
        tuple(
            tuple(tuple(float(f"{x:.6g}") for x in table[k, order, m]) for k in range(max_order))
            for m in range(members)
        ),
        MEASURED_BOUND_WEIGHT,
    )


#: see Profile.bound_weight
MEASURED_BOUND_WEIGHT = 0.25

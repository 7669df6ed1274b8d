"""Test problems with exact denoisers, reference probability-flow solutions and sigma schedules.

Conventions
-----------
All samplers in this project work in *normalized* ("VE-form") coordinates::

    y = x0 + s * eps,   eps ~ N(0, I),   s = sigma / alpha >= 0.

The (ideal) denoiser is ``D(y, s) = E[x0 | y_s = y]`` and the probability-flow ODE reads::

    dy/ds = (y - D(y, s)) / s          or, with u = log s,          dy/du = y - D(y, e^u).

The second form is better conditioned (the ``1/s`` is absorbed into ``du = ds/s``), so every
reference integrator here works in ``u``.

Tweedie's formula links the denoiser to the score of the noisy marginal ``p_s``::

    D(y, s) = y + s^2 * grad_y log p_s(y).

The problems below have closed-form ``p_s`` and ``D``, so sampler errors can be measured against
solutions that are exact (Gaussian data) or computed to near machine precision (mixtures).

Array conventions
-----------------
* numpy denoisers take ``y`` of shape ``(..., d)`` (float64) and ``s`` a float, or a 1-D array of
  length ``y.shape[0]`` (one noise level per sample).
* torch denoisers follow the k-diffusion convention: the sampler calls
  ``model(x, sigma * x.new_ones([x.shape[0]]))``, so ``s`` is a python float, a 0-d tensor or a
  tensor of shape ``(batch,)``; it is broadcast over the trailing dimensions of ``y``. The output has
  the dtype and device of ``y``.
* mpmath denoisers take a list of ``mpf`` and an ``mpf`` and return a list of ``mpf``; they compute at
  the *current* ``mpmath.mp`` precision (the Taylor ODE solver raises it internally).

Only numpy, scipy, mpmath and torch are used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import mpmath
import numpy as np
import torch
from scipy.integrate import solve_ivp

__all__ = [
    "GaussianData",
    "GaussianMixture",
    "append_zero",
    "karras_sigmas",
    "log_uniform_sigmas",
    "reference_flow",
    "reference_flow_mpmath",
]

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------------------
# sigma broadcasting helpers
# --------------------------------------------------------------------------------------------------


def _sigma_np(s, y: np.ndarray) -> np.ndarray:
    """``s`` as a float64 array broadcastable against ``y`` (scalar, or one value per leading row)."""
    s = np.asarray(s, dtype=np.float64)
    if s.ndim == 0 or s.size == 1:
        return s.reshape(())
    if s.ndim == 1 and y.ndim >= 2 and s.shape[0] == y.shape[0]:
        return s.reshape((-1,) + (1,) * (y.ndim - 1))
    raise ValueError(
        f"noise level must be a scalar or have shape ({y.shape[0] if y.ndim else '?'},); "
        f"got shape {s.shape} for y of shape {y.shape}"
    )


def _sigma_torch(s, y: torch.Tensor) -> torch.Tensor:
    """``s`` as a tensor with ``y``'s dtype/device, broadcastable against ``y``."""
    if not torch.is_tensor(s):
        return torch.as_tensor(float(s), dtype=y.dtype, device=y.device)
    s = s.to(dtype=y.dtype, device=y.device)
    if s.ndim == 0 or s.numel() == 1:
        return s.reshape(())
    if s.ndim == 1 and y.ndim >= 2 and s.shape[0] == y.shape[0]:
        return s.reshape((-1,) + (1,) * (y.ndim - 1))
    raise ValueError(
        f"noise level must be a float, a 0-d tensor or have shape ({y.shape[0] if y.ndim else '?'},); "
        f"got shape {tuple(s.shape)} for y of shape {tuple(y.shape)}"
    )


def _params_torch(owner, y: torch.Tensor, *arrays: np.ndarray) -> tuple:
    """The float64 parameter ``arrays`` as tensors with ``y``'s dtype/device, cached on ``owner``.

    Parameters are read-only after construction, so one conversion per (dtype, device) suffices.
    """
    cache = owner.__dict__.setdefault("_torch_cache", {})
    key = (y.dtype, y.device)
    if key not in cache:
        cache[key] = tuple(torch.tensor(np.array(a), dtype=y.dtype, device=y.device) for a in arrays)
    return cache[key]


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


# --------------------------------------------------------------------------------------------------
# Gaussian data
# --------------------------------------------------------------------------------------------------


class GaussianData:
    """Data ``x0 ~ N(mean, diag(var))`` in ``d`` dimensions.

    ``mean`` and ``var`` may be scalars or arrays of shape ``(d,)``; they are broadcast against each
    other (a scalar pair gives ``d = 1``). All variances must be strictly positive.

    The noisy marginal is ``y_s ~ N(mean, diag(var + s^2))`` and the denoiser is linear::

        D(y, s) = mean + var / (var + s^2) * (y - mean) = y - s^2 / (var + s^2) * (y - mean).

    (The second form is the one evaluated: it is more accurate when ``D`` is close to ``y``.)
    """

    def __init__(self, mean, var):
        mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        var = np.atleast_1d(np.asarray(var, dtype=np.float64))
        if mean.ndim != 1 or var.ndim != 1:
            raise ValueError("mean and var must be scalars or 1-D arrays")
        mean, var = np.broadcast_arrays(mean, var)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
            raise ValueError("mean and var must be finite")
        if np.any(var <= 0):
            raise ValueError("all variances must be strictly positive")
        self.mean = np.array(mean, dtype=np.float64)
        self.var = np.array(var, dtype=np.float64)
        self.mean.setflags(write=False)
        self.var.setflags(write=False)

    @property
    def d(self) -> int:
        """Dimension of the data."""
        return int(self.mean.shape[0])

    def __repr__(self) -> str:
        return f"GaussianData(mean={self.mean.tolist()}, var={self.var.tolist()})"

    # -- marginals -------------------------------------------------------------------------------

    def marginal_mean(self, s) -> np.ndarray:
        """Mean of ``y_s`` (independent of ``s``), shape ``(d,)``."""
        return self.mean.copy()

    def marginal_var(self, s) -> np.ndarray:
        """Per-coordinate variance of ``y_s``: ``var + s^2``, shape ``(d,)``."""
        return self.var + float(s) ** 2

    def log_density_np(self, y, s) -> np.ndarray:
        """``log p_s(y)`` for ``y`` of shape ``(..., d)``; returns shape ``(...)``."""
        y = np.asarray(y, dtype=np.float64)
        v = self.var + _sigma_np(s, y) ** 2
        z = (y - self.mean) ** 2 / v
        return -0.5 * np.sum(z + np.log(v) + _LOG_2PI, axis=-1)

    def sample_np(self, n: int, rng=None) -> np.ndarray:
        """``n`` samples of ``x0``, shape ``(n, d)``. ``rng``: Generator, seed or None."""
        rng = _as_rng(rng)
        return self.mean + np.sqrt(self.var) * rng.standard_normal((int(n), self.d))

    # -- denoisers -------------------------------------------------------------------------------

    def denoiser_np(self, y, s) -> np.ndarray:
        """``E[x0 | y_s = y]`` for ``y`` of shape ``(..., d)`` (float64)."""
        y = np.asarray(y, dtype=np.float64)
        s2 = _sigma_np(s, y) ** 2
        return y - s2 / (self.var + s2) * (y - self.mean)

    def denoiser_torch(self, y: torch.Tensor, s) -> torch.Tensor:
        """Torch version of :meth:`denoiser_np` (k-diffusion calling convention, see module doc)."""
        s2 = _sigma_torch(s, y) ** 2
        mean, var = _params_torch(self, y, self.mean, self.var)
        return y - s2 / (var + s2) * (y - mean)

    def denoiser_mp(self, y: Sequence, s) -> list:
        """mpmath version (current ``mp`` precision); ``y`` is a list of length ``d``."""
        s2 = mpmath.mpf(s) ** 2
        out = []
        for yi, mi, vi in zip(y, self.mean.tolist(), self.var.tolist()):
            yi = mpmath.mpf(yi)
            out.append(yi - s2 / (mpmath.mpf(vi) + s2) * (yi - mpmath.mpf(mi)))
        return out

    # -- exact probability flow ------------------------------------------------------------------

    def exact_flow(self, y, s_from: float, s_to: float) -> np.ndarray:
        """Closed-form solution of the PF-ODE, transporting ``y`` (shape ``(..., d)``) from ``s_from`` to ``s_to``.

        Derivation: with ``w = y - mean`` (per coordinate, variance ``v``)::

            dy/ds = (y - D)/s = (1 - v/(v + s^2)) * w / s = s/(v + s^2) * w,

        so ``d log|w| / ds = s/(v + s^2) = (1/2) d/ds log(v + s^2)`` and ``w / sqrt(v + s^2)`` is
        conserved::

            y(s_to) = mean + (y(s_from) - mean) * sqrt(v + s_to^2) / sqrt(v + s_from^2).

        Check: the map pushes ``N(mean, v + s_from^2)`` to ``N(mean, v + s_to^2)``, as it must.
        Valid for all ``s_from, s_to >= 0`` (``v > 0``).
        """
        if s_from < 0 or s_to < 0:
            raise ValueError("noise levels must be non-negative")
        y = np.asarray(y, dtype=np.float64)
        ratio = np.sqrt(self.var + float(s_to) ** 2) / np.sqrt(self.var + float(s_from) ** 2)
        return self.mean + (y - self.mean) * ratio


# --------------------------------------------------------------------------------------------------
# Gaussian mixture
# --------------------------------------------------------------------------------------------------


class GaussianMixture:
    """Isotropic Gaussian mixture ``x0 ~ sum_k w_k N(mu_k, tau_k^2 I)`` in ``d`` dimensions.

    Parameters
    ----------
    weights : (K,) positive; normalized to sum to one.
    means : (K, d) (a 1-D array of length K is read as ``d = 1``).
    stds : (K,) strictly positive per-component scalar standard deviations ``tau_k``.

    With ``v_k = tau_k^2 + s^2`` the noisy marginal is ``p_s = sum_k w_k N(mu_k, v_k I)``; the posterior
    responsibilities are ``r_k(y) = softmax_k(log w_k - d/2 log v_k - |y - mu_k|^2 / (2 v_k))`` and::

        D(y, s) = sum_k r_k (mu_k + tau_k^2/v_k (y - mu_k)) = y - sum_k r_k (s^2/v_k) (y - mu_k).

    Responsibilities are computed with a max-subtracted softmax (log-sum-exp), so the denoisers are
    stable far from the data and at tiny ``s`` in float32 as well as float64.
    """

    def __init__(self, weights, means, stds):
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        means = np.asarray(means, dtype=np.float64)
        stds = np.asarray(stds, dtype=np.float64).reshape(-1)
        K = weights.shape[0]
        if means.ndim == 1:
            means = means.reshape(K, 1)
        if means.ndim != 2 or means.shape[0] != K or stds.shape[0] != K:
            raise ValueError(
                f"inconsistent shapes: weights {weights.shape}, means {means.shape}, stds {stds.shape}; "
                "expected (K,), (K, d), (K,)"
            )
        if K == 0:
            raise ValueError("a mixture needs at least one component")
        for name, arr in (("weights", weights), ("means", means), ("stds", stds)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} must be finite")
        if np.any(weights <= 0):
            raise ValueError("weights must be strictly positive")
        if np.any(stds <= 0):
            raise ValueError("stds must be strictly positive")
        self.weights = weights / weights.sum()
        self.means = np.array(means)
        self.stds = np.array(stds)
        for arr in (self.weights, self.means, self.stds):
            arr.setflags(write=False)
        self._log_weights = np.log(self.weights)

    @classmethod
    def standard(cls, d: int, seed: int = 0) -> GaussianMixture:
        """A fixed small 3-component mixture in ``d`` dimensions, deterministic given ``seed``.

        Components: one narrow (std 0.05, weight 0.3) and two wider ones (std 0.4 and 1.0, weights
        0.45 and 0.25). Means are drawn from ``N(0, 1.5^2 I)`` with ``numpy.random.default_rng(seed)``.
        The narrow component makes the denoiser strongly nonlinear at small ``s``, which is where
        sampler order reduction and round-off show up.
        """
        if int(d) < 1:
            raise ValueError("d must be >= 1")
        rng = np.random.default_rng(seed)
        means = 1.5 * rng.standard_normal((3, int(d)))
        return cls(weights=[0.3, 0.45, 0.25], means=means, stds=[0.05, 0.4, 1.0])

    @property
    def d(self) -> int:
        """Dimension of the data."""
        return int(self.means.shape[1])

    @property
    def K(self) -> int:
        """Number of components."""
        return int(self.weights.shape[0])

    def __repr__(self) -> str:
        return (
            f"GaussianMixture(weights={self.weights.tolist()}, means={self.means.tolist()}, "
            f"stds={self.stds.tolist()})"
        )

    # -- numpy -----------------------------------------------------------------------------------

    def _logits_np(self, y: np.ndarray, s):
        """Unnormalized log posterior weights ``(..., K)``, the differences ``(..., K, d)`` and ``v``."""
        s2 = _sigma_np(s, y) ** 2  # scalar or (B, 1, ..., 1): broadcasts against (..., K)
        v = self.stds**2 + s2  # (..., K) or (K,)
        diff = y[..., None, :] - self.means  # (..., K, d)
        sq = np.sum(diff * diff, axis=-1)  # (..., K)
        logits = self._log_weights - 0.5 * self.d * np.log(v) - 0.5 * sq / v
        return logits, diff, v, s2

    def log_density_np(self, y, s) -> np.ndarray:
        """``log p_s(y)`` for ``y`` of shape ``(..., d)``; returns shape ``(...)``."""
        y = np.asarray(y, dtype=np.float64)
        logits, _, _, _ = self._logits_np(y, s)
        m = np.max(logits, axis=-1, keepdims=True)
        lse = m[..., 0] + np.log(np.sum(np.exp(logits - m), axis=-1))
        return lse - 0.5 * self.d * _LOG_2PI

    def denoiser_np(self, y, s) -> np.ndarray:
        """``E[x0 | y_s = y]`` for ``y`` of shape ``(..., d)`` (float64)."""
        y = np.asarray(y, dtype=np.float64)
        logits, diff, v, s2 = self._logits_np(y, s)
        logits = logits - np.max(logits, axis=-1, keepdims=True)
        r = np.exp(logits)
        r /= np.sum(r, axis=-1, keepdims=True)
        coef = r * (s2 / v)  # (..., K)
        return y - np.sum(coef[..., None] * diff, axis=-2)

    def sample_np(self, n: int, rng=None) -> np.ndarray:
        """``n`` samples of ``x0``, shape ``(n, d)``. ``rng``: Generator, seed or None."""
        rng = _as_rng(rng)
        n = int(n)
        k = rng.choice(self.K, size=n, p=self.weights)
        return self.means[k] + self.stds[k][:, None] * rng.standard_normal((n, self.d))

    # -- torch -----------------------------------------------------------------------------------

    def denoiser_torch(self, y: torch.Tensor, s) -> torch.Tensor:
        """Torch version of :meth:`denoiser_np` (k-diffusion calling convention, see module doc).

        Computes in ``y``'s dtype (float32 or float64) on ``y``'s device.
        """
        means, var0, log_w = _params_torch(self, y, self.means, self.stds**2, self._log_weights)
        s2 = _sigma_torch(s, y) ** 2  # scalar or (B, 1, ..., 1): broadcasts against (..., K)
        v = var0 + s2  # (..., K) or (K,)
        diff = y.unsqueeze(-2) - means  # (..., K, d)
        sq = (diff * diff).sum(-1)
        logits = log_w - 0.5 * self.d * torch.log(v) - 0.5 * sq / v
        r = torch.softmax(logits, dim=-1)
        coef = r * (s2 / v)
        return y - (coef.unsqueeze(-1) * diff).sum(-2)

    # -- mpmath ----------------------------------------------------------------------------------

    def denoiser_mp(self, y: Sequence, s) -> list:
        """mpmath version at the current ``mp`` precision; ``y`` is a list of length ``d``.

        mpmath's exponent range is unbounded in practice, so the responsibilities are formed directly as
        ``w_k v_k^(-d/2) exp(-|y - mu_k|^2 / (2 v_k))`` (no log-sum-exp needed, and no ``log`` calls,
        which dominate the cost at the high working precision of the Taylor ODE solver).
        """
        mpf = mpmath.mpf
        y = [mpf(v) for v in y]
        s2 = mpf(s) ** 2
        d = self.d
        terms, diffs = [], []
        for w, mu, tau in zip(self.weights.tolist(), self.means.tolist(), self.stds.tolist()):
            v = mpf(tau) ** 2 + s2
            diff = [yi - mpf(mi) for yi, mi in zip(y, mu)]
            sq = mpmath.fsum(t * t for t in diff)
            dens = mpf(w) * mpmath.exp(-sq / (2 * v)) / mpmath.sqrt(v) ** d
            terms.append((dens, s2 / v))
            diffs.append(diff)
        z = mpmath.fsum(dens for dens, _ in terms)
        out = []
        for i in range(d):
            corr = mpmath.fsum(dens * c * dk[i] for (dens, c), dk in zip(terms, diffs))
            out.append(y[i] - corr / z)
        return out


# --------------------------------------------------------------------------------------------------
# reference solutions of the probability-flow ODE
# --------------------------------------------------------------------------------------------------


def reference_flow(
    denoiser_np: Callable[[np.ndarray, float], np.ndarray],
    y0,
    s_from: float,
    s_to: float,
    *,
    rtol: float = 1e-13,
    atol: float = 1e-14,
) -> np.ndarray:
    """Integrate the PF-ODE from ``s_from`` to ``s_to`` (both > 0) with DOP853 in ``u = log s``.

    ``y0`` has shape ``(n, d)`` (or any shape the denoiser accepts); the whole batch is flattened into
    one ODE system ``dy/du = y - D(y, e^u)``, so the solver's step sizes are shared by all points and
    ``denoiser_np`` is called with arrays of ``y0``'s shape and a python float. Returns a float64 array
    of ``y0``'s shape. Raises ``RuntimeError`` if the solver fails.

    Note: scipy warns and raises ``rtol`` to ``100 * eps`` if a smaller value is given; the default
    ``1e-13`` gives ~1e-12 relative accuracy on the test problems here.
    """
    if not (s_from > 0 and s_to > 0) or not (math.isfinite(s_from) and math.isfinite(s_to)):
        raise ValueError(f"reference_flow needs finite s_from, s_to > 0 (got {s_from}, {s_to})")
    y0 = np.array(y0, dtype=np.float64)
    shape = y0.shape
    if s_from == s_to:
        return y0

    def rhs(u, yflat):
        y = yflat.reshape(shape)
        return (y - np.asarray(denoiser_np(y, math.exp(u)), dtype=np.float64)).ravel()

    u0, u1 = math.log(s_from), math.log(s_to)
    sol = solve_ivp(rhs, (u0, u1), y0.ravel(), method="DOP853", rtol=rtol, atol=atol)
    if not sol.success or sol.t[-1] != u1:
        raise RuntimeError(f"DOP853 failed integrating the PF-ODE from s={s_from} to s={s_to}: {sol.message}")
    out = sol.y[:, -1].reshape(shape)
    if not np.all(np.isfinite(out)):
        raise RuntimeError("DOP853 produced non-finite values")
    return out


def reference_flow_mpmath(
    denoiser_mp: Callable[[list, object], list],
    y0,
    s_from: float,
    s_to: float,
    dps: int = 30,
    *,
    return_mpf: bool = False,
):
    """Integrate the PF-ODE for one point with mpmath's Taylor-series ODE solver, in ``u = log s``.

    Slow but accurate: intended to confirm :func:`reference_flow` (DOP853) where float64 is the
    limiting factor. ``y0`` is a single point (length-``d`` sequence); ``denoiser_mp(y, s)`` takes a
    list of ``mpf`` and an ``mpf`` and returns a list of ``mpf``.

    ``mpmath.odefun`` only integrates forward, so we use ``t = ±(u - log s_from) >= 0`` with
    ``dy/dt = ±(y - D(y, e^u))``. The computation runs at ``dps`` decimal digits (the solver raises
    the working precision internally). Returns a float64 array of shape ``(d,)``, or the list of
    ``mpf`` if ``return_mpf``.
    """
    if not (s_from > 0 and s_to > 0):
        raise ValueError(f"reference_flow_mpmath needs s_from, s_to > 0 (got {s_from}, {s_to})")
    y_in = np.asarray(y0, dtype=np.float64).reshape(-1)
    with mpmath.workdps(dps):
        mpf = mpmath.mpf
        u0 = mpmath.log(mpf(s_from))
        u1 = mpmath.log(mpf(s_to))
        sign = 1 if u1 >= u0 else -1
        T = abs(u1 - u0)
        start = [mpf(v) for v in y_in.tolist()]
        if T == 0:
            result = start
        else:

            def F(t, y):
                s = mpmath.exp(u0 + sign * t)
                D = denoiser_mp(list(y), s)
                return [sign * (yi - Di) for yi, Di in zip(y, D)]

            sol = mpmath.odefun(F, 0, start)
            result = [+v for v in sol(T)]
        if return_mpf:
            return result
        return np.array([float(v) for v in result], dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# noise-level schedules
# --------------------------------------------------------------------------------------------------


def _check_schedule_args(n: int, sigma_min: float, sigma_max: float) -> int:
    if int(n) != n or n < 1:
        raise ValueError(f"number of steps must be a positive integer (got {n})")
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf (got {sigma_min}, {sigma_max})")
    return int(n)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) schedule: ``n`` steps, ``n + 1`` strictly decreasing values.

    ``sigma_i = (sigma_max^(1/rho) + i/n * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``; the first
    value is exactly ``sigma_max`` and the last exactly ``sigma_min``. No trailing zero is appended
    (use :func:`append_zero`), unlike k-diffusion's ``get_sigmas_karras``.
    """
    n = _check_schedule_args(n, sigma_min, sigma_max)
    if not rho > 0:
        raise ValueError("rho must be positive")
    ramp = np.linspace(0.0, 1.0, n + 1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return sigmas.astype(np.float64)


def log_uniform_sigmas(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """``n`` steps uniform in ``log s`` (equivalently in log-SNR = ``-2 log s``): ``n + 1`` values.

    First value exactly ``sigma_max``, last exactly ``sigma_min``, no trailing zero.
    """
    n = _check_schedule_args(n, sigma_min, sigma_max)
    sigmas = np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n + 1))
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return sigmas.astype(np.float64)


def append_zero(sigmas):
    """Append a final ``0`` to a 1-D schedule (numpy array or torch tensor; type/dtype preserved)."""
    if torch.is_tensor(sigmas):
        return torch.cat([sigmas, sigmas.new_zeros([1])])
    sigmas = np.asarray(sigmas)
    return np.concatenate([sigmas, np.zeros(1, dtype=sigmas.dtype)])

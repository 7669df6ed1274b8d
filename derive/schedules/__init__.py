r"""Step schedules derived from a module's own error: ``default`` (data-free) and ``tune`` (from a pilot run).

Both return the noise levels (normalized sigma = sigma/alpha) for a budget of ``nfe`` model calls: a float64
1-D tensor of length ``nfe + 1``, strictly decreasing, from exactly ``sigma_max`` to exactly ``sigma_min``,
to pass to the module's ``sample`` (which then calls the model exactly ``nfe`` times)::

    import derive
    mod = derive.load("ersde_order3_phi_ode")
    s = derive.schedules.default(mod, nfe=10, sigma_max=80.0, sigma_min=0.002)
    out = mod.sample(model, x, s)

The data-free levels minimise the predicted global error: the derived leading local error kernel of every step
(:mod:`derive.schedules.error_model`, the module's own derivation) times a smoothness profile of the
prediction along the trajectory (:mod:`derive.schedules.profile`), summed over the steps the module takes,
its low-order start included (:mod:`derive.schedules.optimize`). The model-tuned levels start from the same
prediction with a measured profile, and are then refined on the error the module really makes on the pilot
batch (:mod:`derive.schedules.search`), where the leading term no longer describes long steps.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import pathlib
import time

import numpy as np
import torch

from derive.methods import METHODS
from derive.schedules import search
from derive.schedules.error_model import module_error_spec
from derive.schedules.optimize import ErrorModel, optimise
from derive.schedules.profile import Profile, derivative_tables, gaussian_proxy, measured
from derive.verify.problems import karras_sigmas, log_uniform_sigmas

__all__ = ["default", "predicted_error", "tune"]


def _check_args(nfe, sigma_max, sigma_min) -> tuple[int, float, float]:
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer (got {nfe!r})")
    try:
        sigma_max, sigma_min = float(sigma_max), float(sigma_min)
    except (TypeError, ValueError):
        raise TypeError("sigma_max and sigma_min must be numbers") from None
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(
            f"need 0 < sigma_min < sigma_max < inf (got sigma_max={sigma_max}, sigma_min={sigma_min})"
        )
    return int(nfe), sigma_max, sigma_min


def _finish(s: torch.Tensor, sigma_max: float, sigma_min: float) -> torch.Tensor:
    """float64, endpoints exact, strictly decreasing (a level that rounds onto its neighbour is nudged)."""
    out = s.detach().to(torch.float64).clone()
    out[0], out[-1] = sigma_max, sigma_min
    values = out.tolist()
    for i in range(1, len(values) - 1):
        values[i] = min(
            max(values[i], math.nextafter(values[-1], math.inf)), math.nextafter(values[i - 1], 0.0)
        )
    out = torch.tensor(values, dtype=torch.float64)
    if not bool((out[1:] < out[:-1]).all()):
        raise ValueError("could not build a strictly decreasing schedule (nfe too large for this range?)")
    return out


def _lengths(module, s: torch.Tensor) -> list[int]:
    """The stored outputs each step of ``s`` uses in ``module`` (its coefficient table decides)."""
    _, _, weights, _ = module.coefficient_table(s)
    return [len(w) for w in weights]


#: the step-ratio limits tried (the best predicted error among schedules the module runs at full order wins)
STEP_RATIO_LIMITS = (4.0, 2.5, 1.75, 1.375, 1.2)


def _schedule(
    module, profile: Profile, nfe: int, sigma_max: float, sigma_min: float
) -> tuple[torch.Tensor, dict]:
    phi, form, variable, method = module_error_spec(module)
    model = ErrorModel(
        phi, form, variable, method, int(module.ORDER), profile, getattr(module, "AMPLIFICATION_LIMIT", None)
    )
    best = None
    for ratio in STEP_RATIO_LIMITS:
        s, info = optimise(model, nfe, sigma_max, sigma_min, max_ratio=ratio)
        s = _finish(s, sigma_max, sigma_min)
        info["max_step_ratio"] = ratio
        with torch.no_grad():  # judged with the history the module really uses on these levels
            info["predicted_error"] = float(model.predict(s, _lengths(module, s)))
        candidate = (info["predicted_error"], ratio, s, info)
        if best is None or candidate[0] < best[0]:
            best = candidate
    return best[2], best[3]


def _max_order(module) -> int:
    return METHODS[getattr(module, "METHOD", "taylor")].order(int(module.ORDER))


@functools.lru_cache(maxsize=256)
def _default_cached(key, module, nfe, sigma_max, sigma_min, sigma_data):
    phi, form, variable, method = module_error_spec(module)
    profile = gaussian_proxy(form, variable, _max_order(module), sigma_min, sigma_data)
    s, _ = _schedule(module, profile, nfe, sigma_max, sigma_min)
    return s


def default(module, nfe: int, sigma_max: float, sigma_min: float, *, sigma_data: float = 0.5) -> torch.Tensor:
    """Data-free schedule: the derived error of ``module``'s steps with the Gaussian-scales proxy profile.

    ``sigma_data`` is the data's overall standard deviation (0.5, EDM's value for images in [-1, 1]); the
    proxy spreads Gaussian components from ``sigma_data / 32`` to ``sigma_data``. Deterministic; cached.
    """
    nfe, sigma_max, sigma_min = _check_args(nfe, sigma_max, sigma_min)
    if not (isinstance(sigma_data, (int, float)) and 0 < sigma_data < math.inf):
        raise ValueError(f"sigma_data must be a positive number (got {sigma_data!r})")
    module_error_spec(module)
    key = getattr(module, "SPEC_HASH", id(module))
    return _default_cached(key, module, nfe, sigma_max, sigma_min, float(sigma_data)).clone()


def predicted_error(module, sigmas, *, sigma_data: float = 0.5, profile: Profile | None = None) -> float:
    """The error the model predicts for ``module`` on ``sigmas`` (the quantity :func:`default` minimises)."""
    phi, form, variable, method = module_error_spec(module)
    s = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    if profile is None:
        profile = gaussian_proxy(form, variable, _max_order(module), float(s[-1]), sigma_data)
    model = ErrorModel(phi, form, variable, method, int(module.ORDER), profile)
    with torch.no_grad():
        return float(model.predict(s))


#: pilot grid: at first this many steps of the module's own derived schedule from sigma_max to sigma_min
PILOT_STEPS = 200
#: the pilot doubles its levels until the reference's estimated error is below this share of its RMS ...
REFERENCE_TOLERANCE = 1e-6
#: ... or this many levels are reached
MAX_PILOT_STEPS = 1600
#: random projections per pilot point kept in the profile
PROJECTIONS = 2


class _Counted:
    """``model`` with a count of its calls (every call of the pilot and of the search is reported)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, y, sigma, **kw):
        self.calls += 1
        return self.model(y, sigma, **kw)


def _check_pilot(x_pilot) -> torch.Tensor:
    x = torch.as_tensor(x_pilot)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError("x_pilot must be a batch of starting states (first dimension = batch)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x_pilot must be finite")
    return x


def pilot_profile(
    module, model, x_pilot, sigma_max: float, sigma_min: float, *, steps: int = PILOT_STEPS, extra_args=None
) -> tuple[Profile, dict, torch.Tensor]:
    """Run ``model`` on a fine schedule: the profile, the cost, and the reference end states of ``x_pilot``.

    The batch is ``x_pilot`` and a copy perturbed by 1e-4 of its RMS, run together (one model call per level
    on twice the batch) with the module itself on its derived schedule for ``steps`` calls (full order, graded
    start): the predictions along the trajectories give the derivatives, the perturbation's growth the factor
    G, the unperturbed end states the reference. A run on half the levels estimates the reference's error
    from the module's order; while it is above :data:`REFERENCE_TOLERANCE` of the end states' RMS the levels
    are doubled (up to :data:`MAX_PILOT_STEPS`; the previous run becomes the estimate's coarse run).
    ``cost["reference_error"]`` is the final estimate (RMS), ``cost["pilot_steps"]`` the levels used.
    """
    phi, form, variable, method = module_error_spec(module)
    x = _check_pilot(x_pilot)
    batch = x.shape[0]
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
    eps = 1e-4 * float(x.double().pow(2).mean().sqrt())
    both = torch.cat([x, x + eps * direction])
    counted = _Counted(model)
    order = _max_order(module)
    # each point seen along PROJECTIONS fixed random unit directions (the error's square norm, on average);
    # per level only these projections and the perturbation's size are kept (not the states)
    dims = x[0].numel()
    dirs = torch.randn(dims, PROJECTIONS, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True) * math.sqrt(dims / PROJECTIONS)
    seen: dict[int, tuple] = {}

    def project(y, x0, level):
        y = y.detach().double().cpu().reshape(2 * batch, -1)
        x0 = x0.detach().double().cpu().reshape(2 * batch, -1)
        q = x0 if form == "data" else (y - x0) / level
        return (q[:batch] @ dirs).reshape(-1).numpy(), (y[batch:] - y[:batch]).norm(dim=-1).numpy()

    def keep(info):
        seen[info["i"]] = project(info["x"], info["denoised"], float(fine[info["i"]]))

    start = time.perf_counter()
    coarse = module.sample(
        counted, x, default(module, max(steps // 2, 1), sigma_max, sigma_min), extra_args=extra_args
    )
    coarse = coarse.detach().double().cpu()
    while True:
        seen.clear()
        fine = default(module, steps, sigma_max, sigma_min)
        final = module.sample(counted, both, fine, extra_args=extra_args, callback=keep)
        reference = final[:batch].detach().double().cpu()
        reference_error = float((coarse - reference).pow(2).mean().sqrt()) / (2**order - 1)
        scale = float(reference.pow(2).mean().sqrt())
        if reference_error <= REFERENCE_TOLERANCE * scale or 2 * steps > MAX_PILOT_STEPS:
            break
        coarse, steps = reference, 2 * steps
    seconds = time.perf_counter() - start
    log_s = np.log(fine.numpy())
    # the prediction at the last level, from the module's own model call convention
    last = counted(final, fine[-1] * final.new_ones([final.shape[0]]), **(extra_args or {}))
    seen[steps] = project(final, last, float(fine[-1]))
    values = np.stack([seen[i][0] for i in range(steps + 1)])
    delta = np.stack([seen[i][1] for i in range(steps + 1)])
    derivs = derivative_tables(log_s, values, variable, order)
    growth = np.repeat(delta[-1][None, :] / np.maximum(delta, 1e-300), PROJECTIONS, axis=1)
    # the profile keeps at most PILOT_STEPS + 1 of the levels (a small cache file, whatever the pilot's length)
    rows = np.unique(np.round(np.linspace(0, steps, min(steps, PILOT_STEPS) + 1)).astype(int))
    log_s, derivs, growth = log_s[rows], derivs[:, rows], growth[rows]
    profile = measured(log_s, derivs, growth, order, form, variable, sigma_min)
    cost = {
        "model_calls": counted.calls,
        "batch": 2 * batch,
        "seconds": seconds,
        "pilot_steps": steps,
        "reference_error": reference_error,
    }
    return profile, cost, reference


def _pilot_digest(x_pilot) -> str:
    data = torch.as_tensor(x_pilot).detach().double().cpu().contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


#: the reference end states are kept in the cache file when they have at most this many numbers
CACHED_REFERENCE_SIZE = 1 << 16


def _standard_starts(nfe: int, sigma_max: float, sigma_min: float) -> dict[str, np.ndarray]:
    """The two schedules users start from: uniform in log-SNR, and Karras et al.'s rho = 7."""
    return {
        "log_snr": log_uniform_sigmas(nfe, sigma_min, sigma_max),
        "karras": karras_sigmas(nfe, sigma_min, sigma_max),
    }


def tune(
    module,
    model,
    x_pilot,
    nfe: int,
    sigma_max: float,
    sigma_min: float,
    *,
    cache=None,
    extra_args=None,
    pilot_steps: int = PILOT_STEPS,
    evaluations: int = search.EVALUATIONS,
    report: dict | None = None,
) -> torch.Tensor:
    """Model-tuned schedule: derived from a pilot run of ``model`` from ``x_pilot`` (at sigma_max), then refined
    on the measured error of the pilot batch.

    ``x_pilot`` is a small batch of starting states at ``sigma_max`` (e.g. 16 of the model's shape; 64 or more
    when the data has rare modes, which a small pilot misses: ``benchmarks/tune_check.txt``). The pilot
    (:func:`pilot_profile`) gives the measured profile and a reference solve; the candidates -- the derived
    schedules of the measured and of the data-free profile, log-SNR-uniform and Karras -- are run from the
    pilot states, and the best is refined (:func:`derive.schedules.search.refine`) within ``evaluations``
    schedule evaluations of ``nfe`` model calls each (the four candidates are always measured;
    ``evaluations=0`` skips the search and returns the derived schedule of the measured profile).

    ``cache`` (a path to a ``.json`` file, e.g. next to the model's weights) stores the measured profile and
    the schedules computed from it (per ``nfe`` and ``evaluations``): a later call with the same module, range
    and pilot batch reuses them (no model call; a new ``nfe`` needs the reference, which the file keeps when it
    is small, else the pilot is run again). The costs (model calls, batch, seconds of the pilot and of the
    search) are written to the cache and, if ``report`` is a dict, into it (``report["pilot"]``, ``report["search"]``; ``report["cached"]``
    says whether the pilot was skipped).
    """
    nfe, sigma_max, sigma_min = _check_args(nfe, sigma_max, sigma_min)
    module_error_spec(module)
    if not callable(model):
        raise TypeError("model must be callable as model(x, sigma)")
    if isinstance(evaluations, bool) or not isinstance(evaluations, (int, np.integer)) or evaluations < 0:
        raise ValueError(f"evaluations must be a non-negative integer (got {evaluations!r})")
    if isinstance(pilot_steps, bool) or not isinstance(pilot_steps, (int, np.integer)) or pilot_steps < 2:
        raise ValueError(f"pilot_steps must be an integer >= 2 (got {pilot_steps!r})")
    x = _check_pilot(x_pilot)
    key = {
        "spec_hash": getattr(module, "SPEC_HASH", None),
        "sigma_max": sigma_max,
        "sigma_min": sigma_min,
        "pilot": _pilot_digest(x),
        "pilot_steps": int(pilot_steps),
    }
    entry = f"{nfe}/{int(evaluations)}"  # the budget and the search budget
    path = pathlib.Path(cache).expanduser() if cache is not None else None
    stored = None
    if path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            stored = None
        if not isinstance(stored, dict) or stored.get("key") != key:
            stored = None
    cached = stored is not None
    reference = None
    if stored is not None and entry in stored["schedules"]:
        s = torch.tensor(stored["schedules"][entry], dtype=torch.float64)
    else:
        if stored is not None and stored.get("reference") is not None:
            profile = Profile.from_dict(stored["profile"])
            reference = torch.tensor(stored["reference"], dtype=torch.float64).reshape(x.shape)
        else:
            profile, cost, reference = pilot_profile(
                module, model, x, sigma_max, sigma_min, steps=pilot_steps, extra_args=extra_args
            )
            small = reference.numel() <= CACHED_REFERENCE_SIZE
            schedules = stored["schedules"] if stored is not None else {}
            searches = stored.get("search", {}) if stored is not None else {}
            stored = {
                "key": key,
                "pilot": cost,
                "profile": profile.as_dict(),
                "reference": reference.reshape(-1).tolist() if small else None,
                "schedules": schedules,
                "search": searches,
            }
            cached = False
        s, info = _refined(
            module, model, x, reference, profile, nfe, sigma_max, sigma_min, evaluations, extra_args
        )
        stored["schedules"][entry] = s.tolist()
        stored.setdefault("search", {})[entry] = info
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".part")
            tmp.write_text(json.dumps(stored) + "\n")
            tmp.replace(path)
    if report is not None:
        report["pilot"] = dict(stored["pilot"])
        report["search"] = dict(stored.get("search", {}).get(entry, {}))
        report["cached"] = cached
    return s


def _refined(module, model, x, reference, profile, nfe, sigma_max, sigma_min, evaluations, extra_args):
    counted = _Counted(model)

    def evaluate(levels):
        with torch.no_grad():
            out = module.sample(
                counted, x, _finish(torch.tensor(levels), sigma_max, sigma_min), extra_args=extra_args
            )
        return search.errors(out, reference)

    starts = {
        "derived (measured profile)": _schedule(module, profile, nfe, sigma_max, sigma_min)[0].numpy(),
        "derived (data-free)": default(module, nfe, sigma_max, sigma_min).numpy(),
        **_standard_starts(nfe, sigma_max, sigma_min),
    }
    start = time.perf_counter()
    if evaluations == 0:
        levels, info = (
            starts["derived (measured profile)"],
            {"evaluations": 0, "start": "derived (measured profile)"},
        )
    else:
        levels, info = search.refine(evaluate, starts, _max_order(module), evaluations=evaluations)
    s = _finish(torch.tensor(levels), sigma_max, sigma_min)
    info.update(
        {"model_calls": counted.calls, "batch": int(x.shape[0]), "seconds": time.perf_counter() - start}
    )
    return s, info

"""How a diffusers scheduler's config maps onto a DeriveScheduler: the solver a config selects, the keys whose
values change nothing, and the float64 beta tables diffusers builds in float32 (used by
:mod:`derive.integrations.diffusers`)."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["foreign_kwargs", "solver_module"]

VP_PREDICTIONS = ("epsilon", "sample", "v_prediction")
PREDICTIONS = VP_PREDICTIONS + ("flow_prediction",)
DEFAULT_MODULES = {"vp": "ersde_order2_phi_ode", "flow": "flow_order2_ode"}
TIMESTEP_GRIDS = ("ddim", "multistep")
NOISE_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}

#: diffusers schedulers whose timestep_spacing builds n + 1 points and drops the last (DPM-Solver's grid)
MULTISTEP_SCHEDULERS = frozenset(
    {
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "UniPCMultistepScheduler",
        "DEISMultistepScheduler",
    }
)
#: modules that reproduce a diffusers scheduler drawing its noise in float32 whatever the model's dtype
FLOAT32_NOISE_VARIANTS = frozenset({"sde_dpmpp_2m", "sde_dpmpp_2m_heun"})

#: keys of diffusers' compatible schedulers that choose their solver: with no ``module`` given they select the
#: generated module reproducing it (DPMSolverMultistep, UniPCMultistep, DEISMultistep); an explicit module
#: replaces them
SOLVER_KEYS = frozenset(
    {"solver_order", "algorithm_type", "solver_type", "predict_x0", "skip_prk_steps", "noise_sampler_seed"}
)
#: keys of diffusers' compatible schedulers that derive does not implement, with the values that change nothing
NEUTRAL_VALUES = {
    "flow_shift": None,  # any value: used only with use_flow_sigmas
    "interpolation_type": ("linear",),
    "invert_sigmas": (False,),
    "lambda_min_clipped": (-math.inf,),
    "sigma_min": (None,),
    "sigma_max": (None,),
    "stochastic_sampling": (False,),
    "timestep_type": ("discrete",),
    "use_flow_sigmas": (False,),
    "use_lu_lambdas": (False,),
    "variance_type": (None, "fixed_small"),
    "disable_corrector": ((), []),
    "solver_p": (None,),
}


def solver_module(scheduler: str, config) -> str | None:
    """The generated module that reproduces a diffusers multistep solver's configuration.

    ``scheduler`` is the class name (DPMSolverMultistepScheduler, UniPCMultistepScheduler,
    DEISMultistepScheduler), ``config`` its config (missing keys take that class's defaults). Returns None for
    another class; raises ValueError naming the key when no generated module reproduces the combination.
    """
    order = int(config.get("solver_order", 2))
    if scheduler == "DPMSolverMultistepScheduler":
        algorithm = config.get("algorithm_type", "dpmsolver++")
        kind = config.get("solver_type", "midpoint")
        if order == 1:
            names = {
                "dpmsolver++": "variant_ddim",
                "dpmsolver": "variant_ddim",
                "sde-dpmsolver++": "variant_ddpm",
            }
        else:
            prefix = {
                "dpmsolver++": "variant_dpmpp",
                "dpmsolver": "variant_dpm",
                "sde-dpmsolver++": "variant_sde_dpmpp",
            }
            names = {a: f"{p}_{order}m" for a, p in prefix.items()}
            if order == 2 and kind == "heun":
                names = {a: f"{n}_heun" for a, n in names.items()}
            if order != 2:
                names.pop("sde-dpmsolver++")
        if algorithm not in names or order not in (1, 2, 3) or kind not in ("midpoint", "heun"):
            raise ValueError(
                f"no generated module reproduces DPMSolverMultistepScheduler(algorithm_type={algorithm!r}, "
                f"solver_order={order}, solver_type={kind!r}); pass module=..."
            )
        return names[algorithm]
    if scheduler == "UniPCMultistepScheduler":
        kind = config.get("solver_type", "bh2")
        if order not in (1, 2, 3) or kind not in ("bh1", "bh2"):
            raise ValueError(
                f"no generated module reproduces UniPCMultistepScheduler(solver_order={order}, "
                f"solver_type={kind!r}); pass module=..."
            )
        return f"variant_unipc_{kind}_{order}" + ("" if config.get("predict_x0", True) else "_noise")
    if scheduler == "DEISMultistepScheduler":
        algorithm, kind = config.get("algorithm_type", "deis"), config.get("solver_type", "logrho")
        if order not in (1, 2, 3) or algorithm != "deis" or kind != "logrho":
            raise ValueError(
                f"no generated module reproduces DEISMultistepScheduler(algorithm_type={algorithm!r}, "
                f"solver_order={order}, solver_type={kind!r}); pass module=..."
            )
        return f"variant_deis_{order}"
    return None


def _cosine_betas(n: int, max_beta: float = 0.999) -> torch.Tensor:
    """The squaredcos_cap_v2 (GLIDE cosine) betas, in float64."""

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor(
        [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)], dtype=torch.float64
    )


def _zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas whose last alphas_cumprod is 0 (Lin et al. 2024, Common Diffusion Noise Schedules are Flawed, Alg. 1).

    sqrt(alphas_cumprod) is shifted so that its last value is 0 and scaled so that its first is unchanged.
    """
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    cumprod = root**2
    alphas = torch.cat([cumprod[:1], cumprod[1:] / cumprod[:-1]])
    return 1.0 - alphas


def foreign_kwargs(source: str, config: dict, kwargs: dict, own: set) -> None:
    """Fill ``kwargs`` (in place) from another scheduler's config: its values, defaults included, where they map
    to DeriveScheduler's (``own``: its constructor keys), the module reproducing its solver when none is given,
    its prediction type and timestep grid; ValueError naming a key whose value derive cannot reproduce."""
    if source == "UniPCMultistepScheduler" and config.get("lower_order_final"):
        kwargs.setdefault("lower_order_final", "always")  # UniPC lowers the last orders at any n
    if source == "DEISMultistepScheduler":
        kwargs.setdefault("final_sigmas_type", "sigma_min")  # DEIS always ends there
    for key, value in list(config.items()):
        if key.startswith("_") or key in own or key in SOLVER_KEYS:
            continue
        if key == "set_alpha_to_one":
            kwargs.setdefault("final_sigmas_type", "zero" if value else "sigma_min")
        elif key in NEUTRAL_VALUES:
            allowed = NEUTRAL_VALUES[key]
            if allowed is not None and not any(value == v for v in allowed):
                raise ValueError(
                    f"{source or 'the config'}: {key}={value!r} is not reproduced by DeriveScheduler "
                    f"(only {', '.join(repr(v) for v in allowed)})"
                )
        elif key in ("sigma_data", "sigma_schedule", "rho"):
            raise ValueError(
                f"{source or 'the config'}: {key}={value!r} is EDM's preconditioned parametrization, "
                "which DeriveScheduler does not reproduce; use the edm_* modules' own sample()"
            )
    if "module" not in kwargs:
        chosen = solver_module(source, config)
        if chosen is not None:
            kwargs["module"] = chosen
    if "prediction_type" not in kwargs:
        flow_keys = "prediction_type" not in config and (
            "shift" in config or "use_dynamic_shifting" in config
        )
        if flow_keys or source.startswith("FlowMatch"):
            kwargs["prediction_type"] = "flow_prediction"
    kwargs.setdefault("timestep_grid", "multistep" if source in MULTISTEP_SCHEDULERS else "ddim")


def _sigma_to_t(sigma: float, log_sigmas: np.ndarray) -> float:
    """Fractional timestep of a normalized noise level: interpolation in log sigma (as diffusers)."""
    log_sigma = math.log(max(sigma, 1e-10))
    above = int(np.searchsorted(log_sigmas, log_sigma, side="right")) - 1
    low = min(max(above, 0), len(log_sigmas) - 2)
    w = (log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1])
    w = min(max(w, 0.0), 1.0)
    return (1 - w) * low + w * (low + 1)

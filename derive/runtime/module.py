"""What a generated module defines around the inlined runtime: its constants and the routines printed from
the derivation.

The runtime files import these names so that they lint, type-check and import as a package; in a generated
module the real definitions take their place. The values here are those of a first-order, data-prediction
module with phi(s) = s (ratio s'/s, no noise, c_0 = 1 - s'/s), which is also what the runtime's unit tests
start from (they replace single names with monkeypatch).
"""

from __future__ import annotations

import torch

ORDER = 1
METHOD = "taylor"
FORM = "data"
WEIGHT_SIGN = 1.0
SPEC = {"family": "ersde", "method": "taylor", "order": 1, "phi": "s"}
HISTORY_STEP_RATIO = 0.01
AMPLIFICATION_LIMIT: dict[int, float] = {}
CHECKED_SIGMAS = (1e-4, 1e4)
MIN_STEP_RATIO = 1e-9
QUADRATURE_NODES: tuple[float, ...] = ()
QUADRATURE_WEIGHTS: tuple[float, ...] = ()
#: process families only
SCHEDULE = "linear"
SCHEDULE_DOC = ""
TABLE = "alphas_cumprod"
TIME_RANGE: tuple[float, float | None] = (0.0, 1.0)
PARAMETER_CONDITIONS: dict[str, str] = {}
MEAN_REVERTING = False


def _ratio(sigma, sigma_next):
    """The linear factor r of the step (printed from the derivation)."""
    return sigma_next / sigma


def noise_variance(sigma, sigma_next):
    """The variance of the injected noise (printed from the derivation)."""
    return torch.zeros_like(sigma)


def taylor_weights(sigma, sigma_next):
    """[c_0, ..., c_{K-1}] (printed from the derivation)."""
    return [1 - sigma_next / sigma]


def _node_offset(sigma, sigma_next):
    """u(sigma_next) - u(sigma) in the expansion variable (printed)."""
    return sigma_next - sigma


def _first_derivative_weights():
    return ((1,),)


#: per history length k, the routine giving the derivative weights of the k-point interpolant (printed)
_DERIVATIVE_WEIGHTS = {1: _first_derivative_weights}
#: the same for the corrector's k + 1 points, and the Lagrange basis of the Adams form (printed)
_CORRECTOR_WEIGHTS: dict = {}
CORRECTOR_DROP = 0
_LAGRANGE_BASIS: dict = {}
_STAGES: dict = {}
_CORRECTORS: dict = {}


def _adams_density(sigma, v):
    """The step's density in v = log(s / sigma) (printed, Adams form)."""
    raise NotImplementedError


def _adams_prefactor(sigma, sigma_next):
    raise NotImplementedError


def _expansion_offset(sigma, v):
    raise NotImplementedError


def _alpha(t, *parameters):
    raise NotImplementedError


def _sigma(t, *parameters):
    raise NotImplementedError


def _family_coefficients(alpha, alpha_next, ratio, weight_sum, std):
    raise NotImplementedError


def _pure_noise_step(sigma, alpha_next, sigma_next):
    raise NotImplementedError


def to_prediction(x, output, alpha, sigma, mu):
    """(data prediction, stored prediction) from the model's output in family coordinates (printed)."""
    raise NotImplementedError

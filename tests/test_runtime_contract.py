"""The runtime contract of every generated module, the published variants included.

Every bad argument to ``sample`` (and, for the process families, ``sample_native``) is refused with a
``ValueError`` or ``TypeError`` whose message names the argument -- before the first model call where it can be
known then, at the step otherwise -- never a raw torch error, an ``IndexError`` or ``AttributeError`` from deep
inside, and never a silently wrong result. Each case below is run on every module it applies to; one test per
module collects every case that misbehaves, so a failure lists all of them at once.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from .conftest import GENERATED, load_module

#: the whole catalogue, the published variants included
ALL_NAMES = sorted(json.loads((GENERATED / "MANIFEST.json").read_text()))

SIGMAS = [10.0, 5.0, 2.0, 1.0, 0.5, 0.0]


def denoiser(x, sigma, **kwargs):
    """The exact denoiser of N(0, I) data (any batch shape)."""
    return x / (1 + sigma.reshape(-1, *[1] * (x.dim() - 1)) ** 2)


def state(batch=2):
    return torch.randn(batch, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def injects_noise(module) -> bool:
    return module.SPEC.get("phi") != "s"


def is_variant(module) -> bool:
    return hasattr(module, "VARIANT")


def uses_default_phi(module) -> bool:
    return "exp" in str(module.SPEC.get("phi"))


@dataclass(frozen=True)
class Case:
    """One bad input: ``call(module)`` must raise ``error`` with a message matching ``pattern``."""

    name: str
    call: Callable
    error: type
    pattern: str
    applies: Callable = lambda module: True


def sample(module, *, model=denoiser, x=None, sigmas=SIGMAS, **kwargs):
    return module.sample(model, state() if x is None else x, sigmas, **kwargs)


def returning(value):
    return lambda x, sigma, **kwargs: value(x) if callable(value) else value


def nan_model(x, sigma, **kwargs):
    return torch.full_like(x, math.nan)


SAMPLE_CASES = [
    # sigmas
    Case(
        "sigmas 2-d",
        lambda m: sample(m, sigmas=torch.tensor([[10.0, 5.0], [1.0, 0.0]])),
        ValueError,
        "sigmas must be 1-D",
    ),
    Case("sigmas 0-d", lambda m: sample(m, sigmas=torch.tensor(3.0)), ValueError, "sigmas must be 1-D"),
    Case("sigmas a string", lambda m: sample(m, sigmas="10, 5, 0"), TypeError, "sigmas must be"),
    Case("sigmas an int", lambda m: sample(m, sigmas=10), TypeError, "sigmas must be"),
    Case("sigmas with None", lambda m: sample(m, sigmas=[10.0, None, 0.0]), TypeError, "sigmas must be"),
    Case("sigmas ragged", lambda m: sample(m, sigmas=[[10.0], [5.0, 1.0]]), TypeError, "sigmas must be"),
    Case(
        "sigmas complex",
        lambda m: sample(m, sigmas=torch.tensor([10.0, 1.0], dtype=torch.complex64)),
        TypeError,
        "real numbers",
    ),
    Case("sigmas bool", lambda m: sample(m, sigmas=torch.tensor([True, False])), TypeError, "real numbers"),
    Case("sigmas NaN", lambda m: sample(m, sigmas=[10.0, math.nan, 0.0]), ValueError, "finite"),
    Case("sigmas Inf", lambda m: sample(m, sigmas=[math.inf, 1.0, 0.0]), ValueError, "finite"),
    Case(
        "sigmas increasing",
        lambda m: sample(m, sigmas=[1.0, 2.0, 0.0]),
        ValueError,
        "decreasing|non-increasing",
    ),
    Case("sigmas negative", lambda m: sample(m, sigmas=[1.0, -1.0]), ValueError, "non-negative"),
    Case("sigmas one level", lambda m: sample(m, sigmas=[1.0]), ValueError, "at least two"),
    Case("sigmas empty", lambda m: sample(m, sigmas=[]), ValueError, "at least two"),
    Case("zero before the end", lambda m: sample(m, sigmas=[1.0, 0.0, 0.0]), ValueError, "zero|decreasing"),
    Case(
        "a step beyond the verified range",
        lambda m: sample(m, sigmas=[80.0, 80.0 * 1e-10, 0.0]),
        ValueError,
        r"longer than this module's coefficients are verified for \(sigma_next / sigma >= 1e-09",
    ),
    Case(
        "phi overflows at sigma 5e9",
        lambda m: sample(m, sigmas=[5e9, 4e9, 100.0, 1.0, 0.0]),
        ValueError,
        r"not finite in float64 .* verified for sigma in \[0.0001, 10000\]",
        uses_default_phi,
    ),
    # x
    Case("x 0-d", lambda m: sample(m, x=torch.tensor(1.0)), ValueError, "x must have a batch dimension"),
    Case(
        "x int64",
        lambda m: sample(m, x=torch.ones(2, 3, dtype=torch.int64)),
        TypeError,
        "x must be a floating-point tensor",
    ),
    Case(
        "x bool",
        lambda m: sample(m, x=torch.ones(2, 3, dtype=torch.bool)),
        TypeError,
        "x must be a floating-point tensor",
    ),
    Case(
        "x complex",
        lambda m: sample(m, x=torch.ones(2, 3, dtype=torch.complex64)),
        TypeError,
        "x must be a floating-point tensor",
    ),
    Case("x a list", lambda m: sample(m, x=[[1.0, 2.0]]), TypeError, "x must be a torch.Tensor"),
    Case("x a float", lambda m: sample(m, x=1.0), TypeError, "x must be a torch.Tensor"),
    # the model
    Case("model None", lambda m: sample(m, model=None), TypeError, "model must be callable"),
    Case(
        "model returns None",
        lambda m: sample(m, model=returning(None)),
        TypeError,
        r"the model returned NoneType at step 0 \(sigma = 10\)",
    ),
    Case(
        "model returns a float",
        lambda m: sample(m, model=returning(0.5)),
        TypeError,
        "the model returned float at step 0",
    ),
    Case(
        "model returns a list",
        lambda m: sample(m, model=returning(lambda x: x.tolist())),
        TypeError,
        "the model returned list",
    ),
    Case(
        "model returns the wrong shape",
        lambda m: sample(m, model=returning(lambda x: x[:1])),
        ValueError,
        r"the model returned shape \(1, 3\) at step 0",
    ),
    Case(
        "model returns a flat tensor",
        lambda m: sample(m, model=returning(lambda x: x.reshape(-1))),
        ValueError,
        r"the model returned shape \(6,\)",
    ),
    Case(
        "model returns NaN (check_finite)",
        lambda m: sample(m, model=nan_model, check_finite=True),
        ValueError,
        r"NaN or Inf at step 0",
    ),
    # the noise
    Case(
        "noise_sampler wrong shape",
        lambda m: sample(m, noise_sampler=lambda s, t: torch.zeros(5)),
        ValueError,
        r"noise_sampler returned shape \(5,\) at step 0",
        injects_noise,
    ),
    Case(
        "noise_sampler returns None",
        lambda m: sample(m, noise_sampler=lambda s, t: None),
        TypeError,
        "noise_sampler returned NoneType",
        injects_noise,
    ),
    Case(
        "noise_sampler not callable",
        lambda m: sample(m, noise_sampler=3),
        TypeError,
        "noise_sampler must be callable",
    ),
    Case(
        "generator [] for a batch of 2",
        lambda m: sample(m, generator=[]),
        ValueError,
        "got 0 generators for a batch of 2",
    ),
    Case(
        "generator list too short",
        lambda m: sample(m, generator=[torch.Generator()]),
        ValueError,
        "got 1 generators for a batch of 2",
    ),
    Case(
        "generator a seed",
        lambda m: sample(m, generator=42),
        TypeError,
        "generator must be a torch.Generator",
    ),
    Case(
        "generator a string",
        lambda m: sample(m, generator="seed"),
        TypeError,
        "generator must be a torch.Generator",
    ),
    Case(
        "generator list of seeds",
        lambda m: sample(m, generator=[1, 2]),
        TypeError,
        "generator must be a torch.Generator",
    ),
    # the other arguments
    Case("extra_args a list", lambda m: sample(m, extra_args=[1]), TypeError, "extra_args must be a dict"),
    Case(
        "callback not callable", lambda m: sample(m, callback="print"), TypeError, "callback must be callable"
    ),
    Case(
        "check_finite a string",
        lambda m: sample(m, check_finite="yes"),
        TypeError,
        "check_finite must be True or False",
    ),
    Case("s_noise a string", lambda m: sample(m, s_noise="1"), TypeError, "s_noise must be a real number"),
    Case("s_noise NaN", lambda m: sample(m, s_noise=math.nan), ValueError, "s_noise must be finite"),
    Case("s_noise negative", lambda m: sample(m, s_noise=-1.0), ValueError, "s_noise must be >= 0"),
    Case(
        "s_noise a vector",
        lambda m: sample(m, s_noise=torch.ones(2)),
        TypeError,
        "s_noise must be a real number",
    ),
    Case("eta not the module's", lambda m: sample(m, eta=0.5), ValueError, "eta=0.5 is not this module's"),
    Case("history a string", lambda m: sample(m, history="abc"), TypeError, "history must be a list"),
    Case(
        "history of the wrong shape",
        lambda m: sample(m, history=[torch.zeros(3)]),
        ValueError,
        r"history\[0\] must be a tensor shaped like x",
    ),
    Case(
        "history longer than the schedule",
        lambda m: sample(m, history=[state()] * 9),
        ValueError,
        "history holds 9 predictions",
    ),
]

# ---- the process families' own coordinates ------------------------------------------------------------------

_betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
ALPHAS_CUMPROD = torch.cumprod(1 - _betas, 0)
THETA_BAR = torch.linspace(0.0, 4.0, 100, dtype=torch.float64)


def native_defaults(module) -> tuple[list, dict]:
    """Timesteps and keyword arguments that sample_native accepts (checked by test_native_defaults_work)."""
    kwargs = {}
    if module.FAMILY == "mrsde":
        kwargs["mu"] = torch.zeros(2, 3, dtype=torch.float64)
    if module.SCHEDULE == "discrete":
        if module.FAMILY == "vpsde":
            kwargs["alphas_cumprod"] = ALPHAS_CUMPROD
            return [999, 750, 500, 250, 10], kwargs
        kwargs["theta_bar"] = THETA_BAR
        return [99, 60, 30, 10], kwargs
    if module.FAMILY == "edm":
        return [10.0, 5.0, 1.0, 0.5], kwargs
    if module.FAMILY == "mrsde":
        return [3.0, 2.0, 1.0, 0.5], kwargs
    return [0.9, 0.7, 0.5, 0.3, 0.1], kwargs


def native(module, *, model=None, timesteps=None, x=None, **overrides):
    times, kwargs = native_defaults(module)
    kwargs.update(overrides)
    model = model or (lambda x, t, **kw: torch.zeros_like(x))
    return module.sample_native(
        model, state() if x is None else x, times if timesteps is None else timesteps, **kwargs
    )


def is_native(module) -> bool:
    return hasattr(module, "sample_native")


def continuous(module) -> bool:
    return is_native(module) and module.SCHEDULE != "discrete"


def bounded(module) -> bool:
    return continuous(module) and module.TIME_RANGE[1] is not None


def discrete(module) -> bool:
    return is_native(module) and module.SCHEDULE == "discrete"


def first_parameter(module) -> str:
    return next(iter(module.SCHEDULE_PARAMETERS))


def has_parameters(module) -> bool:
    return is_native(module) and bool(module.SCHEDULE_PARAMETERS)


def mean_reverting(module) -> bool:
    return is_native(module) and module.FAMILY == "mrsde"


def reversed_times(module):
    times, _ = native_defaults(module)
    return list(reversed(times))


NATIVE_CASES = [
    Case(
        "timesteps 2-d",
        lambda m: native(m, timesteps=torch.ones(2, 2)),
        ValueError,
        "timesteps must be 1-D",
        is_native,
    ),
    Case(
        "timesteps a string", lambda m: native(m, timesteps="0.5"), TypeError, "timesteps must be", is_native
    ),
    Case(
        "timesteps NaN",
        lambda m: native(m, timesteps=[0.5, math.nan]),
        ValueError,
        "timesteps must be finite",
        is_native,
    ),
    Case(
        "one timestep",
        lambda m: native(m, timesteps=native_defaults(m)[0][:1]),
        ValueError,
        "at least 2 times",
        is_native,
    ),
    Case(
        "timesteps from data to noise",
        lambda m: native(m, timesteps=reversed_times(m)),
        ValueError,
        "timesteps must run from noise to data",
        is_native,
    ),
    Case(
        "t above the domain",
        lambda m: native(m, timesteps=[1.5, 0.5, 0.1]),
        ValueError,
        r"timesteps must lie in \[0, 1\] .* got 1.5 at position 0",
        bounded,
    ),
    Case(
        "t below the domain",
        lambda m: native(m, timesteps=[0.5, -0.1]),
        ValueError,
        r"timesteps must lie in \[0, ",
        continuous,
    ),
    Case(
        "schedule parameter negative",
        lambda m: native(m, **{first_parameter(m): -5.0}),
        ValueError,
        r"schedule parameter \w+ must be positive, got -5.0",
        has_parameters,
    ),
    Case(
        "schedule parameter a string",
        lambda m: native(m, **{first_parameter(m): "0.1"}),
        TypeError,
        r"\w+ must be a real number",
        has_parameters,
    ),
    Case(
        "schedule parameter NaN",
        lambda m: native(m, **{first_parameter(m): math.nan}),
        ValueError,
        "must be finite",
        has_parameters,
    ),
    Case(
        "final_to_zero a string",
        lambda m: native(m, final_to_zero="yes"),
        TypeError,
        "final_to_zero must be True or False",
        is_native,
    ),
    Case(
        "native model returns None",
        lambda m: native(m, model=lambda x, t, **kw: None),
        TypeError,
        "the model returned NoneType at step 0",
        is_native,
    ),
    Case(
        "native model wrong shape",
        lambda m: native(m, model=lambda x, t, **kw: x[0]),
        ValueError,
        r"the model returned shape \(3,\)",
        is_native,
    ),
    Case(
        "native x int",
        lambda m: native(m, x=torch.ones(2, 3, dtype=torch.int32)),
        TypeError,
        "x must be a floating-point tensor",
        is_native,
    ),
    Case(
        "native generator wrong length",
        lambda m: native(m, generator=[torch.Generator()] * 3),
        ValueError,
        "got 3 generators for a batch of 2",
        is_native,
    ),
    Case(
        "timestep past the table",
        lambda m: native(m, timesteps=[len(native_defaults(m)[1].get("alphas_cumprod", THETA_BAR)), 5]),
        ValueError,
        r"must be indices 0\.\.\d+ into",
        discrete,
    ),
    Case(
        "negative timestep",
        lambda m: native(m, timesteps=[5, -1]),
        ValueError,
        r"must be indices 0\.\.\d+ into",
        discrete,
    ),
    Case(
        "fractional timestep",
        lambda m: native(m, timesteps=[50.5, 10]),
        ValueError,
        r"must be integer indices into \w+, got 50.5 at position 0",
        discrete,
    ),
    Case(
        "table that falls",
        lambda m: native(m, **{m.TABLE: torch.flip(native_defaults(m)[1][m.TABLE], [0])}),
        ValueError,
        r"must make the noise level sigma / alpha grow with the index",
        discrete,
    ),
    Case(
        "table entry out of range",
        lambda m: native(m, **{m.TABLE: torch.full_like(native_defaults(m)[1][m.TABLE], -0.5)}),
        ValueError,
        r"\w+\[0\] = -0.5 gives no real alpha and sigma",
        discrete,
    ),
    Case(
        "table empty",
        lambda m: native(m, **{m.TABLE: []}),
        ValueError,
        r"(is empty|must be indices)",
        discrete,
    ),
    Case(
        "table a string",
        lambda m: native(m, **{m.TABLE: "linear"}),
        TypeError,
        r"(alphas_cumprod|theta_bar) must be",
        discrete,
    ),
    Case(
        "mu of the wrong shape",
        lambda m: native(m, mu=torch.zeros(5)),
        ValueError,
        r"mu of shape \(5,\) does not broadcast",
        mean_reverting,
    ),
    Case("mu None", lambda m: native(m, mu=None), TypeError, "mu must be a tensor", mean_reverting),
]

VP_TABLE_ABOVE_ONE = Case(
    "alphas_cumprod above 1",
    lambda m: native(m, alphas_cumprod=torch.full((1000,), 1.5)),
    ValueError,
    r"alphas_cumprod\[0\] = 1.5 gives no real alpha and sigma",
    lambda m: discrete(m) and m.FAMILY == "vpsde",
)
VP_NEGATIVE_BETA = Case(
    "vp beta_min -5",
    lambda m: native(m, beta_min=-5.0),
    ValueError,
    "schedule parameter beta_min must be positive, got -5.0",
    lambda m: continuous(m) and m.SCHEDULE == "linear" and m.FAMILY == "vpsde",
)
CASES = SAMPLE_CASES + NATIVE_CASES + [VP_TABLE_ABOVE_ONE, VP_NEGATIVE_BETA]


def test_there_are_at_least_60_distinct_bad_inputs_over_the_whole_catalogue():
    assert len({case.name for case in CASES}) == len(CASES) >= 60
    assert len(ALL_NAMES) >= 100 and any(name.startswith("variant_") for name in ALL_NAMES)


def _misbehaviours(module) -> list[str]:
    problems = []
    for case in CASES:
        if not case.applies(module):
            continue
        try:
            case.call(module)
        except (ValueError, TypeError) as error:
            message = str(error)
            if type(error) is not case.error and not issubclass(type(error), case.error):
                problems.append(
                    f"{case.name}: {type(error).__name__} instead of {case.error.__name__}: {message}"
                )
            elif not re.search(case.pattern, message):
                problems.append(f"{case.name}: message {message!r} does not match {case.pattern!r}")
            elif "\n" in message:
                problems.append(f"{case.name}: the message is not one line: {message!r}")
        except Exception as error:  # noqa: BLE001 -- what the contract forbids: report it
            problems.append(f"{case.name}: raw {type(error).__name__}: {error}")
        else:
            problems.append(f"{case.name}: accepted")
    return problems


@pytest.mark.parametrize("name", ALL_NAMES)
def test_bad_inputs_are_refused_by_name(name):
    problems = _misbehaviours(load_module(name))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_defaults_of_these_cases_work(name):
    """The arguments the cases start from are valid: each bad case differs from a run that works in one argument."""
    module = load_module(name)
    out = sample(module, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    if is_native(module):
        out = native(module, generator=torch.Generator().manual_seed(0))
        assert out.shape == (2, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_NAMES)
def test_empty_batch_with_an_empty_generator_list(name):
    module = load_module(name)
    out = sample(module, x=torch.zeros(0, 3, dtype=torch.float64), generator=[])
    assert out.shape == (0, 3)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_one_contract_for_dtype_generators_and_check_finite(name):
    """Every module (variants included) returns x's dtype whatever the model's, takes one generator per batch
    item (equal to running each item alone), and has check_finite."""
    module = load_module(name)
    out = sample(module, x=state().float(), model=lambda x, s, **kw: denoiser(x, s).double())
    assert out.dtype == torch.float32
    x = state()
    together = sample(module, x=x, generator=[torch.Generator().manual_seed(k) for k in (1, 2)])
    alone = [
        sample(module, x=x[k : k + 1], generator=[torch.Generator().manual_seed(seed)])
        for k, seed in enumerate((1, 2))
    ]
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-12, atol=1e-12)
    sample(module, check_finite=True)


def test_native_discrete_timesteps_accept_integer_valued_floats():
    """A float tensor of whole numbers is a valid index list (diffusers' timesteps are often float)."""
    module = load_module("vpsde_order2_ode_discrete")
    times, kwargs = native_defaults(module)
    model = lambda x, t, **kw: torch.zeros_like(x)  # noqa: E731
    as_int = module.sample_native(model, state(), times, **kwargs)
    as_float = module.sample_native(model, state(), torch.tensor(times, dtype=torch.float32), **kwargs)
    torch.testing.assert_close(as_int, as_float, rtol=0, atol=0)


@pytest.mark.parametrize("phi_overflow_sigma", [4e9, 1e12])
def test_default_phi_overflow_is_refused_not_nan(phi_overflow_sigma):
    """Before: all-NaN output with no error, even with check_finite=True."""
    module = load_module("ersde_order3")
    with pytest.raises(ValueError, match=r"step 0 .* not finite in float64"):
        module.sample(
            denoiser, state(), [phi_overflow_sigma, phi_overflow_sigma * 1e-8, 1.0, 0.0], check_finite=True
        )
    # the same module below the overflow works
    assert torch.isfinite(module.sample(denoiser, state(), [1e4, 1.0, 0.0])).all()

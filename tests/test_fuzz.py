"""Property-based fuzzing (hypothesis; deterministic: ``derandomize=True``, no example database).

* the CLI, in-process: whatever the arguments, only SystemExit leaves ``main`` and the exit code is 0-3;
  a bad-input exit (2) never shows a traceback;
* the phi parser and admissibility check: only ExpressionError / AdmissibilityError, for any text;
* the generated modules: any admissible decreasing schedule (repeats, optional final 0) gives finite
  coefficients and finite samples; increasing or NaN schedules raise ValueError before the model runs.

The example counts are budgeted so that the whole file runs in well under a minute.
"""

from __future__ import annotations

import functools
import itertools
import math
import tempfile

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from derive.cli import main
from derive.errors import AdmissibilityError, ExpressionError
from derive.spec import FAMILIES
from derive.symbolic.admissibility import check_phi
from derive.symbolic.expression import CONSTANTS, FUNCTIONS, parse_expression, variable_symbol
from derive.symbolic.families import FAMILIES as PROCESS_FAMILIES
from derive.verify.problems import GaussianData

from .conftest import MODULE_NAMES, load_module

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# ------------------------------------------------------------------------------------------------------------
# the CLI
# ------------------------------------------------------------------------------------------------------------

#: valid phi values whose derivations are fast (< ~1.5 s at order <= 2); "default" and the other presets are
#: covered by the test suite proper and cost 1-3 s each here
VALID_PHI = ["sde", "s**1.5", "s+s**2", "2*s", "s*(1+s)"]
INVALID_PHI = ["sqrt(s)", "s +", "1/(s-1)", "__import__('os')", "s.__class__", "-s", "", "x", "s**1001", "pi"]
junk = st.one_of(
    st.sampled_from(["", " ", "foo", "0", "-1", "9", "2.5", "x", "1e0", "99999999999999999999"]),
    st.text(max_size=10),
)
phi_values = st.one_of(
    st.sampled_from(VALID_PHI),
    st.sampled_from(INVALID_PHI),
    st.text(alphabet="s()+-*/^.0123456789eEpixqrtlogcsn_ ,'\"[]:;@%", max_size=25),
    st.text(max_size=15),
)


@st.composite
def valid_options(draw):
    """A valid ``gen`` option set (orders capped to bound the derivation time), as {option: value}."""
    family = draw(st.sampled_from(FAMILIES))
    # process families at order 2 take up to 15 s to derive (vpsde cosine, data prediction): order 1 only
    options = {
        "--family": family,
        "--order": draw(st.sampled_from(["1", "2"] if family == "ersde" else ["1"])),
    }
    if family == "ersde":
        options["--phi"] = draw(st.sampled_from(VALID_PHI))
        options["--prediction"] = draw(st.sampled_from([None, "data", "noise"]))
    else:
        process = PROCESS_FAMILIES[family]
        options["--dynamics"] = draw(st.sampled_from(["ode", "sde", "er"]))
        if options["--dynamics"] == "er":
            options["--phi"] = draw(st.sampled_from(VALID_PHI))
        options["--prediction"] = draw(st.sampled_from([None, *process.predictions]))
        options["--schedule"] = draw(st.sampled_from([None, *(item.name for item in process.schedules)]))
    return {key: value for key, value in options.items() if value is not None}


OPTION_VALUES = {
    "--family": st.sampled_from([*FAMILIES, "foo", "", "ERSDE"]),
    "--order": st.one_of(st.sampled_from(["1", "2"]), junk),
    "--phi": phi_values,
    "--method": st.sampled_from(["taylor", "rk", ""]),
    "--dynamics": st.sampled_from(["ode", "sde", "er", "foo"]),
    "--prediction": st.sampled_from(["data", "noise", "velocity", "score"]),
    "--schedule": st.sampled_from(
        ["linear", "cosine", "discrete", "geometric", "edm", "constant", "karras", ""]
    ),
    "--variable": st.sampled_from(["s", "lambda", "foo"]),
}


@st.composite
def cli_arguments(draw):
    """Mostly valid option sets with 0-2 mutations (an option dropped, replaced by a random valid or invalid
    value, or added), random flags and an occasional stray argument."""
    options = draw(valid_options())
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(sorted(OPTION_VALUES)))
        if name in options and draw(st.booleans()):
            del options[name]
        else:
            options[name] = draw(OPTION_VALUES[name])
    args = ["gen"] + [item for pair in options.items() for item in pair]
    args += draw(st.lists(st.sampled_from(["--check", "--force", "--bogus", "-h"]), max_size=2, unique=True))
    args += draw(st.lists(junk, max_size=1))
    return args


@settings(FUZZ, max_examples=60)
@given(cli_arguments())
def test_cli_never_crashes(args):
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as out:
        result = runner.invoke(main, args + ["--out", out], catch_exceptions=False)
    assert result.exit_code in (0, 1, 2, 3), (args, result.exit_code, result.output)
    assert "Traceback" not in result.output, (args, result.output)
    if result.exit_code != 0:
        assert result.stderr.strip(), f"exit {result.exit_code} without a message: {args}"


# ------------------------------------------------------------------------------------------------------------
# phi strings
# ------------------------------------------------------------------------------------------------------------

_atoms = st.one_of(
    st.just("s"),
    st.sampled_from(sorted(CONSTANTS)),
    st.integers(0, 30).map(str),
    st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.3g}"),
)


def _extend(children):
    return st.one_of(
        st.tuples(children, st.sampled_from(["+", "-", "*", "/", "**", "^"]), children).map(
            lambda t: f"({t[0]}{t[1]}{t[2]})"
        ),
        st.tuples(st.sampled_from(sorted(FUNCTIONS)), children).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(children, children).map(lambda t: f"log({t[0]}, {t[1]})"),
        children.map(lambda c: f"-{c}"),
        children.map(lambda c: f"s*({c})"),
    )


phi_grammar = st.recursive(_atoms, _extend, max_leaves=6)
phi_text = st.one_of(
    phi_grammar,
    st.text(alphabet="s()+-*/^.0123456789eEpi_ ,lambdaxq[]{}:;@%&|~!<>='\"\n\t", max_size=40),
    st.text(max_size=30),
)


def _parse_and_check(text):
    try:
        phi = parse_expression(text)
    except ExpressionError:
        return
    try:
        check_phi(phi, variable_symbol("s"))
    except AdmissibilityError:
        return


@settings(FUZZ, max_examples=250)
@given(phi_text)
def test_phi_parse_and_check_raise_only_derive_errors(text):
    _parse_and_check(text)


# ------------------------------------------------------------------------------------------------------------
# schedules
# ------------------------------------------------------------------------------------------------------------

DATA = GaussianData([1.0, -2.0, 0.5], [0.5, 1.0, 0.1])


@functools.cache
def _module(name):
    return load_module(name)


def _model(calls=None):
    def model(x, sigma):
        if calls is not None:
            calls.append(1)
        return DATA.denoiser_torch(x, sigma)

    return model


@st.composite
def schedules(draw, final_zero=None):
    """Admissible schedules: non-increasing, 1e-3 <= sigma <= 1e3, with repeats, near-repeats (adjacent
    floats) and an optional final 0; 2-60 values."""
    n = draw(st.integers(1, 50))
    logs = draw(st.lists(st.floats(math.log(1e-3), math.log(1e3)), min_size=n, max_size=n))
    values = sorted((min(max(math.exp(v), 1e-3), 1e3) for v in logs), reverse=True)
    for i in draw(st.lists(st.integers(0, n - 1), max_size=4)):  # exact repeats
        values.insert(i, values[i])
    for i in draw(st.lists(st.integers(0, len(values) - 1), max_size=2)):  # the next float down
        values.insert(i + 1, math.nextafter(values[i], 0.0))
    values = sorted(values, reverse=True)[:59]
    zero = draw(st.booleans()) if final_zero is None else final_zero
    if zero or len(values) < 2:
        values.append(0.0)
    assert 2 <= len(values) <= 60 and all(a >= b for a, b in itertools.pairwise(values))
    return values


def _run_schedule(name, values, seed):
    """coefficient_table and sample (Gaussian denoiser, 8 samples) on ``values``: (table, states, output)."""
    module = _module(name)
    sigmas = torch.tensor(values, dtype=torch.float64)
    table = module.coefficient_table(sigmas)
    gen = torch.Generator().manual_seed(seed)
    x = torch.tensor(DATA.mean) + math.sqrt(values[0] ** 2 + 1.0) * torch.randn(
        8, DATA.d, generator=gen, dtype=torch.float64
    )
    states = []
    out = module.sample(_model(), x, sigmas, generator=gen, callback=lambda info: states.append(info["x"]))
    return table, states, out


@settings(FUZZ, max_examples=80)
@given(st.sampled_from(MODULE_NAMES), schedules(), st.integers(0, 2**16))
# found by this test (whether the search reaches it depends on the derandomized seed, so it is pinned here):
# distinct sigmas 1 ulp apart whose offsets from a later sigma coincide -> ZeroDivisionError (order >= 3)
@example(
    "ersde_order3", [3.955076722920577, math.nextafter(3.955076722920577, 0.0), 1.3668379411737963, 1.0], 0
)
def test_admissible_schedules_give_finite_coefficients_and_samples(name, values, seed):
    (ratios, stds, weights, _finals), states, out = _run_schedule(name, values, seed)
    assert len(ratios) == len(values) - 1
    for i, (r, sd, w) in enumerate(zip(ratios, stds, weights)):
        assert math.isfinite(r) and math.isfinite(sd) and all(math.isfinite(v) for v in w), (
            f"step {i}: {values[i]!r} -> {values[i + 1]!r}: ratio {r}, std {sd}, weights {w}"
        )
    for i, state in enumerate(states + [out]):
        assert torch.isfinite(state).all(), f"non-finite state after {i} steps of {values}"


@settings(FUZZ, max_examples=80)
@given(st.sampled_from(MODULE_NAMES), schedules(), st.integers(0, 2**16))
# found by this test (whether the search reaches it depends on the derandomized seed, so it is pinned here)
@example("edm_order2_sde", [math.e, math.nextafter(math.e, 0.0), 1.0], 0)
# three short steps then a 15 x longer one: order-3 extrapolation multiplied the SDE's noise by ~175
@example("vesde_order3_sde", [54.598150033144236, 51.290215346585704, 48.182698291098816, 1.0], 0)
def test_admissible_schedules_give_bounded_samples(name, values, seed):
    """Stronger than finite: the Gaussian denoiser contracts towards the data, so the result of any admissible
    schedule stays within a few standard deviations of the noisy data distribution at sigmas[0]. (Fails for
    near-repeated sigmas, e.g. [e, e - 1 ulp, 1.0]: the multistep weights after a tiny step are ~ h^2 / delta.)"""
    _, states, out = _run_schedule(name, values, seed)
    bound = 50 * math.sqrt(values[0] ** 2 + 2.0) + 10
    for i, state in enumerate(states + [out]):
        assert float(state.abs().max()) < bound, f"|state {i}| = {float(state.abs().max()):.3g} on {values}"


@st.composite
def bad_schedules(draw):
    values = draw(schedules(final_zero=False))
    distinct = sorted(set(values), reverse=True)
    kind = draw(st.sampled_from(["increase", "nan"]) if len(distinct) >= 2 else st.just("nan"))
    i = draw(st.integers(0, len(values) - 1))
    if kind == "nan":
        values[i] = math.nan
        return values, "finite"
    # make one step go up: swap a pair of neighbouring distinct values
    j = next((k for k in range(len(values) - 1) if values[k] > values[k + 1]), None)
    k = next((k for k in range(i, len(values) - 1) if values[k] > values[k + 1]), j)
    values[k], values[k + 1] = values[k + 1], values[k]
    return values, "non-increasing"


@settings(FUZZ, max_examples=80)
@given(st.sampled_from(MODULE_NAMES), bad_schedules())
def test_bad_schedules_raise_value_error(name, bad):
    values, message = bad
    module = _module(name)
    sigmas = torch.tensor(values, dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        module.coefficient_table(sigmas)
    calls = []
    with pytest.raises(ValueError, match=message):
        module.sample(_model(calls), torch.zeros(2, DATA.d, dtype=torch.float64), sigmas)
    assert calls == [], "the schedule must be validated before the model is called"

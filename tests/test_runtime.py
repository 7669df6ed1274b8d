"""The runtime files (derive/runtime/) as ordinary Python: unit tests of each piece, independent of any
generated module, and the properties of their inlining.

The runtime imports what a generated module provides from :mod:`derive.runtime.module` (a first-order,
data-prediction module with phi(s) = s: ratio s'/s, c_0 = 1 - s'/s, no noise); tests change single names with
monkeypatch where they need another module.
"""

from __future__ import annotations

import ast
import math
import pathlib
import subprocess

import pytest
import torch

from derive import runtime
from derive.runtime import continuous, contract, corrector, discrete, history, loop, native, table, taylor
from derive.runtime import module as provided

from .conftest import GENERATED

FILES = sorted(
    p.stem for p in pathlib.Path(runtime.__file__).parent.glob("*.py") if p.stem not in ("__init__", "module")
)


@pytest.mark.parametrize("name", FILES)
def test_every_runtime_file_inlines_plain_code(name):
    """Below the marker: only definitions (no imports, no top-level statements), so inlining adds no
    dependency and nothing runs at import but definitions."""
    tree = ast.parse(runtime.inlined(name))
    assert tree.body
    for node in tree.body:
        assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)), (name, ast.dump(node)[:80])


def test_generated_modules_define_every_name_they_use():
    """The inlined runtime and the printed routines together leave no undefined name (ruff F821), in every
    module of the catalogue."""
    from derive.emit.render import _ruff_binary

    result = subprocess.run(
        [_ruff_binary(), "check", "--no-cache", "--isolated", "--select", "F821,F811", str(GENERATED)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- contract -----------------------------------------------------------------------------------------------


def test_float64_reads_sequences_in_float64_and_names_the_argument():
    assert contract._float64([0.1, 1.0]).dtype == torch.float64
    assert contract._float64([0.1])[0].item() == 0.1  # not rounded through float32
    assert contract._float64(torch.tensor([1, 2])).dtype == torch.float64
    with pytest.raises(ValueError, match="timesteps must be 1-D, got shape"):
        contract._float64(torch.ones(2, 2), "timesteps")
    with pytest.raises(TypeError, match="levels must be a 1-D tensor"):
        contract._float64("1, 2", "levels")
    with pytest.raises(TypeError, match="real numbers"):
        contract._float64(torch.tensor([1j]))


@pytest.mark.parametrize(
    "value, expected", [(1, 1.0), (0.5, 0.5), (torch.tensor(2.0), 2.0), (torch.tensor([3.0]), 3.0)]
)
def test_real_accepts_numbers_and_one_element_tensors(value, expected):
    assert contract._real(value, "s_noise") == expected


@pytest.mark.parametrize("value", [True, "1", None, [1.0], torch.ones(2), 1j])
def test_real_refuses_everything_else(value):
    with pytest.raises(TypeError, match="s_noise must be a real number"):
        contract._real(value, "s_noise")


def test_check_steps_refuses_exactly_beyond_the_verified_ratio():
    ratio = provided.MIN_STEP_RATIO
    contract._check_steps([1.0, ratio, 0.0])  # the limit itself, then a final step to 0
    contract._check_steps([1e30, 0.0])  # any final step
    with pytest.raises(ValueError, match=r"step 1 \(sigma 1 -> "):
        contract._check_steps([2.0, 1.0, ratio * 0.999])


def test_check_table_names_the_step_with_a_non_finite_coefficient():
    contract._check_table([0.5], [0.0], [(0.5,)], [2.0, 1.0])
    with pytest.raises(ValueError, match=r"step 1 \(sigma 1 -> 0.5\) are not finite"):
        contract._check_table([0.5, math.nan], [0.0, 0.0], [(0.5,), (0.5,)], [2.0, 1.0, 0.5])


def test_check_output_and_generator():
    x = torch.zeros(2, 3)
    assert contract._check_output(x, x, 0, 1.0, "the model") is x
    with pytest.raises(TypeError, match="the model returned float at step 4"):
        contract._check_output(1.0, x, 4, 1.0, "the model")
    with pytest.raises(ValueError, match=r"noise_sampler returned shape \(3,\)"):
        contract._check_output(torch.zeros(3), x, 0, 1.0, "noise_sampler")
    contract._check_generator([torch.Generator(), torch.Generator()], x)
    with pytest.raises(ValueError, match="got 1 generators for a batch of 2"):
        contract._check_generator([torch.Generator()], x)
    with pytest.raises(TypeError, match="generator must be"):
        contract._check_generator(0, x)


def test_default_noise_per_item_generators_equal_single_runs():
    x = torch.zeros(2, 4, dtype=torch.float64)
    together = contract._default_noise(x, [torch.Generator().manual_seed(k) for k in (5, 6)])
    alone = [contract._default_noise(x[:1], torch.Generator().manual_seed(k)) for k in (5, 6)]
    assert torch.equal(together, torch.cat(alone))
    assert contract._default_noise(x[:0], []).shape == (0, 4)


# ---- history and the table ----------------------------------------------------------------------------------


def test_history_lengths_drop_nodes_before_short_or_repeated_steps(monkeypatch):
    monkeypatch.setattr(history, "ORDER", 3)
    assert history._history_lengths([8.0, 4.0, 2.0, 1.0]) == [1, 2, 3]
    # a repeated sigma: its zero-length step uses one output, the next step cannot reach across it
    assert history._history_lengths([8.0, 4.0, 4.0, 2.0, 1.0]) == [1, 2, 1, 2]
    # a step 1000x shorter than the next one restarts the history
    assert history._history_lengths([10.0, 9.999, 5.0, 1.0]) == [1, 1, 2]
    # a zero-length step keeps its history only down to nodes 1 % of that history's longest step apart (nodes one
    # ulp apart round to one point in lambda = -log s: their divided differences divide by zero)
    assert history._history_lengths([7.38905609893065, 7.3890560989306495, 1.0, 1.0]) == [1, 1, 2]


@pytest.mark.parametrize(
    "w, expected", [((1.0,), 1.0), ((2.0, -1.0), 3.0), ((1.0, -1.0), math.inf), ((0.0,), 0.0)]
)
def test_amplification(w, expected):
    assert history._amplification(w) == expected


def test_coefficient_table_of_the_first_order_data_step():
    """phi = s, first order: y' = (s'/s) y + (1 - s'/s) x0 (DDIM in normalized coordinates), then the final step."""
    ratios, stds, weights, finals = table.coefficient_table([4.0, 1.0, 0.0])
    assert ratios == [0.25, 0.0] and stds == [0.0, 0.0]
    assert weights == [(0.75,), (1.0,)] and finals == [False, True]


def test_taylor_step_weights_combine_taylor_and_derivative_weights(monkeypatch):
    """w_j = sum_n c_n D_nj: with D of the two-point interpolant in u (delta = u_{i-1} - u_i) the weights of a
    linear extrapolation."""
    monkeypatch.setattr(taylor, "_DERIVATIVE_WEIGHTS", {2: lambda d: ((1.0, 0.0), (-1.0 / d, 1.0 / d))})
    c = [[2.0], [3.0]]  # c_0, c_1 of step 0
    assert taylor._step_weights(c, None, 0, [0.5]) == [2.0 - 3.0 / 0.5, 3.0 / 0.5]


@pytest.mark.parametrize("drop", [0, 1])
def test_corrector_keeps_the_new_output_and_all_but_the_dropped_stored_ones(monkeypatch, drop):
    """K = 2 with phi = s in u = s: the pc corrector (drop 0) interpolates P_new, P_i, P_(i-1); the am corrector
    (drop 1) P_new and P_i only: wc = (c_1 / d, c_0 - c_1 / d) with d = u_(i+1) - u_i, and the correction is wc
    minus the predictor's weights (-w on what the corrector leaves out)."""
    monkeypatch.setattr(history, "ORDER", 2)
    monkeypatch.setattr(corrector, "CORRECTOR_DROP", drop)
    monkeypatch.setattr(corrector, "taylor_weights", lambda a, b: [1 - b / a, (a - b) ** 2 / (2 * a)])
    monkeypatch.setattr(corrector, "AMPLIFICATION_LIMIT", {2: 1e9, 3: 1e9})
    line = {1: lambda d: ((0.0, 1.0), (1.0 / d, -1.0 / d))}  # the line through (d, P_new) and (0, P_i)
    monkeypatch.setattr(corrector, "_CORRECTOR_WEIGHTS", line if drop else {})
    sigmas = [4.0, 2.0, 1.0]
    weights = [(0.5,), (0.25, 0.125)]  # the predictor's (any values: the correction subtracts them)
    if not drop:
        with pytest.raises(KeyError):  # drop 0 asks for the three-point corrector
            corrector.correction_table(sigmas, weights)
        return
    corrections = corrector.correction_table(sigmas, weights)
    c0, c1, d = 1 - 2.0 / 4.0, 2.0**2 / 8.0, -2.0
    assert corrections[0] == pytest.approx((c1 / d, c0 - c1 / d - 0.5))
    assert corrections[1] is None  # the last step: no model call after it


def test_run_applies_a_correction_once_the_new_output_is_known():
    outputs = iter([torch.tensor([[1.0]]), torch.tensor([[10.0]]), torch.tensor([[100.0]])])

    def predict(x, i):
        value = next(outputs)
        return value, value

    seen = []
    out = loop._run(
        predict,
        torch.tensor([[0.0]]),
        3,
        ratios=[1.0, 1.0, 0.0],
        weights=[(1.0,), (1.0,), (1.0,)],
        stds=[0.0, 0.0, 0.0],
        finals=[False, False, True],
        noise=None,
        callback=lambda i, x, d: seen.append(float(x)),
        history=None,
        start=0,
        levels=[3.0, 2.0, 1.0],
        corrections=[(0.5, -0.25), None, None],
    )
    # step 0 predicts 0 + 1 = 1; at step 1 the model sees the predicted state, then the correction adds
    # 0.5 * 10 - 0.25 * 1 before step 1's own update (+10); the final step returns the prediction
    assert seen == [0.0, 1.0, 15.75]
    assert float(out) == 100.0


def test_sample_of_the_default_module_is_ddim():
    x = torch.tensor([[2.0, -4.0]], dtype=torch.float64)
    out = loop.sample(lambda y, s: torch.zeros_like(y), x, [4.0, 1.0])
    torch.testing.assert_close(out, x * 0.25, rtol=0, atol=0)
    with pytest.raises(TypeError, match="the model returned NoneType at step 0"):
        loop.sample(lambda y, s: None, x, [4.0, 1.0])


# ---- the family's own coordinates -------------------------------------------------------------------------


def test_times_of_a_continuous_schedule(monkeypatch):
    monkeypatch.setattr(continuous, "TIME_RANGE", (0.0, 1.0))
    assert continuous._times(0.5, "t").item() == 0.5 and continuous._times(0.5, "t").dim() == 0
    assert continuous._times([1.0, 0.0], "timesteps").tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 1\] .* got 1.5 at position 1"):
        continuous._times([0.5, 1.5], "timesteps")
    monkeypatch.setattr(continuous, "TIME_RANGE", (0.0, None))
    assert continuous._times([80.0], "timesteps").tolist() == [80.0]


def test_times_of_a_discrete_schedule():
    assert discrete._times(torch.tensor([3.0, 1.0]), "timesteps", 4).tolist() == [3, 1]
    with pytest.raises(ValueError, match="must be integer indices into alphas_cumprod, got 1.5"):
        discrete._times([1.5], "timesteps", 4)
    with pytest.raises(ValueError, match=r"indices 0..3 into alphas_cumprod \(4 entries\), got 4"):
        discrete._times([4], "timesteps", 4)


def test_check_levels_names_the_direction_and_the_schedule():
    times = torch.tensor([0.9, 0.5], dtype=torch.float64)
    native._check_levels(times, torch.tensor([0.5, 0.9]), torch.tensor([0.8, 0.4]))
    with pytest.raises(ValueError, match=r"timesteps must run from noise to data: .* timesteps\[0\] = 0.9"):
        native._check_levels(times, torch.tensor([0.9, 0.5]), torch.tensor([0.4, 0.8]))
    with pytest.raises(ValueError, match=r"gives alpha = nan"):
        native._check_levels(times, torch.tensor([math.nan, 0.5]), torch.tensor([0.4, 0.8]))


def test_parameter_conditions(monkeypatch):
    monkeypatch.setattr(native, "PARAMETER_CONDITIONS", {"beta_min": "positive"})
    assert native._parameter(0.1, "beta_min") == 0.1
    with pytest.raises(ValueError, match="schedule parameter beta_min must be positive, got -5.0"):
        native._parameter(-5, "beta_min")
    with pytest.raises(TypeError, match="beta_min must be a real number"):
        native._parameter("0.1", "beta_min")

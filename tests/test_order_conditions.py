"""Order conditions of every checked-in module's update, at 60 digits (exact derivative weights, mpmath weights)."""

from __future__ import annotations

import math
import random

import pytest

from derive.checks import order_conditions
from derive.methods import METHODS
from derive.symbolic.ersde import derive_step
from derive.symbolic.expression import parse_expression

from .conftest import manifest

NAMES = sorted(manifest())


@pytest.mark.parametrize("name", NAMES)
def test_update_is_exact_below_its_order_and_not_at_it(name):
    entry = manifest()[name]
    order = entry["order"]
    form = "noise" if entry.get("prediction") == "noise" else "data"
    step = derive_step(parse_expression(entry["phi"]))
    rng = random.Random(name)
    for _ in range(2):
        h = rng.uniform(0.02, 0.3)
        offsets, last = [], 0.0
        for _ in range(order - 1):
            last += h * rng.uniform(0.05, 20) ** 0.5  # step ratios between ~0.2 and ~4.5 relative to h
            offsets.append(last)
        variable = entry.get("variable", "s")
        if variable == "lambda":  # the same nodes, as offsets in lambda = -log s (relative to s_i = 1)
            offsets = [-math.log(1 + o) for o in offsets]
        result = order_conditions(step, order, form, offsets, h, variable=variable)
        assert result.holds(order), (name, result.residuals)
        assert abs(result.leading_constant) > 0
        method = METHODS[entry["method"]]
        if method.corrector:  # through the new point as well: one degree more on the nodes it keeps
            size = max(order - method.corrector_drop, 1)
            result = order_conditions(
                step, size, form, offsets[: size - 1], h, variable=variable, corrector=True
            )
            assert result.holds(size + 1), (name, result.residuals)
            assert size + 1 == method.order(order)  # the order the registry declares
            assert abs(result.leading_constant) > 0

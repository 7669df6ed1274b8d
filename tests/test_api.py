"""The Python API takes every spec option with the command line's defaults."""

import inspect

import pytest

import derive
from derive.errors import SpecError

from .conftest import GENERATED


@pytest.mark.parametrize(
    ("kwargs", "module"),
    [
        ({"family": "vpsde", "order": 2}, "vpsde_order2_ode"),
        ({"family": "vesde", "order": 1, "dynamics": "sde"}, "vesde_order1_sde"),
        ({"family": "ersde", "order": 2, "phi": "ode"}, "ersde_order2_phi_ode"),
    ],
)
def test_generate_defaults_as_the_cli_does(kwargs, module):
    """`derive.generate(family="vpsde", order=2)` gives the checked-in `derive gen --family vpsde --order 2`."""
    assert derive.generate(**kwargs) == (GENERATED / f"{module}.py").read_text()


def test_generate_takes_every_cli_spec_option():
    from derive.cli import gen

    cli_spec_options = {p.name for p in gen.params} - {"variant", "all_", "check", "out", "force"}
    assert cli_spec_options <= set(inspect.signature(derive.generate).parameters)
    assert cli_spec_options <= set(inspect.signature(derive.Spec.from_options).parameters)


def test_generate_refuses_a_bad_option_by_name():
    with pytest.raises(SpecError, match="unknown family"):
        derive.generate(family="nope", order=2)

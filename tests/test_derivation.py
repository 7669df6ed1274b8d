"""The plain-data derivation stage: what derive(spec) holds, and that it needs no emitter."""

import subprocess
import sys

from derive.derivation import derive
from derive.spec import Spec


def test_a_derivation_records_its_checks_and_declared_orders():
    ode = derive(Spec("ersde", 3, phi="ode", method="pc"))
    names = [check.name for check in ode.checks]
    assert names[:5] == ["drift", "exact mean", "variance", "integration by parts", "ratio and variance"]
    # the corrector integrates one degree more (c_0 .. c_K) and its derivative weights are checked per order
    assert [n for n in names if n.endswith("closed form")] == [f"c_{n} closed form" for n in range(4)]
    assert [n for n in names if n.startswith(("interpolation", "corrector"))] == [
        f"{kind} k={k}" for k in (1, 2, 3) for kind in ("interpolation", "corrector")
    ]
    assert all(check.residual in ("0",) or float(check.residual) < 1e-25 for check in ode.checks)
    assert ode.orders.method == 4 and not ode.orders.stochastic and ode.orders.weak is None
    sde = derive(Spec("ersde", 2, phi="sde"))
    assert sde.orders.stochastic and (sde.orders.strong, sde.orders.weak) == (1, 2)
    assert sde.plan is derive(Spec("ersde", 2, phi="sde")).plan  # cached per spec


def test_the_derivation_stage_does_not_import_the_emitter():
    code = (
        "import sys; from derive.derivation import derive; from derive.spec import Spec; "
        "derive(Spec('ersde', 1, phi='ode')); print(any(m.startswith('derive.emit') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_verify_explain_and_the_integrations_do_not_import_the_emitter():
    """They read derivations and load modules; only `derive gen` and the API's module_text print code."""
    code = (
        "import sys\n"
        "import derive.verify.harness, derive.verify.command, derive.verify.blackbox, derive.explain.command\n"
        "import derive.integrations.diffusers, derive.integrations.kdiffusion\n"
        "from derive.explain.steps import build_explanation\n"
        "from derive.spec import Spec\n"
        "build_explanation(Spec('ersde', 2, phi='ode'))\n"
        "print(sorted(m for m in sys.modules if m.startswith('derive.emit')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

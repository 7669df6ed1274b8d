"""Spec -> Derivation: the plain-data stage between the symbolic layer and its readers.

:func:`derive` parses and admits phi, derives the one-step solution, runs every check and plans the float64
evaluation of the coefficients. The emitter prints a :class:`Derivation`; verify, explain, the integrations
and the schedules read it. Nothing here prints or formats code.
"""

from __future__ import annotations

import dataclasses
import functools
import signal
import threading
import time

from derive.checks import Check, adams_identity_check, generic_checks, interpolation_check, step_checks
from derive.coefficients import CoefficientPlan, plan_coefficients
from derive.errors import AdmissibilityError
from derive.methods import METHODS
from derive.spec import Spec
from derive.symbolic.admissibility import check_phi
from derive.symbolic.ersde import ERSDEStep, derive_step, s
from derive.symbolic.expression import parse_expression

__all__ = ["DERIVATION_TIME_LIMIT", "DERIVATION_WALL_LIMIT", "Derivation", "Orders", "derive", "derive_spec"]

#: CPU-time bound (seconds) on one derivation, independent of machine load; a phi that SymPy cannot
#: handle in this time is refused
DERIVATION_TIME_LIMIT = 40.0
#: wall-clock bound (seconds) on one derivation: on a loaded machine the CPU bound alone can take several
#: times as long to reach. The slowest derivation of the catalogue takes a few seconds.
DERIVATION_WALL_LIMIT = 60.0


@dataclasses.dataclass(frozen=True)
class Orders:
    """The orders the method declares (and verify measures): ``method`` for the deterministic part with exact
    starting values (K, or K + 1 with a corrector), and for a stochastic step the strong and weak orders."""

    method: int
    stochastic: bool
    strong: float | None = None
    weak: float | None = None


@dataclasses.dataclass(frozen=True)
class Derivation:
    """Everything derived for one spec: the solved step, the coefficient plan and every check that ran."""

    spec: Spec
    step: ERSDEStep
    plan: CoefficientPlan
    checks: tuple[Check, ...]
    orders: Orders


class _DerivationTimeout(Exception):
    pass


def _declared_orders(spec: Spec, step: ERSDEStep) -> Orders:
    method = spec.method_order
    if step.noise_variance == 0:
        return Orders(method=method, stochastic=False)
    return Orders(method=method, stochastic=True, strong=min(method, 1), weak=min(method, 2))


def _derive(spec: Spec) -> Derivation:
    phi = parse_expression(spec.phi_text)
    check_phi(phi, s)
    step = derive_step(phi)
    checks = list(generic_checks())
    # a corrector through K + 1 nodes integrates one degree more: it needs c_0 .. c_K
    method = METHODS[spec.method]
    plan = plan_coefficients(step, spec.method_order, spec.form, spec.variable, direct=method.direct_weights)
    closed = {
        int(q.name[1:]): q.closed
        for q in plan.weights
        if q.closed is not None and spec.form == "data" and spec.variable == "s"
    }
    checks += step_checks(step, closed)
    for k in range(1, spec.order + 1):
        checks.append(interpolation_check(k))
        if k in method.corrector_sizes(spec.order):
            checks.append(interpolation_check(k, corrector=True))
        if method.direct_weights:
            checks.append(adams_identity_check(step, k, spec.form, spec.variable))
    return Derivation(spec, step, plan, tuple(checks), _declared_orders(spec, step))


@functools.cache
def derive(spec: Spec) -> Derivation:
    """The derivation of ``spec`` (cached per spec).

    Failures that come from phi itself (SymPy running out of time, quadrature that cannot reach float64
    accuracy because phi overflows) are reported as AdmissibilityError, not as tracebacks.
    """
    use_alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if use_alarm:

        def _expired(signum, frame):
            raise _DerivationTimeout

        previous = {number: signal.signal(number, _expired) for number in (signal.SIGVTALRM, signal.SIGALRM)}
        signal.setitimer(signal.ITIMER_VIRTUAL, DERIVATION_TIME_LIMIT)
        # a caller's own wall-clock timer is suspended meanwhile and resumed with what is left of it
        outer, _ = signal.setitimer(signal.ITIMER_REAL, DERIVATION_WALL_LIMIT)
        started = time.monotonic()
    try:
        return _derive(spec)
    except _DerivationTimeout:
        raise AdmissibilityError(
            f"phi is too complex: its derivation did not finish within {DERIVATION_TIME_LIMIT:.0f} s of CPU time "
            f"or {DERIVATION_WALL_LIMIT:.0f} s of wall-clock time ({spec.phi_text})"
        ) from None
    except (ArithmeticError, NameError, OverflowError, NotImplementedError) as error:
        raise AdmissibilityError(f"phi cannot be evaluated accurately in float64: {error}") from None
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            signal.setitimer(signal.ITIMER_REAL, 0)
            for number, handler in previous.items():
                signal.signal(number, handler)
            if outer > 0:
                signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 1e-3))


def derive_spec(spec: Spec) -> tuple[ERSDEStep, CoefficientPlan]:
    """``(step, plan)`` of :func:`derive` (the two parts most readers need)."""
    derivation = derive(spec)
    return derivation.step, derivation.plan

"""A convergence study (errors over step counts and the fitted order, against its claim) and a module's report."""

from __future__ import annotations

import dataclasses

from derive.verify.orders import DEFAULT_FLOOR_FACTOR, OrderFit, fit_order
from derive.verify.references import (
    Problem,
    Settings,
    step_size,
)

# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Study:
    """One convergence study: errors per step count, the fitted order and (if checked) the verdict."""

    kind: str  # method | as-used | as-used+warmup | strong | weak | weak+warmup
    problem: str
    steps: list[int]
    step_sizes: list[float]
    errors: list[float]
    fit: OrderFit | None
    fit_error: str | None
    claim: float | None
    tolerance: float | None
    reference: str
    seconds: float = 0.0
    floor: float = 0.0
    note: str = ""

    @property
    def order(self) -> float | None:
        return None if self.fit is None else self.fit.order

    @property
    def exact(self) -> bool:
        """Every error is at round-off level: the sampler is exact on this problem (no order to fit)."""
        return self.fit is None and all(e <= DEFAULT_FLOOR_FACTOR * self.floor for e in self.errors)

    @property
    def checked(self) -> bool:
        return self.claim is not None

    @property
    def passed(self) -> bool | None:
        """None if not checked; False if checked and short of the claim (or no order could be fitted).

        A study that is exact to round-off passes (no claim can be violated), flagged by :attr:`exact`.
        """
        if not self.checked:
            return None
        if self.exact:
            return True
        return self.fit is not None and self.fit.order >= self.claim - self.tolerance

    @property
    def label(self) -> str:
        return f"{self.kind} ({self.problem})"

    def as_dict(self) -> dict:
        fit = None
        if self.fit is not None:
            fit = {
                "order": self.fit.order,
                "local_orders": list(self.fit.local_orders),
                "used_steps": [self.steps[i] for i in self.fit.used],  # steps ascend = step sizes descend
                "floor": self.fit.floor,
                "intercept": self.fit.intercept,
                "residual": self.fit.residual,
            }
        return {
            "kind": self.kind,
            "problem": self.problem,
            "reference": self.reference,
            "steps": self.steps,
            "step_sizes": self.step_sizes,
            "errors": self.errors,
            "errors_by_steps": {str(n): e for n, e in zip(self.steps, self.errors)},
            "fit": fit,
            "fit_error": self.fit_error,
            "exact": self.exact,
            "floor": self.floor,
            "note": self.note,
            "claim": self.claim,
            "tolerance": self.tolerance,
            "checked": self.checked,
            "passed": self.passed,
            "seconds": self.seconds,
        }


@dataclasses.dataclass
class ModuleReport:
    name: str
    spec: dict
    spec_hash: str
    order: int
    dynamics: str
    source: str
    studies: list[Study]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(s.passed is not False for s in self.studies)

    def find(self, kind: str, problem: str | None = None) -> list[Study]:
        return [s for s in self.studies if s.kind == kind and (problem is None or s.problem == problem)]

    def failures(self) -> list[Study]:
        return [s for s in self.studies if s.passed is False]

    def as_dict(self) -> dict:
        return {
            "module": self.name,
            "spec": self.spec,
            "spec_hash": self.spec_hash,
            "claimed_order": self.order,
            "dynamics": self.dynamics,
            "source": self.source,
            "passed": self.passed,
            "seconds": self.seconds,
            "studies": [s.as_dict() for s in self.studies],
        }


def make_study(
    kind: str,
    problem: Problem,
    settings: Settings,
    errors: list[float],
    *,
    scale: float,
    floor_relative: float,
    claim: float | None,
    tolerance: float | None,
    reference: str,
    seconds: float = 0.0,
    note: str = "",
) -> Study:
    """Fit the order of ``errors`` over ``settings.steps`` and wrap everything in a :class:`Study`."""
    h = [step_size(problem, n) for n in settings.steps]
    floor = floor_relative * scale
    try:
        fit, fit_error = fit_order(h, errors, scale=scale, floor=floor), None
    except ValueError as error:
        fit, fit_error = None, str(error)
    return Study(
        kind=kind,
        problem=problem.name,
        steps=list(settings.steps),
        step_sizes=h,
        errors=[float(e) for e in errors],
        fit=fit,
        fit_error=fit_error,
        claim=claim,
        tolerance=tolerance if claim is not None else None,
        reference=reference,
        seconds=seconds,
        floor=floor,
        note=note,
    )

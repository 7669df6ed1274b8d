"""The spec's families and dynamics, as values: one registry entry each.

A family says where a module works: ``ersde`` in normalized coordinates (y = x/alpha, s = sigma/alpha, the
k-diffusion convention), every other one in a diffusion process's own coordinates, whose schedules and
conversions are derived in :mod:`derive.symbolic.families`. Dynamics name the phi a process family uses. The
spec, its module names, the emitter's titles, explain and the schedules read these fields instead of comparing
family or dynamics names.
"""

from __future__ import annotations

import dataclasses

from derive.symbolic.families import FAMILIES as PROCESS_FAMILIES
from derive.symbolic.families import Family as ProcessFamily

__all__ = ["DYNAMICS", "FAMILIES", "Dynamics", "Family"]


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    #: what the module's title says it solves "for the ..."
    title: str
    #: the diffusion process (schedules, conversions, native coordinates); None: normalized coordinates
    process: ProcessFamily | None
    predictions: tuple[str, ...]
    default_prediction: str
    #: why --variable t is refused, or what it would equal (None: the generic reason)
    time_variable: str | None = None

    @property
    def normalized(self) -> bool:
        """The module works in normalized coordinates only: phi comes from --phi, no schedule, no native time."""
        return self.process is None

    @property
    def schedules(self) -> tuple[str, ...]:
        return () if self.process is None else tuple(item.name for item in self.process.schedules)

    @property
    def default_schedule(self) -> str | None:
        return self.schedules[0] if self.schedules else None


@dataclasses.dataclass(frozen=True)
class Dynamics:
    name: str
    #: how module titles and docs name it
    text: str
    #: the phi preset it fixes (None: the spec's --phi)
    phi: str | None


DYNAMICS: dict[str, Dynamics] = {
    d.name: d
    for d in (
        Dynamics("ode", "probability-flow ODE", "ode"),
        Dynamics("sde", "reverse SDE", "sde"),
        Dynamics("er", "ER SDE", None),
    )
}

_TIME_VARIABLE = {
    "edm": "in family edm t = sigma = s, so the expansion in t is --variable s",
    "vesde": "vesde's geometric sigma(t) makes t affine in lambda = -log s, so the expansion in t is --variable lambda",
}

FAMILIES: dict[str, Family] = {
    "ersde": Family(
        "ersde",
        "normalized coordinates",
        None,
        ("data", "noise"),
        "data",
        "family ersde has no time of its own (it works in s = sigma/alpha); use --variable s or lambda",
    ),
    **{
        name: Family(
            name,
            process.title,
            process,
            process.predictions,
            process.default_prediction,
            _TIME_VARIABLE.get(name),
        )
        for name, process in PROCESS_FAMILIES.items()
    },
}

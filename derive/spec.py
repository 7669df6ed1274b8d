"""Solver specifications: what a generated module is, independent of how it is derived or printed."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shlex

from derive.errors import SpecError
from derive.families import DYNAMICS as _DYNAMICS_REGISTRY
from derive.families import FAMILIES as _FAMILY_REGISTRY
from derive.methods import METHODS as _METHOD_REGISTRY
from derive.symbolic.expression import PRESETS
from derive.symbolic.families import FAMILIES as PROCESS_FAMILIES

#: the registered families (derive.families): ``ersde`` works in normalized coordinates (k-diffusion
#: convention), the others in a diffusion process's own coordinates
FAMILIES = tuple(_FAMILY_REGISTRY)
#: the registered methods (derive.methods: each entry's summary says what it is), in the order the CLI lists them
METHODS = tuple(_METHOD_REGISTRY)
DYNAMICS = tuple(_DYNAMICS_REGISTRY)
PREDICTIONS = ("data", "noise", "velocity")
MAX_ORDER = 8
VARIABLES = ("s", "lambda", "t")
#: --variable t is refused with the family's reason (derive.families): the interpolating polynomial is
#: invariant under affine changes of its variable, so where t is affine in s or lambda the method would be
#: identical; elsewhere t(s), the inverse of the schedule, would enter every weight integral.
#: Named noise-scale functions. ``default`` is the ER-SDE-Solver paper's recommended choice.
PHI_PRESETS = PRESETS


@dataclasses.dataclass(frozen=True)
class Spec:
    """One solver: family, multistep order, dynamics (phi), the model's prediction and the schedule.

    ``phi`` is a preset name (``default``, ``ode``, ``sde``) or an expression in ``s`` (= sigma/alpha); for
    process families ``dynamics`` chooses it (``ode``: phi = s, ``sde``: phi = s^2, ``er``: the given phi).
    ``prediction`` is what the model returns and selects the update form: ``data`` (DPM-Solver++-like,
    x0 expanded), ``noise`` (DPM-Solver-like, eps expanded) or ``velocity`` (converted to data).
    """

    family: str = "ersde"
    order: int = 3
    phi: str = "default"
    method: str = "taylor"
    dynamics: str | None = None
    prediction: str | None = None
    schedule: str | None = None
    #: the expansion variable: "s" (= sigma/alpha, ER-SDE-Solver) or "lambda" (= log(alpha/sigma), DPM-Solver)
    variable: str = "s"

    @classmethod
    def from_options(
        cls,
        family: str = "ersde",
        order: int = 3,
        phi: str = "default",
        method: str = "taylor",
        dynamics: str | None = None,
        prediction: str | None = None,
        schedule: str | None = None,
        variable: str = "s",
    ) -> Spec:
        """The spec for these options with the command line's defaults (the one place they live): a process
        family without ``dynamics`` takes ``er`` when ``phi`` is given, else ``ode``."""
        if family in _FAMILY_REGISTRY and not _FAMILY_REGISTRY[family].normalized and dynamics is None:
            dynamics = "er" if phi != "default" else "ode"
        return cls(
            family=family,
            order=order,
            phi=phi,
            method=method,
            dynamics=dynamics,
            prediction=prediction,
            schedule=schedule,
            variable=variable,
        )

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise SpecError(f"unknown family {self.family!r}; choose one of: {', '.join(FAMILIES)}")
        if isinstance(self.order, bool) or not isinstance(self.order, int):
            raise SpecError(f"order must be a whole number, got {self.order!r}")
        if not 1 <= self.order <= MAX_ORDER:
            raise SpecError(f"order must be between 1 and {MAX_ORDER}, got {self.order}")
        if self.method not in METHODS:
            raise SpecError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.order < _METHOD_REGISTRY[self.method].min_order:
            raise SpecError(
                f"method {self.method} needs order >= {_METHOD_REGISTRY[self.method].min_order}, got {self.order}"
            )
        if not isinstance(self.phi, str) or not self.phi.strip():
            raise SpecError("phi must be a preset name or an expression in s")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in self.phi):
            raise SpecError("phi must be one line of printable text (found a control character)")
        if self.variable not in VARIABLES:
            raise SpecError(
                f"unknown expansion variable {self.variable!r}; choose one of: {', '.join(VARIABLES)}"
            )
        if self.variable == "t":
            reason = _FAMILY_REGISTRY[self.family].time_variable or (
                f"is not implemented for family {self.family}: t(s), the inverse of its schedule, would enter every "
                "weight integral; use --variable s or lambda"
            )
            raise SpecError(
                f"--variable t {reason}" if reason.startswith("is ") else f"--variable t: {reason}"
            )
        if self.dynamics is not None and self.dynamics not in DYNAMICS:
            raise SpecError(f"unknown dynamics {self.dynamics!r}; choose one of: {', '.join(DYNAMICS)}")
        if self.prediction is not None and self.prediction not in PREDICTIONS:
            raise SpecError(
                f"unknown prediction {self.prediction!r}; choose one of: {', '.join(PREDICTIONS)}"
            )
        family = _FAMILY_REGISTRY[self.family]
        if family.normalized:
            if self.dynamics is not None:
                raise SpecError(
                    f"family {self.family} takes its dynamics from --phi (ode, sde or an expression), not --dynamics"
                )
            if self.schedule is not None:
                raise SpecError(
                    f"family {self.family} works in normalized coordinates and takes no --schedule"
                )
            if self.prediction not in (None, *family.predictions):
                raise SpecError(
                    f"family {self.family} supports --prediction {' or '.join(family.predictions)}"
                )
        else:
            if self.dynamics is None:
                raise SpecError(
                    f"family {self.family} needs --dynamics ({', '.join(DYNAMICS[:-1])} or {DYNAMICS[-1]})"
                )
            if _DYNAMICS_REGISTRY[self.dynamics].phi is not None and self.phi != "default":
                raise SpecError(f"--phi only applies to --dynamics er (dynamics {self.dynamics} fixes phi)")
            if self.prediction is not None and self.prediction not in family.predictions:
                raise SpecError(
                    f"family {self.family} has no {self.prediction} prediction; choose one of: {', '.join(family.predictions)}"
                )
            names = family.schedules
            if self.schedule is not None and self.schedule not in names:
                raise SpecError(
                    f"family {self.family} has no schedule {self.schedule!r}; choose one of: {', '.join(names)}"
                )

    # ---- resolved values ----------------------------------------------------------------------------------
    @property
    def resolved_phi(self) -> str:
        fixed = None if self.dynamics is None else _DYNAMICS_REGISTRY[self.dynamics].phi
        if not _FAMILY_REGISTRY[self.family].normalized and fixed is not None:
            return fixed
        return self.phi

    @property
    def phi_text(self) -> str:
        """The expression text of phi (presets resolved)."""
        phi = self.resolved_phi
        return PHI_PRESETS.get(phi, phi)

    @property
    def resolved_prediction(self) -> str:
        if self.prediction is not None:
            return self.prediction
        return _FAMILY_REGISTRY[self.family].default_prediction

    @property
    def resolved_schedule(self) -> str | None:
        return self.schedule or _FAMILY_REGISTRY[self.family].default_schedule

    @property
    def form(self) -> str:
        """The update form: ``noise`` expands eps, ``data`` expands x0 (velocity is converted to data)."""
        return "noise" if self.resolved_prediction == "noise" else "data"

    @property
    def method_order(self) -> int:
        """The order of the method (its registry entry's order for K: K, or K + 1 for pc)."""
        return _METHOD_REGISTRY[self.method].order(self.order)

    @property
    def resolved_dynamics(self) -> str:
        if self.dynamics is not None:
            return self.dynamics
        # normalized coordinates: the dynamics whose phi preset the spec names, else the ER SDE of its phi
        return next(
            (d.name for d in _DYNAMICS_REGISTRY.values() if d.phi is not None and d.phi == self.phi), "er"
        )

    @property
    def phi_label(self) -> str:
        """A file-name-safe label for a non-default phi."""
        if self.phi in PHI_PRESETS:
            return self.phi
        slug = re.sub(r"[^0-9a-zA-Z]+", "_", self.phi).strip("_").lower()
        digest = hashlib.sha256(self.phi.encode()).hexdigest()[:8]
        return f"{slug[:24]}_{digest}"

    @property
    def name(self) -> str:
        """Module name: family + order, with a suffix for each non-default option."""
        parts = [f"{self.family}_order{self.order}"]
        family = _FAMILY_REGISTRY[self.family]
        if family.normalized:
            if self.phi != "default":
                parts.append(f"phi_{self.phi_label}")
        else:
            parts.append(self.dynamics)
            if _DYNAMICS_REGISTRY[self.dynamics].phi is None and self.phi != "default":
                parts.append(f"phi_{self.phi_label}")
        if self.resolved_prediction != family.default_prediction:
            parts.append(self.resolved_prediction)
        if self.resolved_schedule != family.default_schedule:
            parts.append(self.resolved_schedule)
        if self.variable != "s":
            parts.append(self.variable)
        if self.method != "taylor":
            parts.append(self.method)
        return "_".join(parts)

    def as_dict(self) -> dict:
        out = {"family": self.family, "order": self.order, "phi": self.phi_text, "method": self.method}
        normalized = _FAMILY_REGISTRY[self.family].normalized
        if not normalized or self.resolved_prediction != _FAMILY_REGISTRY[self.family].default_prediction:
            out["prediction"] = self.resolved_prediction
        if not normalized:
            out["dynamics"] = self.dynamics
            out["schedule"] = self.resolved_schedule
        if self.variable != "s":
            out["variable"] = self.variable
        return out

    @property
    def digest(self) -> str:
        """A short hash of the spec and of everything else that shapes the generated text (derive.provenance)."""
        from derive.provenance import digest

        return digest(self.as_dict())


def _family_catalogue() -> tuple[Spec, ...]:
    specs = []
    for family in PROCESS_FAMILIES:
        for dynamics in ("ode", "sde"):
            for order in (1, 2, 3):
                specs.append(Spec(family, order, dynamics=dynamics))
    return tuple(specs)


#: The modules checked in under generated/. ``derive gen --all`` regenerates exactly these.
CATALOGUE: tuple[Spec, ...] = (
    *(Spec("ersde", k, "default") for k in (1, 2, 3, 4)),
    *(Spec("ersde", k, "ode") for k in (1, 2, 3)),
    *(Spec("ersde", k, "sde") for k in (1, 2, 3)),
    # higher orders, and the expansion in lambda (DPM-Solver's variable) next to s
    *(Spec("ersde", k, "ode") for k in (4, 5, 6)),
    *(Spec("ersde", k, "ode", variable="lambda") for k in (2, 3, 4)),
    # predictor-corrector (order K + 1 with K stored outputs, one model call per step)
    *(Spec("ersde", k, "ode", method="pc") for k in (1, 2, 3)),
    *(Spec("ersde", k, "ode", method="pc", variable="lambda") for k in (1, 2, 3, 4)),
    *(Spec("ersde", k, "default", method="pc") for k in (1, 2, 3)),
    Spec("vpsde", 2, dynamics="ode", method="pc"),  # noise prediction, family time: UniPC's setting
    *(Spec("ersde", k, "ode", method="am") for k in (2, 3)),
    Spec("ersde", 3, "default", method="am"),
    # Adams form: the Lagrange basis integrated per stored output (equal to Taylor in exact arithmetic)
    *(Spec("ersde", k, "ode", method="adams") for k in (2, 3, 4)),
    Spec("ersde", 3, "ode", method="adams", variable="lambda"),
    Spec("ersde", 3, "default", method="adams"),
    *_family_catalogue(),
    # discrete training tables: DDPM alphas_cumprod, IR-SDE theta_bar
    Spec("vpsde", 2, dynamics="ode", schedule="discrete"),
    Spec("mrsde", 2, dynamics="sde", schedule="discrete"),
)


def command_args(spec: Spec) -> str:
    """The `derive gen` options that select ``spec`` (for "Regenerate with" lines and reproduce commands)."""
    args = [f"--family {spec.family}", f"--order {spec.order}"]
    if spec.dynamics is not None:
        args.append(f"--dynamics {spec.dynamics}")
    if spec.phi != "default":
        args.append(f"--phi {shlex.quote(spec.phi)}")
    if spec.prediction is not None:
        args.append(f"--prediction {spec.prediction}")
    if spec.schedule is not None:
        args.append(f"--schedule {spec.schedule}")
    if spec.variable != "s":
        args.append(f"--variable {spec.variable}")
    if spec.method != "taylor":
        args.append(f"--method {spec.method}")
    return " ".join(args)

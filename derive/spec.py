"""Solver specifications: what a generated module is, independent of how it is derived or printed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

from derive.errors import SpecError
from derive.symbolic.expression import PRESETS

FAMILIES = ("ersde",)
METHODS = ("taylor",)
MAX_ORDER = 8

#: Named noise-scale functions. ``default`` is the ER-SDE-Solver paper's recommended choice.
PHI_PRESETS = PRESETS


@dataclasses.dataclass(frozen=True)
class Spec:
    """One solver: the family, its multistep order, the noise-scale function and the expansion method.

    ``phi`` is either a preset name (``default``, ``ode``, ``sde``) or an expression in ``s`` (= sigma/alpha).
    """

    family: str = "ersde"
    order: int = 3
    phi: str = "default"
    method: str = "taylor"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise SpecError(f"unknown family {self.family!r}; choose one of: {', '.join(FAMILIES)}")
        if isinstance(self.order, bool) or not isinstance(self.order, int):
            raise SpecError(f"order must be a whole number, got {self.order!r}")
        if not 1 <= self.order <= MAX_ORDER:
            raise SpecError(f"order must be between 1 and {MAX_ORDER}, got {self.order}")
        if self.method not in METHODS:
            raise SpecError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if not isinstance(self.phi, str) or not self.phi.strip():
            raise SpecError("phi must be a preset name or an expression in s")

    @property
    def phi_text(self) -> str:
        """The expression text of phi (presets resolved)."""
        return PHI_PRESETS.get(self.phi, self.phi)

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
        if self.phi != "default":
            parts.append(f"phi_{self.phi_label}")
        if self.method != "taylor":
            parts.append(self.method)
        return "_".join(parts)

    def as_dict(self) -> dict:
        return {"family": self.family, "order": self.order, "phi": self.phi_text, "method": self.method}

    @property
    def digest(self) -> str:
        """A short hash of the spec, stable across runs and Python hash seeds."""
        payload = json.dumps(self.as_dict(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]


#: The modules checked in under generated/. ``derive gen --all`` regenerates exactly these.
CATALOGUE: tuple[Spec, ...] = (
    *(Spec("ersde", k, "default") for k in (1, 2, 3, 4)),
    *(Spec("ersde", k, "ode") for k in (1, 2, 3)),
    *(Spec("ersde", k, "sde") for k in (1, 2, 3)),
)

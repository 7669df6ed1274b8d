"""Library entry points: ``generate`` returns module text; ``generate_all`` the whole catalogue."""

from __future__ import annotations

from derive.spec import CATALOGUE, Spec


def generate(family: str = "ersde", order: int = 3, phi: str = "default", method: str = "taylor") -> str:
    """The source text of the solver module for this spec (nothing is written)."""
    from derive.emit.render import render

    return render(Spec(family=family, order=order, phi=phi, method=method))


def generate_all() -> dict[Spec, str]:
    """Every catalogue module, rendered."""
    from derive.emit.render import render

    return {spec: render(spec) for spec in CATALOGUE}

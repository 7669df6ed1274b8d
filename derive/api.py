"""Library entry points: ``generate`` returns module text; ``generate_all`` the whole catalogue."""

from __future__ import annotations

from derive.spec import CATALOGUE, Spec


def generate(
    family: str = "ersde",
    order: int = 3,
    phi: str = "default",
    method: str = "taylor",
    dynamics: str | None = None,
    prediction: str | None = None,
    schedule: str | None = None,
    variable: str = "s",
) -> str:
    """The source text of the solver module for this spec (nothing is written); every option and default is
    the command line's (:meth:`Spec.from_options`): ``generate(family="vpsde", order=2)`` is
    ``derive gen --family vpsde --order 2``."""
    from derive.emit.render import render

    return render(Spec.from_options(family, order, phi, method, dynamics, prediction, schedule, variable))


def generate_all() -> dict[Spec, str]:
    """Every catalogue module, rendered."""
    from derive.emit.render import render

    return {spec: render(spec) for spec in CATALOGUE}


def module_text(spec) -> str:
    """The module text of a :class:`~derive.spec.Spec` or a published-sampler
    :class:`~derive.variants.Variant` (the readers of a derivation reach the emitter only through here)."""
    from derive.variants import Variant

    if isinstance(spec, Variant):
        from derive.emit.variant import render_variant

        return render_variant(spec)
    from derive.emit.render import render

    return render(spec)

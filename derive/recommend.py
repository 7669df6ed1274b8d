"""``derive.recommend``: one catalogue module per family and dynamics, chosen from measurements made beforehand.

Probability-flow ODE (``dynamics="ode"``): ``benchmarks/schedules.py --select`` ran seven candidate modules on
their model-tuned schedules (:func:`derive.schedules.tune`, a pilot of 64 noise states, the default search
budget) and on their data-free ones (:func:`derive.schedules.default`) on two *training* mixtures (4-D and
16-D, unequal weights, narrow components; seeds the held-out problems do not use), 80 -> 0.002, NFE 4 .. 100,
and summed the model calls to reach 1e-2, 1e-3 and 1e-4 in RMS and median error
(``benchmarks/schedules_select.json``; a target not reached within 100 calls counts 150). The winners were
fixed here before the held-out problems of ``benchmarks/schedules.md`` (the 2-D and 8-D mixtures and the
trained network) were run:

- tuned (``schedule="tune"``, the default): ``ersde_order4_phi_ode_lambda_pc`` overall, score 314 against 328
  for order-3 am (the previous choice), 417 for order-3 pc .. 617 for order-3 Taylor;
- data-free (``schedule="default"``): ``ersde_order4_phi_ode_lambda_pc`` overall, score 432 against 494 for
  order-3 lambda pc .. 718.

Per NFE range (the selection's mechanical rule, ``nfe_ranges`` in the benchmark: a target's own winner
replaces the overall one in that target's range when it needs at least 10 % fewer summed calls there; ranges
split at the geometric midpoints of the targets' median NFE): at 1e-2 the tuned winner is order-2 pc (39
against 48 summed calls, median NFE 9.6), so it is recommended below 15 calls; the data-free winner there is
order-3 lambda pc (65 against 86, median NFE 17.3), recommended below 23 calls.

Stochastic dynamics (``"sde"``, ``"er"``): not selected by that protocol. The modules named are those with the
fewest model calls to 1e-2 .. 1e-4 weak error in the stochastic part of ``benchmarks/accuracy.md`` (Gaussian
data, Karras and log-SNR schedules).
"""

from __future__ import annotations

#: (family, dynamics) -> [(smallest nfe, module name)], the last entry whose nfe <= the budget applies
RECOMMENDED = {
    ("ersde", "ode"): [(1, "ersde_order2_phi_ode_pc"), (15, "ersde_order4_phi_ode_lambda_pc")],
    ("ersde", "sde"): [(1, "ersde_order3_phi_sde")],
    ("ersde", "er"): [(1, "ersde_order3")],
}
#: the same for a data-free schedule, where the selection chose differently
RECOMMENDED_DATA_FREE = {
    ("ersde", "ode"): [(1, "ersde_order3_phi_ode_lambda_pc"), (23, "ersde_order4_phi_ode_lambda_pc")]
}
SCHEDULES = ("tune", "default")
FAMILIES = sorted({family for family, _ in RECOMMENDED})
DYNAMICS = sorted({dynamics for _, dynamics in RECOMMENDED})


def recommend(nfe: int, family: str = "ersde", dynamics: str = "ode", *, schedule: str = "tune") -> str:
    """The catalogue module (a name for :func:`derive.load`) recommended for ``nfe`` model calls.

    ``schedule`` says how its levels will be chosen: ``"tune"`` (the default) for
    ``derive.schedules.tune(derive.load(name), model, x_pilot, nfe=nfe, ...)``, ``"default"`` for the data-free
    ``derive.schedules.default(derive.load(name), nfe=nfe, ...)``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {schedule!r} for recommend(); choose from: {', '.join(SCHEDULES)}"
        )
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer (got {nfe!r})")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} for recommend(); choose from: {', '.join(FAMILIES)}")
    if (family, dynamics) not in RECOMMENDED:
        raise ValueError(f"unknown dynamics {dynamics!r} for recommend(); choose from: {', '.join(DYNAMICS)}")
    name = None
    table = RECOMMENDED_DATA_FREE if schedule == "default" else RECOMMENDED
    for start, module in table.get((family, dynamics), RECOMMENDED[(family, dynamics)]):
        if nfe >= start:
            name = module
    return name

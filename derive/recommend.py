"""``derive.recommend``: one catalogue module per family and dynamics, chosen from measurements made beforehand.

Probability-flow ODE (``dynamics="ode"``): ``benchmarks/schedules.py --select`` ran five candidate modules on
their derived schedules (:func:`derive.schedules.default`) on two *training* mixtures (4-D and 16-D, unequal
weights, narrow components; seeds the held-out problems do not use), 80 -> 0.002, NFE 4 .. 100, and summed the
model calls to reach 1e-2 and 1e-3 in RMS and median error (``benchmarks/schedules_select.json``). The winner,
``ersde_order3_phi_ode_lambda_pc`` (score 214 against 247 .. 279 for the others), was fixed here before the
held-out problems of ``benchmarks/schedules.md`` (the 2-D and 8-D mixtures and the trained network) were run.
No NFE range was better served by another candidate on the training problems at 1e-2 (the smallest budgets
measured), so one module covers every budget.

Stochastic dynamics (``"sde"``, ``"er"``): not selected by that protocol. The modules named are those with the
fewest model calls to 1e-2 .. 1e-4 weak error in the stochastic part of ``benchmarks/accuracy.md`` (Gaussian
data, Karras and log-SNR schedules).
"""

from __future__ import annotations

#: (family, dynamics) -> [(smallest nfe, module name)], the last entry whose nfe <= the budget applies
RECOMMENDED = {
    ("ersde", "ode"): [(1, "ersde_order3_phi_ode_lambda_pc")],
    ("ersde", "sde"): [(1, "ersde_order3_phi_sde")],
    ("ersde", "er"): [(1, "ersde_order3")],
}
FAMILIES = sorted({family for family, _ in RECOMMENDED})
DYNAMICS = sorted({dynamics for _, dynamics in RECOMMENDED})


def recommend(nfe: int, family: str = "ersde", dynamics: str = "ode") -> str:
    """The catalogue module (a name for :func:`derive.load`) recommended for ``nfe`` model calls.

    Use it on its derived schedule: ``derive.schedules.default(derive.load(name), nfe=nfe, ...)``.
    """
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer (got {nfe!r})")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} for recommend(); choose from: {', '.join(FAMILIES)}")
    if (family, dynamics) not in RECOMMENDED:
        raise ValueError(f"unknown dynamics {dynamics!r} for recommend(); choose from: {', '.join(DYNAMICS)}")
    name = None
    for start, module in RECOMMENDED[(family, dynamics)]:
        if nfe >= start:
            name = module
    return name

"""``derive schedule``: a derived step schedule as JSON (the levels :func:`derive.schedules.default` returns).

Exit status 0, or 2 on bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import json

import click

from derive.errors import SpecError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--module", "module_name", default=None, help="Catalogue module name or path of a generated file."
)
@click.option(
    "--nfe", type=int, required=True, help="Number of model calls (the schedule has nfe + 1 levels)."
)
@click.option("--sigma-max", type=float, default=80.0, show_default=True, help="First noise level.")
@click.option("--sigma-min", type=float, default=0.002, show_default=True, help="Last noise level.")
@click.option("--sigma-data", type=float, default=0.5, show_default=True, help="Data scale of the proxy.")
@click.option(
    "--dynamics",
    default="ode",
    show_default=True,
    help="Without --module: the recommended module of the ersde family for these dynamics (ode, sde, er).",
)
@click.option("--indent", type=int, default=None, help="Pretty-print the JSON with this indent.")
def schedule(module_name, nfe, sigma_max, sigma_min, sigma_data, dynamics, indent) -> None:
    """Print the derived schedule of a module for NFE model calls as JSON.

    Without --module the module recommended for a data-free schedule (``derive.recommend``) is used and named
    in the output. The levels are normalized noise levels sigma / alpha, decreasing from sigma_max to
    sigma_min; pass them as ``sigmas`` to the module's ``sample`` (exactly NFE model calls).
    """
    import derive
    from derive.schedules import default, predicted_error

    try:
        name = module_name or derive.recommend(nfe=nfe, family="ersde", dynamics=dynamics, schedule="default")
        module = derive.load(name)
        s = default(module, nfe=nfe, sigma_max=sigma_max, sigma_min=sigma_min, sigma_data=sigma_data)
        predicted = predicted_error(module, s, sigma_data=sigma_data)
    except (ValueError, TypeError, LookupError, OSError) as error:
        raise SpecError(str(error)) from None
    out = {
        "module": name,
        "nfe": nfe,
        "sigma_max": sigma_max,
        "sigma_min": sigma_min,
        "sigma_data": sigma_data,
        "sigmas": s.tolist(),
        "predicted_error": predicted,
    }
    click.echo(json.dumps(out, indent=indent))

"""A ComfyUI custom node package that offers derive's generated samplers (copy this folder to ComfyUI/custom_nodes/).

Two ways in, both through ComfyUI's own ``comfy.samplers.KSAMPLER``, which calls a sampler function as
``function(model_k, noise, sigmas, extra_args=..., callback=..., disable=..., **extra_options)``:

- :func:`register` (run on import) lists every entry of :data:`SAMPLERS` in the ``KSampler`` node's sampler
  menu: ComfyUI looks ``sample_<name>`` up in ``comfy.k_diffusion.sampling``, so the function is set there and
  ``<name>`` appended to ``comfy.samplers.KSAMPLER_NAMES`` / ``SAMPLER_NAMES`` / ``KSampler.SAMPLERS``;
- the ``DeriveSampler`` node returns a ``SAMPLER`` (a KSAMPLER with ``s_noise`` in its ``extra_options``) for
  ``SamplerCustom`` / ``SamplerCustomAdvanced``.

The functions tell ComfyUI's two state conventions apart from the model itself: a flow model (SD3, Flux;
``model_sampling`` is ``CONST``: sigmas are times t, x = (1 - t) x0 + t eps) runs in flow coordinates, any other
(EPS / V_PREDICTION: x = x0 + sigma eps, k-diffusion's) through the module's own ``sample``. ComfyUI's
``extra_args["seed"]`` seeds the noise.

derive must be importable in ComfyUI's environment (``pip install derive``, or the generated files next to
this one loaded by path with ``derive.integrations.load_module("/path/to/ersde_order3.py")``).
"""

from __future__ import annotations

import comfy.k_diffusion.sampling
import comfy.samplers

from derive.integrations import load_module
from derive.integrations.kdiffusion import wrap_sampler

#: sampler menu name -> generated module
SAMPLERS = {
    "derive_ersde_3": "ersde_order3",
    "derive_ersde_2_ode": "ersde_order2_phi_ode",
    "derive_ersde_3_ode": "ersde_order3_phi_ode",
    "derive_ersde_2_sde": "ersde_order2_phi_sde",
}


def is_flow_model(model) -> bool:
    """Whether the model ComfyUI hands the sampler (``KSamplerX0Inpaint``) samples a flow (``CONST``) process."""
    try:
        sampling = model.inner_model.model_patcher.get_model_object("model_sampling")
    except AttributeError:
        sampling = getattr(getattr(model, "inner_model", None), "model_sampling", None)
        if sampling is None:
            sampling = getattr(
                getattr(getattr(model, "inner_model", None), "inner_model", None), "model_sampling", None
            )
    return any(cls.__name__ == "CONST" for cls in type(sampling).__mro__)


def sampler_function(module, s_noise=1.0):
    """A KSAMPLER function over ``module`` that follows the model's convention (flow or not) at call time."""
    module = load_module(module)
    plain = wrap_sampler(module, s_noise=s_noise)
    flow = None if module.FORM != "data" else wrap_sampler(module, s_noise=s_noise, flow=True)

    def function(
        model,
        x,
        sigmas,
        extra_args=None,
        callback=None,
        disable=None,
        eta=None,
        s_noise=None,
        noise_sampler=None,
    ):
        if is_flow_model(model):
            if flow is None:
                raise ValueError(
                    f"{module.__name__}: a noise-form module cannot start a flow model from pure noise"
                )
            return flow(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler)
        return plain(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler)

    function.__name__ = plain.__name__
    return function


def register(samplers=None):
    """List ``samplers`` (default :data:`SAMPLERS`) in the KSampler node's menu; returns the names added."""
    added = []
    names_lists = [
        comfy.samplers.KSAMPLER_NAMES,
        comfy.samplers.SAMPLER_NAMES,
        comfy.samplers.KSampler.SAMPLERS,
    ]
    for name, module in (SAMPLERS if samplers is None else samplers).items():
        setattr(comfy.k_diffusion.sampling, f"sample_{name}", sampler_function(module))
        for names in {id(names): names for names in names_lists}.values():  # the lists may be one object
            if name not in names:
                names.append(name)
        added.append(name)
    return added


class DeriveSampler:
    """A SAMPLER node: one generated module, with k-diffusion's s_noise."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "module": (sorted(set(SAMPLERS.values())),),
                "s_noise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"
    CATEGORY = "sampling/custom_sampling/samplers"

    def get_sampler(self, module, s_noise):
        options = {} if s_noise == 1.0 else {"s_noise": s_noise}
        return (comfy.samplers.KSAMPLER(sampler_function(module), extra_options=options),)


register()

NODE_CLASS_MAPPINGS = {"DeriveSampler": DeriveSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"DeriveSampler": "Derive sampler"}

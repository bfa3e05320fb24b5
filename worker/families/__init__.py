"""The family registry: every pipeline class `AutoPipelineForText2Image` may return, with
Daikon's decision, one adapter (a module of this package, the way diffusers keeps
`pipelines/<family>/`) or a reason for refusing it.

A new family is a module with its `Family` subclass (see base.py for the contract) plus its
line in `FAMILIES`. The worker's `Generator` (worker/generation.py) looks a loaded pipeline up
here with `family_for`.
"""

from __future__ import annotations

from typing import Any

from worker.families.base import (
    Call,
    Candidate,
    ChunkSink,
    Family,
    FamilyError,
    Progress,
    StepCallback,
    UnsupportedOption,
    UnsupportedPipeline,
    call_parameters,
    candidate_size,
    edit_modes,
    edit_pipeline_class,
    to_pil,
)
from worker.families.flux import FLUX_TRUE_CFG_DEFAULT, Flux
from worker.families.kandinsky2_2 import Kandinsky22
from worker.families.latent_consistency import LatentConsistency
from worker.families.pixart import PixArt
from worker.families.stable_diffusion import StableDiffusion
from worker.families.stable_diffusion_3 import StableDiffusion3
from worker.families.stable_diffusion_xl import StableDiffusionXL

__all__ = [
    "FAMILIES",
    "FLUX_TRUE_CFG_DEFAULT",
    "REFUSED",
    "Call",
    "Candidate",
    "ChunkSink",
    "Family",
    "FamilyError",
    "Progress",
    "StepCallback",
    "UnsupportedOption",
    "UnsupportedPipeline",
    "call_parameters",
    "candidate_size",
    "edit_modes",
    "edit_pipeline_class",
    "family_for",
    "to_pil",
]

# Every pipeline class AutoPipelineForText2Image may return, with Daikon's decision. A class
# diffusers adds fails tests/worker/test_families.py until it is placed in one of the two tables.
FAMILIES: dict[str, Family] = {
    "StableDiffusionPipeline": StableDiffusion(),
    "StableDiffusionXLPipeline": StableDiffusionXL(),
    "LatentConsistencyModelPipeline": LatentConsistency(),
    "StableDiffusion3Pipeline": StableDiffusion3(),
    "FluxPipeline": Flux(),
    "PixArtAlphaPipeline": PixArt("pixart-alpha"),
    "PixArtSigmaPipeline": PixArt("pixart-sigma"),
    "KandinskyV22CombinedPipeline": Kandinsky22(),
}

_CONTROL = "needs a control image, which a text-to-image job does not carry"
_PAG = "perturbed-attention guidance: loaded only with enable_pag=True, which Daikon does not pass"
_EDIT = "an image-editing or image-conditioned pipeline: its input image is not a job parameter"
_UNPROFILED = (
    "no Daikon family profile: its size multiple, guidance semantics, negative-prompt "
    "handling and callback behaviour have not been verified"
)
REFUSED: dict[str, str] = {
    "StableDiffusion3PAGPipeline": _PAG,
    "StableDiffusionPAGPipeline": _PAG,
    "StableDiffusionXLPAGPipeline": _PAG,
    "PixArtSigmaPAGPipeline": _PAG,
    "SanaPAGPipeline": _PAG,
    "HunyuanDiTPAGPipeline": _PAG,
    "StableDiffusionControlNetPipeline": _CONTROL,
    "StableDiffusionXLControlNetPipeline": _CONTROL,
    "StableDiffusionXLControlNetUnionPipeline": _CONTROL,
    "StableDiffusion3ControlNetPipeline": _CONTROL,
    "StableDiffusionControlNetPAGPipeline": _CONTROL,
    "StableDiffusionXLControlNetPAGPipeline": _CONTROL,
    "FluxControlPipeline": _CONTROL,
    "FluxControlNetPipeline": _CONTROL,
    "CogView4ControlPipeline": _CONTROL,
    "QwenImageControlNetPipeline": _CONTROL,
    "ZImageControlNetPipeline": _CONTROL,
    "ZImageControlNetInpaintPipeline": _CONTROL,
    "FluxKontextPipeline": _EDIT,
    "QwenImage21Pipeline": _EDIT,
    "ZImageOmniPipeline": _EDIT,
    "GlmImagePipeline": _EDIT,
    "IFPipeline": (
        "DeepFloyd IF is a cascade of pixel-space stages (64 px, then super-resolution "
        "pipelines loaded separately); Daikon runs one text-to-image pipeline per model"
    ),
    "KandinskyCombinedPipeline": (
        "Kandinsky 2.1 takes only the old `callback` on its decoder and no prior callback: "
        "progress and cancel could not cover its prior; " + _UNPROFILED
    ),
    "WuerstchenCombinedPipeline": "a prior/decoder cascade; " + _UNPROFILED,
    "StableCascadeCombinedPipeline": "a prior/decoder cascade; " + _UNPROFILED,
    "HeliosPipeline": "a video pipeline; " + _UNPROFILED,
    "HeliosPyramidPipeline": "a video pipeline with no `num_inference_steps`; " + _UNPROFILED,
    **{
        name: _UNPROFILED
        for name in (
            "HunyuanDiTPipeline",
            "Kandinsky3Pipeline",
            "SanaPipeline",
            "AuraFlowPipeline",
            "Flux2KleinPipeline",
            "Flux2Pipeline",
            "Ideogram4Pipeline",
            "Krea2Pipeline",
            "LuminaPipeline",
            "Lumina2Pipeline",
            "ChromaPipeline",
            "CogView3PlusPipeline",
            "CogView4Pipeline",
            "NucleusMoEImagePipeline",
            "QwenImagePipeline",
            "ZImagePipeline",
            "OvisImagePipeline",
            "PRXPipeline",
        )
    },
}


def family_for(pipe: Any) -> Family:
    """The family that drives `pipe`; UnsupportedPipeline names what is missing otherwise."""
    import diffusers

    cls = type(pipe).__name__
    if cls in REFUSED:
        raise UnsupportedPipeline(f"{cls} cannot be served: {REFUSED[cls]}")
    family = FAMILIES.get(cls)
    if family is None:
        raise UnsupportedPipeline(
            f"{cls} cannot be served: it is not a text-to-image pipeline Daikon knows "
            f"(served: {', '.join(sorted(FAMILIES))})"
        )
    for name, needed in family.requirements(cls).items():
        klass = type(pipe) if name == cls else getattr(diffusers, name)
        missing = sorted(needed - call_parameters(klass))
        if missing:
            raise UnsupportedPipeline(
                f"{cls} cannot be served: {name}.__call__ lacks {', '.join(missing)}, which "
                f"Daikon's {family.name} adapter passes (diffusers {diffusers.__version__})"
            )
    return family

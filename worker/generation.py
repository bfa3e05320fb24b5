"""The family adapter: drive whatever `AutoPipelineForText2Image` loaded the way its family needs.

diffusers' text-to-image pipelines share a name, not a contract. Sizes must be multiples of
8, 16 or 64 and some pipelines silently resize otherwise; `guidance_scale` is CFG on SD,
a guidance embedding on FLUX-dev and nothing on FLUX-schnell; a negative prompt is `None` on
one family and must be `""` on PixArt; PixArt only knows the old `callback`/`callback_steps`;
Kandinsky 2.2 is a prior and a decoder, each with its own scheduler and generator handling.
Each family here states what its pipeline takes, derives the model's `ModelCapabilities` from
the loaded pipeline (published to the API, which refuses what the model cannot do), and runs
requests so that every parameter does what it says: exact sizes, per-image seeds whatever the
batch, the chosen scheduler on the stage that denoises, progress whose total and last step come
from the pipeline, and a step callback that may raise to stop the run within one step.

torch and diffusers are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Union, overload

from PIL import Image

from daikon.capabilities import (
    MODE_NAMES,
    SCHEDULER_BY_CLASS,
    SCHEDULERS,
    GuidanceKind,
    Mode,
    ModelCapabilities,
    ModelDefaults,
    ModelOptions,
    scheduler_name,
)

StepCallback = Callable[[int, int], None]  # (step done, total steps); may raise to stop the run

FLUX_TRUE_CFG_DEFAULT = 4.0  # true_cfg_scale when a negative prompt is given and none asked


if TYPE_CHECKING:
    import torch

# A generated image: a PIL image, or (where the pipeline can return tensors) a (3, H, W)
# float tensor in [0, 1] still on the pipeline's device, so ranking reads it there and only
# the images kept cross to the CPU (to_pil) to be encoded.
Candidate = Union[Image.Image, "torch.Tensor"]


def to_pil(candidate: Candidate) -> Image.Image:
    """The PIL image diffusers' own "pil" output would have given: the same postprocessing
    (`pt_to_numpy`, `numpy_to_pil`), so a tensor hand-off changes no byte of a stored PNG."""
    if isinstance(candidate, Image.Image):
        return candidate
    from diffusers.image_processor import VaeImageProcessor

    array = VaeImageProcessor.pt_to_numpy(candidate.detach()[None])
    return VaeImageProcessor.numpy_to_pil(array)[0]


def candidate_size(candidate: Candidate) -> tuple[int, int]:
    """(width, height), as PIL says it."""
    if isinstance(candidate, Image.Image):
        return candidate.size
    return int(candidate.shape[-1]), int(candidate.shape[-2])


@dataclass(frozen=True)
class GenerationRequest:
    """One job's images: a prompt, shared parameters and one seed per image.

    None for width, height, steps or guidance_scale means the model's default.
    """

    prompt: str
    negative_prompt: str | None
    width: int | None
    height: int | None
    steps: int | None
    guidance_scale: float | None
    seeds: tuple[int, ...]  # one per image; image i starts from seed i's noise
    scheduler: str | None = None  # a name from daikon.capabilities.SCHEDULERS; None = default
    true_cfg_scale: float | None = None  # families with true CFG (FLUX); None = the default
    # Edits: `image` is redrawn (mode image) or repainted where `mask` is white (inpaint).
    mode: Mode = "text"
    image: Image.Image | None = None
    mask: Image.Image | None = None
    strength: float | None = None  # noise added to the input, 0-1 (steps x strength run)
    mask_blur: int = 0  # Gaussian radius of the mask's edge, in pixels


class FamilyError(ValueError):
    """A model or its options cannot be served as configured (raised at load)."""


class UnsupportedPipeline(FamilyError):
    pass


class UnsupportedOption(FamilyError):
    pass


@dataclass(frozen=True)
class _Call:
    """One pipeline call: resolved parameters shared by its images."""

    prompts: list[str]
    negatives: list[str] | None  # None = no negative prompt
    seeds: list[int]
    width: int
    height: int
    steps: int
    guidance_scale: float
    true_cfg_scale: float | None
    mode: Mode = "text"
    image: Image.Image | None = None
    mask: Image.Image | None = None  # blurred already when mask_blur asked it
    strength: float | None = None
    output_type: str = "pil"  # "pt": images stay tensors on the pipeline's device


def _generators(seeds: Sequence[int]) -> list[Any]:
    """CPU generators: a seed gives the same starting noise on any device and in any batch."""
    import torch

    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def call_parameters(cls: type) -> set[str]:
    """The named parameters of a pipeline's __call__ (what `**kwargs` swallows is not there)."""
    return {
        name
        for name, p in inspect.signature(cls.__call__).parameters.items()  # type: ignore[operator]
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def _call_default(cls: type, name: str) -> Any:
    p = inspect.signature(cls.__call__).parameters.get(name)  # type: ignore[operator]
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def _timesteps(pipe: Any) -> int:
    """How many denoising iterations the pipeline set up for this call (not `steps`)."""
    n = getattr(pipe, "_num_timesteps", None)
    return int(n) if n else len(pipe.scheduler.timesteps)


def _legacy_updates(scheduler: Any, steps: int) -> int:
    """How often an old-style `callback` fires: on the iterations diffusers' loop updates its
    progress bar (every `order`-th after the warm-up, and the last)."""
    total = len(scheduler.timesteps)
    order = getattr(scheduler, "order", 1)
    warmup = max(total - steps * order, 0)
    return sum(
        1 for i in range(total) if i == total - 1 or ((i + 1) > warmup and (i + 1) % order == 0)
    )


def _scheduled(scheduler: Any, steps: int) -> int:
    """The iterations `scheduler` takes for `steps`, without touching the one in use."""
    probe = copy.deepcopy(scheduler)
    probe.set_timesteps(steps, device="cpu")
    return len(probe.timesteps)


class _Progress:
    """Pipeline callbacks -> on_step(step, total), with the total the pipeline itself set up.

    `offset` counts the steps earlier stages took and `later` those later stages will take
    (Kandinsky's prior, then its decoder); `chunks` calls of one shape run back to back when
    images are drawn a few at a time. One job reports one monotonic count ending at its total.
    """

    def __init__(self, on_step: StepCallback, chunks: int = 1):
        self.on_step = on_step
        self.chunks = chunks
        self.chunk = 0
        self.offset = 0
        self.later = 0
        self._calls = 0

    def next_chunk(self) -> None:
        self.chunk += 1
        self.offset = self.later = self._calls = 0

    def _report(self, step: int, total: int) -> None:
        self.on_step(self.chunk * total + step, self.chunks * total)

    def step_end(self, pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        self._report(self.offset + i + 1, self.offset + _timesteps(pipe) + self.later)
        return tensors

    def legacy(self, pipe: Any, steps: int) -> Callable[[int, Any, Any], None]:
        def callback(step_index: int, t: Any, latents: Any) -> None:
            # PixArt passes i // order: count calls instead, so the last one equals the total.
            self._calls += 1
            self._report(self._calls, _legacy_updates(pipe.scheduler, steps))

        return callback


# --- families ---------------------------------------------------------------------------------


class Family:
    """How one pipeline class is driven. Stateless: methods take the loaded pipeline."""

    name: ClassVar[str]
    # The __call__ parameters this family passes, which the pipeline class must name
    # explicitly (a parameter only `**kwargs` takes would be silently swallowed).
    passes: ClassVar[frozenset[str]]
    legacy_callback: ClassVar[bool] = False
    negative_when_absent: ClassVar[str | None] = None  # what "no negative prompt" is passed as
    true_cfg: ClassVar[bool] = False
    flow_matching: ClassVar[bool] = False
    # Edit modes this adapter drives, where diffusers also has the pipeline (AutoPipelineFor
    # Image2Image / Inpainting); built from the loaded one with `from_pipe`, sharing weights.
    edit_modes: ClassVar[frozenset[str]] = frozenset({"image", "inpaint"})

    def requirements(self, pipeline_class: str) -> dict[str, frozenset[str]]:
        """Pipeline class name -> __call__ parameters it must have (sub-pipelines included)."""
        return {pipeline_class: self.passes}

    def edit_refusal(self, pipe: Any, mode: str) -> str | None:
        """Why this loaded model cannot run an edit mode its family's pipeline has, or None."""
        return None

    # capabilities ---------------------------------------------------------------------------
    def size_multiple(self, pipe: Any) -> int:
        # The UNet pipelines check `% 8` themselves whatever the VAE's factor.
        return math.lcm(8, int(pipe.vae_scale_factor))

    def max_size(self, pipe: Any) -> int | None:
        return None

    def native_size(self, pipe: Any) -> tuple[int, int]:
        side = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        return side, side

    def guidance(self, pipe: Any) -> GuidanceKind:
        # A UNet with a guidance embedding (LCM-distilled) takes the scale as an input, no CFG.
        return "distilled" if pipe.unet.config.time_cond_proj_dim is not None else "cfg"

    def supports_negative(self, pipe: Any, guidance: GuidanceKind) -> bool:
        return guidance == "cfg"

    def negative_needs_guidance(self, pipe: Any, options: ModelOptions) -> bool:
        return True

    def min_steps(self, pipe: Any) -> int:
        return 1

    def max_steps(self, pipe: Any) -> int | None:
        return None

    def default_steps(self, pipe: Any) -> int:
        return int(_call_default(type(pipe), "num_inference_steps") or 50)

    def default_guidance(self, pipe: Any) -> float:
        return float(_call_default(type(pipe), "guidance_scale") or 0.0)

    def notes(self, pipe: Any, caps: dict[str, Any], options: ModelOptions) -> list[str]:
        out = []
        if caps["guidance"] == "cfg":
            out.append(
                "guidance_scale is classifier-free guidance; above 1 it runs the conditional "
                "and unconditional passes batched together (twice the denoiser batch)"
            )
        return out

    # schedulers -----------------------------------------------------------------------------
    def scheduler_host(self, pipe: Any) -> Any:
        """The (sub-)pipeline whose scheduler does the denoising a client's choice affects."""
        return pipe

    def scheduler_candidates(self, base: Any) -> set[str]:
        names = {c.__name__ for c in base.compatibles} | {type(base).__name__}
        if self.flow_matching:  # flow-matching schedulers declare no compatibles
            names |= {
                "FlowMatchEulerDiscreteScheduler",
                "FlowMatchHeunDiscreteScheduler",
                "FlowMatchLCMScheduler",
            }
        return names

    def scheduler_usable(self, pipe: Any, scheduler: Any) -> bool:
        """Family rules beyond diffusers' `compatibles` (what the pipeline's loop passes)."""
        return True

    # running --------------------------------------------------------------------------------
    def offload(self, pipe: Any, *, device: str, sequential: bool) -> None:
        if sequential:
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            pipe.enable_model_cpu_offload(device=device)

    def negative(self, call: _Call) -> Any:
        return call.negatives if call.negatives is not None else self.negative_when_absent

    def kwargs(self, pipe: Any, call: _Call, progress: _Progress | None) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            prompt=call.prompts,
            width=call.width,
            height=call.height,
            num_inference_steps=call.steps,
            guidance_scale=call.guidance_scale,
            generator=_generators(call.seeds),
            output_type=call.output_type,
        )
        if call.mode != "text":
            n = len(call.seeds)
            kw["image"] = [call.image] * n
            kw["strength"] = call.strength
            if call.mode == "inpaint":
                kw["mask_image"] = [call.mask] * n
            if "width" not in call_parameters(type(pipe)):  # image-to-image: the image's size
                del kw["width"], kw["height"]
        if "negative_prompt" in self.passes:
            kw["negative_prompt"] = self.negative(call)
        if progress is not None:
            if self.legacy_callback:
                kw["callback"] = progress.legacy(pipe, call.steps)
                kw["callback_steps"] = 1
            else:
                kw["callback_on_step_end"] = progress.step_end
        return kw

    def run(
        self, pipe: Any, call: _Call, progress: _Progress | None, options: ModelOptions
    ) -> list[Candidate]:
        return list(pipe(**self.kwargs(pipe, call, progress)).images)


_BASE = frozenset(
    {"prompt", "width", "height", "num_inference_steps", "guidance_scale", "generator"}
    | {"output_type", "callback_on_step_end"}
)


class StableDiffusion(Family):
    name = "stable-diffusion"
    passes = _BASE | {"negative_prompt"}


class StableDiffusionXL(StableDiffusion):
    name = "stable-diffusion-xl"

    def native_size(self, pipe: Any) -> tuple[int, int]:
        side = int(pipe.default_sample_size) * int(pipe.vae_scale_factor)
        return side, side


class LatentConsistency(Family):
    name = "lcm"
    passes = _BASE
    edit_modes = frozenset({"image"})  # diffusers has no LCM inpainting pipeline

    def guidance(self, pipe: Any) -> GuidanceKind:
        return "distilled" if pipe.unet.config.time_cond_proj_dim is not None else "none"

    def negative_needs_guidance(self, pipe: Any, options: ModelOptions) -> bool:
        return False

    def max_steps(self, pipe: Any) -> int | None:
        # LCMScheduler refuses more steps than the schedule it was distilled on.
        return int(pipe.scheduler.config.original_inference_steps)

    def notes(self, pipe: Any, caps: dict[str, Any], options: ModelOptions) -> list[str]:
        return [
            "guidance_scale feeds LCM's guidance embedding (one pass, no CFG); "
            "the pipeline takes no negative prompt",
            "image-to-image runs all `steps` (LCM's scheduler spreads them over the part of "
            "the schedule that strength leaves), not steps x strength",
        ]


def _set_timesteps_takes(scheduler: Any, names: set[str]) -> bool:
    return names <= set(inspect.signature(scheduler.set_timesteps).parameters)


class StableDiffusion3(Family):
    name = "stable-diffusion-3"
    passes = _BASE | {"negative_prompt"}
    flow_matching = True

    def size_multiple(self, pipe: Any) -> int:
        return int(pipe.vae_scale_factor) * int(pipe.patch_size)

    def max_size(self, pipe: Any) -> int | None:
        # The positional embedding is cropped from a fixed grid: larger sizes raise.
        grid = pipe.transformer.config.pos_embed_max_size
        return None if grid is None else int(grid) * self.size_multiple(pipe)

    def native_size(self, pipe: Any) -> tuple[int, int]:
        side = int(pipe.default_sample_size) * int(pipe.vae_scale_factor)
        return side, side

    def guidance(self, pipe: Any) -> GuidanceKind:
        return "cfg"

    def edit_refusal(self, pipe: Any, mode: str) -> str | None:
        channels = int(pipe.transformer.config.in_channels)
        if mode == "inpaint" and channels not in (16, 33):
            return (f"StableDiffusion3InpaintPipeline needs a transformer of 16 or 33 input "
                    f"channels; this one has {channels}")  # fmt: skip
        return None

    def scheduler_usable(self, pipe: Any, scheduler: Any) -> bool:
        # SD3 passes `mu` when the model's scheduler shifts by resolution.
        needs = {"mu"} if pipe.scheduler.config.get("use_dynamic_shifting") else set()
        return _set_timesteps_takes(scheduler, needs)


class Flux(Family):
    name = "flux"
    passes = _BASE | {"negative_prompt", "true_cfg_scale"}
    true_cfg = True
    flow_matching = True

    def size_multiple(self, pipe: Any) -> int:
        return int(pipe.vae_scale_factor) * 2  # latents are packed 2 x 2

    def native_size(self, pipe: Any) -> tuple[int, int]:
        side = int(pipe.default_sample_size) * int(pipe.vae_scale_factor)
        return side, side

    def guidance(self, pipe: Any) -> GuidanceKind:
        # dev-style checkpoints embed the guidance scale; schnell-style have no guidance at all.
        return "distilled" if pipe.transformer.config.guidance_embeds else "none"

    def supports_negative(self, pipe: Any, guidance: GuidanceKind) -> bool:
        return True  # through true CFG

    def negative_needs_guidance(self, pipe: Any, options: ModelOptions) -> bool:
        return False

    def default_steps(self, pipe: Any) -> int:
        # FLUX.1-schnell is timestep-distilled for 1-4 steps; dev uses the pipeline's 28.
        return super().default_steps(pipe) if pipe.transformer.config.guidance_embeds else 4

    def default_guidance(self, pipe: Any) -> float:
        return super().default_guidance(pipe) if pipe.transformer.config.guidance_embeds else 0.0

    def scheduler_usable(self, pipe: Any, scheduler: Any) -> bool:
        # FluxPipeline always passes its own sigmas and the resolution shift `mu`.
        if pipe.scheduler.config.get("use_flow_sigmas"):
            return _set_timesteps_takes(scheduler, {"mu"})
        return _set_timesteps_takes(scheduler, {"sigmas", "mu"})

    def kwargs(self, pipe: Any, call: _Call, progress: _Progress | None) -> dict[str, Any]:
        kw = super().kwargs(pipe, call, progress)
        if call.negatives is not None:
            kw["true_cfg_scale"] = call.true_cfg_scale
        return kw

    def notes(self, pipe: Any, caps: dict[str, Any], options: ModelOptions) -> list[str]:
        out = []
        if caps["guidance"] == "distilled":
            out.append(
                "guidance_scale is FLUX's distilled guidance (an embedding, one pass), not CFG"
            )
        else:
            out.append("no guidance (schnell-style): guidance_scale must be omitted or 0")
        out.append(
            "a negative prompt turns true CFG on at true_cfg_scale (default "
            f"{caps['defaults'].true_cfg_scale}): a second transformer pass per step, about "
            "twice the denoising time"
        )
        return out


class PixArt(Family):
    passes = _BASE - {"callback_on_step_end"} | {
        "negative_prompt",
        "callback",
        "callback_steps",
        "use_resolution_binning",
        "clean_caption",
    }
    legacy_callback = True
    negative_when_absent = ""  # PixArt encodes "" for the unconditional pass; None fails
    edit_modes = frozenset()  # diffusers has no PixArt image-to-image or inpainting pipeline

    def __init__(self, name: str):
        self.name = name  # type: ignore[misc]  # alpha and sigma share everything else

    def size_multiple(self, pipe: Any) -> int:
        patch = int(pipe.transformer.config.patch_size)
        return math.lcm(8, int(pipe.vae_scale_factor) * patch)

    def native_size(self, pipe: Any) -> tuple[int, int]:
        side = int(pipe.transformer.config.sample_size) * int(pipe.vae_scale_factor)
        return side, side

    def guidance(self, pipe: Any) -> GuidanceKind:
        return "cfg"

    def min_steps(self, pipe: Any) -> int:
        # At 1 step PixArt takes the scheduler's second output (a DMD checkpoint's x0), which
        # DPM-Solver, PNDM and UniPC do not return.
        return 2

    def kwargs(self, pipe: Any, call: _Call, progress: _Progress | None) -> dict[str, Any]:
        kw = super().kwargs(pipe, call, progress)
        kw["use_resolution_binning"] = False  # draw exactly the size asked, never a bin
        kw["clean_caption"] = False  # encode the prompt as given
        return kw

    def notes(self, pipe: Any, caps: dict[str, Any], options: ModelOptions) -> list[str]:
        return [
            *super().notes(pipe, caps, options),
            "drawn at exactly the size asked (no resolution binning); the prompt is encoded "
            "as given (no caption cleaning)",
        ]


_PRIOR_PASSES = frozenset(
    {"prompt", "negative_prompt", "num_inference_steps", "generator", "guidance_scale"}
    | {"output_type", "return_dict", "callback_on_step_end"}
)
_DECODER_PASSES = frozenset(
    {"image_embeds", "negative_image_embeds", "width", "height", "num_inference_steps"}
    | {"generator", "guidance_scale", "output_type", "callback_on_step_end"}
)


class Kandinsky22(Family):
    """The DALL-E 2 architecture: a prior maps text to a CLIP image embedding, a decoder
    draws it. Driven stage by stage: the combined call hands the prior one generator per
    image while the prior doubles its batch for a negative prompt, and a scheduler set on the
    combined pipeline never reaches the decoder that uses it."""

    name = "kandinsky22"
    passes = frozenset()
    # Its image-to-image and inpainting pipelines are combined prior + decoder pipelines that
    # this adapter would have to drive stage by stage, as it does the text one: not done yet.
    edit_modes = frozenset()

    def requirements(self, pipeline_class: str) -> dict[str, frozenset[str]]:
        return {
            "KandinskyV22PriorPipeline": _PRIOR_PASSES,
            "KandinskyV22Pipeline": _DECODER_PASSES,
        }

    def size_multiple(self, pipe: Any) -> int:
        # The decoder rounds sizes up to movq_scale_factor squared.
        return int(pipe.decoder_pipe.movq_scale_factor) ** 2

    def native_size(self, pipe: Any) -> tuple[int, int]:
        cls = type(pipe)
        return int(_call_default(cls, "width") or 512), int(_call_default(cls, "height") or 512)

    def guidance(self, pipe: Any) -> GuidanceKind:
        return "cfg"

    def _prior(self, pipe: Any, options: ModelOptions) -> tuple[int, float]:
        cls = type(pipe)
        steps = options.prior_steps or int(_call_default(cls, "prior_num_inference_steps") or 25)
        guidance = options.prior_guidance_scale
        if guidance is None:
            guidance = float(_call_default(cls, "prior_guidance_scale") or 4.0)
        return steps, guidance

    def negative_needs_guidance(self, pipe: Any, options: ModelOptions) -> bool:
        # The prior's own CFG already steers the image embedding away from the negative
        # prompt; without it only the decoder's CFG (guidance_scale > 1) would use it.
        return self._prior(pipe, options)[1] <= 1.0

    def scheduler_host(self, pipe: Any) -> Any:
        return pipe.decoder_pipe

    def offload(self, pipe: Any, *, device: str, sequential: bool) -> None:
        # The combined pipeline's own offload sequence leaves out the prior transformer; each
        # stage's pipeline has a complete one (what the img2img combined pipeline does).
        for stage in (pipe.prior_pipe, pipe.decoder_pipe):
            super().offload(stage, device=device, sequential=sequential)

    def scheduler_usable(self, pipe: Any, scheduler: Any) -> bool:
        # The decoder's loop passes `generator` to step() and never calls scale_model_input,
        # so only schedulers whose input scaling is the identity compute what they claim.
        import torch

        if "generator" not in inspect.signature(scheduler.step).parameters:
            return False
        probe = copy.deepcopy(scheduler)
        probe.set_timesteps(2, device="cpu")
        sample = torch.ones(1, 1, 2, 2)
        return bool(torch.equal(probe.scale_model_input(sample, probe.timesteps[0]), sample))

    def notes(self, pipe: Any, caps: dict[str, Any], options: ModelOptions) -> list[str]:
        steps, guidance = self._prior(pipe, options)
        return [
            *super().notes(pipe, caps, options),
            f"steps, guidance_scale and scheduler are the decoder's; the prior runs {steps} "
            f"steps of UnCLIPScheduler at guidance {guidance}, and progress counts both",
            "a negative prompt is drawn by the prior into the negative image embedding",
        ]

    def run(
        self, pipe: Any, call: _Call, progress: _Progress | None, options: ModelOptions
    ) -> list[Candidate]:
        prior, decoder = pipe.prior_pipe, pipe.decoder_pipe
        prior_steps, prior_guidance = self._prior(pipe, options)
        # With a negative prompt the prior runs [prompts..., negatives...]: one generator per
        # row, each image's pair seeded alike, so an image never depends on its batch.
        seeds = call.seeds + (call.seeds if call.negatives is not None else [])
        if progress is not None:
            progress.later = _scheduled(decoder.scheduler, call.steps)
        image_embeds, negative_image_embeds = prior(
            prompt=call.prompts,
            negative_prompt=call.negatives,
            num_inference_steps=prior_steps,
            generator=_generators(seeds),
            guidance_scale=prior_guidance,
            output_type="pt",
            return_dict=False,
            callback_on_step_end=progress.step_end if progress is not None else None,
        )
        if progress is not None:
            progress.offset, progress.later = _timesteps(prior), 0
        out = decoder(
            image_embeds=image_embeds,
            negative_image_embeds=negative_image_embeds,
            width=call.width,
            height=call.height,
            num_inference_steps=call.steps,
            generator=_generators(call.seeds),
            guidance_scale=call.guidance_scale,
            output_type=call.output_type,
            callback_on_step_end=progress.step_end if progress is not None else None,
        )
        if call.output_type == "pt":  # this decoder returns "pt" un-denormalised, in [-1, 1]
            return list((out.images * 0.5 + 0.5).clamp(0, 1))
        return list(out.images)


# Every pipeline class AutoPipelineForText2Image may return, with Daikon's decision. A class
# diffusers adds fails tests/test_families.py until it is placed in one of the two tables.
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


_EDIT_NEEDS: dict[str, frozenset[str]] = {
    "image": frozenset({"image", "strength"}),
    "inpaint": frozenset({"image", "mask_image", "strength"}),
}


def edit_pipeline_class(pipe: Any, mode: str) -> type | None:
    """diffusers' image-to-image (mode image) or inpainting (inpaint) pipeline for `pipe`'s
    family, or None where it has none."""
    from diffusers.pipelines import auto_pipeline

    mapping = (
        auto_pipeline.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING
        if mode == "image"
        else auto_pipeline.AUTO_INPAINT_PIPELINES_MAPPING
    )
    cls: type | None = auto_pipeline._get_task_class(
        mapping, type(pipe).__name__, throw_error_if_not_exist=False
    )
    return cls


def edit_modes(pipe: Any, family: Family) -> tuple[list[Mode], list[str]]:
    """The modes this model runs, and a note for each edit mode it cannot (why)."""
    modes: list[Mode] = ["text"]
    notes: list[str] = []
    for mode in ("image", "inpaint"):
        label = MODE_NAMES[mode]
        cls = edit_pipeline_class(pipe, mode)
        if cls is None:
            notes.append(f"no {label} (mode {mode}): diffusers has no such pipeline for "
                         f"{type(pipe).__name__}")  # fmt: skip
            continue
        if mode not in family.edit_modes:
            notes.append(f"no {label} (mode {mode}): Daikon's {family.name} adapter does not "
                         f"drive {cls.__name__} yet")  # fmt: skip
            continue
        refusal = family.edit_refusal(pipe, mode)
        if refusal:
            notes.append(f"no {label} (mode {mode}): {refusal}")
            continue
        needed = (family.passes - {"width", "height"}) | _EDIT_NEEDS[mode]
        missing = sorted(needed - call_parameters(cls))
        if missing:
            notes.append(f"no {label} (mode {mode}): {cls.__name__}.__call__ lacks "
                         f"{', '.join(missing)}")  # fmt: skip
            continue
        modes.append(mode)  # type: ignore[arg-type]
    return modes, notes


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


def _edit_fields(request: GenerationRequest) -> dict[str, Any]:
    """An edit's part of a pipeline call: the input in RGB, the mask in L, blurred as asked."""
    from PIL import ImageFilter

    if request.mode == "text":
        return {}
    assert request.image is not None
    mask = request.mask.convert("L") if request.mask is not None else None
    if mask is not None and request.mask_blur:
        mask = mask.filter(ImageFilter.GaussianBlur(request.mask_blur))
    strength = request.strength if request.strength is not None else 1.0
    return {"mode": request.mode, "image": request.image.convert("RGB"), "mask": mask,
            "strength": strength}  # fmt: skip


# --- placement and memory options ------------------------------------------------------------


def place(pipe: Any, *, device: str, options: ModelOptions) -> None:
    """Put the pipeline on its device, or have it offloaded to the CPU between uses."""
    if options.cpu_offload is None:
        pipe.to(device)
        return
    if device == "cpu" or device.startswith("cpu:"):
        raise UnsupportedOption(
            f"cpu_offload={options.cpu_offload!r} offloads from an accelerator to the CPU; "
            "this worker's device is the CPU"
        )
    family_for(pipe).offload(pipe, device=device, sequential=options.cpu_offload == "sequential")


def apply_vae_options(pipe: Any, options: ModelOptions) -> None:
    """VAE tiling and slicing as the options ask; one this VAE cannot do is refused."""
    vae = getattr(pipe, "vae", None) or getattr(pipe, "movq", None)
    for option, attribute, method in (
        ("vae_tiling", "use_tiling", "enable_tiling"),
        ("vae_slicing", "use_slicing", "enable_slicing"),
    ):
        if not getattr(options, option):
            continue
        if vae is None or not hasattr(vae, attribute):
            raise UnsupportedOption(
                f"{option}: {type(vae).__name__} of {type(pipe).__name__} has no {method}"
            )
        getattr(vae, method)()


def denoiser_name(pipe: Any) -> str | None:
    """The attribute holding the pipeline's denoiser: its UNet or its transformer."""
    return next((n for n in ("unet", "transformer") if getattr(pipe, n, None) is not None), None)


def apply_speed_options(pipe: Any, options: ModelOptions) -> None:
    """channels_last and torch.compile of the denoiser, as the options ask; a pipeline with no
    UNet or transformer to apply them to is refused. Both change the module in place, so a
    pipeline that holds it twice (Kandinsky's combined pipeline and its decoder) runs it so."""
    if not (options.channels_last or options.compile):
        return
    import torch

    name = denoiser_name(pipe)
    if name is None:
        asked = [o for o in ("channels_last", "compile") if getattr(options, o)]
        raise UnsupportedOption(
            f"{', '.join(asked)}: {type(pipe).__name__} has no single UNet or transformer"
        )
    denoiser = getattr(pipe, name)
    if options.channels_last:
        denoiser.to(memory_format=torch.channels_last)
    if options.compile:
        denoiser.compile()  # torch.compile of its forward, in place


# Settings for a scheduler built from another one's config. PNDM's Runge-Kutta warm-up (its
# default when the config does not say) fails below about a dozen steps; SD 1.5's own PNDM
# config skips it, and so does a PNDM a client picks.
_CONVERSION: dict[str, dict[str, Any]] = {"PNDMScheduler": {"skip_prk_steps": True}}


# --- the adapter ------------------------------------------------------------------------------


class Generator:
    """A loaded pipeline, its family and its capabilities: checks and runs requests."""

    def __init__(
        self,
        pipe: Any,
        *,
        model: str = "default",
        options: ModelOptions | None = None,
        device: str = "cpu",
        images_per_call: int | None = None,
    ):
        self.pipe = pipe
        self.device = device
        # At most this many images per pipeline call (denoised and decoded together): a cancel
        # waits at most one step of one such chunk. None = all of a call's images at once.
        # Batched kernels may round an image a level apart in a few pixels from the same seed
        # drawn alone; 1 makes a seed's image byte-identical whatever the candidate count.
        self.images_per_call = images_per_call
        self.options = options or ModelOptions()
        self.family = family_for(pipe)
        apply_vae_options(pipe, self.options)
        apply_speed_options(pipe, self.options)
        host = self.family.scheduler_host(pipe)
        self.base_scheduler = host.scheduler
        self._schedulers: dict[str, Any] = {}
        self._edit_pipes: dict[str, Any] = {}  # mode -> pipeline sharing self.pipe's weights
        self.capabilities = self._derive(model)

    @classmethod
    def load(
        cls,
        model_id: str,
        *,
        model: str = "default",
        device: str,
        dtype: Any = None,
        options: ModelOptions | None = None,
        images_per_call: int | None = None,
    ) -> Generator:
        import torch
        from diffusers import AutoPipelineForText2Image
        from diffusers.utils import logging as diffusers_logging

        options = options or ModelOptions()
        if options.dtype not in (None, "auto"):
            dtype = getattr(torch, options.dtype)
        diffusers_logging.disable_progress_bar()
        pipe = AutoPipelineForText2Image.from_pretrained(model_id, dtype=dtype)
        family_for(pipe)  # refuse before moving weights to the device
        place(pipe, device=device, options=options)
        pipe.set_progress_bar_config(disable=True)
        generator = cls(pipe, model=model, options=options, device=device,
                        images_per_call=images_per_call)  # fmt: skip
        if options.compile:
            generator.warm_up()
        return generator

    def warm_up(self) -> None:
        """Short generations at the model's native size, one image and then a full call's
        worth: a compiled denoiser compiles here, at load, for both batch shapes (the second
        makes the batch dimension dynamic), not in the first job or the first full batch."""
        caps = self.capabilities
        for n in sorted({1, self.images_per_call or 1}):
            self.generate([GenerationRequest(
                prompt="warm-up", negative_prompt=None, width=caps.native_width,
                height=caps.native_height, steps=max(caps.min_steps, 2), guidance_scale=None,
                seeds=tuple(range(n)),
            )])  # fmt: skip

    # capabilities ----------------------------------------------------------------------------
    def _usable_schedulers(self) -> dict[str, Any]:
        import diffusers

        base = self.base_scheduler
        candidates = self.family.scheduler_candidates(base)
        usable: dict[str, Any] = {}
        for name, class_name in SCHEDULERS.items():
            if class_name not in candidates:
                continue
            if class_name == type(base).__name__:
                usable[name] = base
                continue
            cls = getattr(diffusers, class_name, None)
            if cls is None:
                continue
            try:
                scheduler = cls.from_config(base.config, **_CONVERSION.get(class_name, {}))
            except Exception:  # a config this scheduler cannot take: not offered
                continue
            if self.family.scheduler_usable(self.pipe, scheduler):
                usable[name] = scheduler
        return usable

    def _derive(self, model: str) -> ModelCapabilities:
        pipe, family, options = self.pipe, self.family, self.options
        self._schedulers = self._usable_schedulers()
        guidance = family.guidance(pipe)
        if options.guidance == "none":
            guidance = "none"
        multiple = family.size_multiple(pipe)
        native_w, native_h = family.native_size(pipe)
        max_steps = family.max_steps(pipe)
        if options.max_steps is not None:
            max_steps = min(max_steps or options.max_steps, options.max_steps)
        own = SCHEDULER_BY_CLASS.get(type(self.base_scheduler).__name__)
        default_scheduler = own
        if options.default_scheduler is not None:
            default_scheduler = scheduler_name(options.default_scheduler)
            if default_scheduler not in self._schedulers:
                raise UnsupportedOption(
                    f"default_scheduler {options.default_scheduler!r} cannot run "
                    f"{type(pipe).__name__}; usable: {', '.join(self._schedulers)}"
                )
        if guidance == "none":
            default_guidance = 0.0
        elif options.default_guidance_scale is not None:
            default_guidance = options.default_guidance_scale
        else:
            default_guidance = family.default_guidance(pipe)
        defaults = ModelDefaults(
            width=options.default_width or native_w,
            height=options.default_height or native_h,
            steps=options.default_steps or family.default_steps(pipe),
            guidance_scale=default_guidance,
            true_cfg_scale=(
                (options.default_true_cfg_scale or FLUX_TRUE_CFG_DEFAULT)
                if family.true_cfg
                else None
            ),
            scheduler=default_scheduler,
        )
        fields: dict[str, Any] = dict(
            model=model,
            family=family.name,
            pipeline_class=type(pipe).__name__,
            size_multiple=multiple,
            min_size=multiple,
            max_size=family.max_size(pipe),
            native_width=native_w,
            native_height=native_h,
            min_steps=family.min_steps(pipe),
            max_steps=max_steps,
            schedulers=list(self._schedulers),
            guidance=guidance,
            supports_negative_prompt=family.supports_negative(pipe, guidance),
            negative_prompt_needs_guidance=(
                guidance == "cfg" and family.negative_needs_guidance(pipe, options)
            ),
            supports_true_cfg=family.true_cfg,
            supports_progress=True,
            defaults=defaults,
        )
        notes = family.notes(pipe, fields, options)
        fields["modes"], mode_notes = edit_modes(pipe, family)
        notes += mode_notes
        if options.guidance == "none":
            notes.append(
                "configured as guidance-free (e.g. a turbo checkpoint): guidance_scale and "
                "negative prompts are refused"
            )
        caps = ModelCapabilities(**fields, notes=notes)
        # The deployment's own defaults must be requests this model accepts.
        bad = caps.check({})
        if bad:
            raise UnsupportedOption(f"{model}: its defaults are not servable: {bad[0].message}")
        return caps

    def edit_pipeline(self, mode: str) -> Any:
        """The image-to-image or inpainting pipeline, built once from the loaded one with
        `from_pipe`: the same UNet, VAE and text encoder objects, never a second copy."""
        if mode not in self._edit_pipes:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = AutoPipelineForImage2Image if mode == "image" else AutoPipelineForInpainting
            edit = auto.from_pipe(self.pipe)
            edit.set_progress_bar_config(disable=True)
            self._edit_pipes[mode] = edit
        return self._edit_pipes[mode]

    def supported_schedulers(self) -> list[str]:
        return list(self.capabilities.schedulers)

    def check(self, request: GenerationRequest) -> None:
        """Refuse what this model cannot do, before any work (UnsupportedParameters)."""
        self.capabilities.require(request)

    # generation ------------------------------------------------------------------------------
    def _resolve(self, request: GenerationRequest) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if not request.seeds:
            raise ValueError("a generation request needs at least one seed")
        self.check(request)
        r = self.capabilities.resolve(request)
        guidance = 0.0 if self.capabilities.guidance == "none" else r["guidance_scale"]
        if request.mode != "text":
            if request.image is None or (request.mode == "inpaint" and request.mask is None):
                raise ValueError(f"mode {request.mode} needs an image (and inpaint a mask)")
            r["width"], r["height"] = request.image.size
        key = (
            request.mode,
            id(request.image),
            id(request.mask),
            request.strength,
            request.mask_blur,
            r["width"],
            r["height"],
            r["steps"],
            guidance,
            r["scheduler"],
            r["negative_prompt"] is not None,
            r["true_cfg_scale"] if r["negative_prompt"] is not None else None,
        )
        return key, {**r, "guidance_scale": guidance}

    @overload
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_step: StepCallback | None = None,
        tensors: Literal[False] = False,
    ) -> list[list[Image.Image]]: ...

    @overload
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_step: StepCallback | None = None,
        tensors: bool,
    ) -> list[list[Candidate]]: ...

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_step: StepCallback | None = None,
        tensors: bool = False,
    ) -> list[list[Candidate]] | list[list[Image.Image]]:
        """Images for each request, in request order; requests that share every parameter but
        prompt and seeds run in one pipeline call (each image keeps its own seed's noise).
        `tensors`: where the pipeline can, images come back as tensors on its device (see
        `Candidate`); otherwise, and always for inpainting (its overlay is PIL's), PIL images."""
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        resolved: list[dict[str, Any]] = []
        for i, request in enumerate(requests):
            key, r = self._resolve(request)
            groups[key].append(i)
            resolved.append(r)
        results: list[list[Candidate]] = [[] for _ in requests]
        for indices in groups.values():
            first = resolved[indices[0]]
            members = [requests[i] for i in indices]
            call = _Call(
                prompts=[r.prompt for r in members for _ in r.seeds],
                negatives=(
                    [r.negative_prompt or "" for r in members for _ in r.seeds]
                    if first["negative_prompt"] is not None
                    else None
                ),
                seeds=[s for r in members for s in r.seeds],
                width=first["width"],
                height=first["height"],
                steps=first["steps"],
                guidance_scale=first["guidance_scale"],
                true_cfg_scale=first["true_cfg_scale"],
                **_edit_fields(members[0]),
            )
            if tensors and call.mode != "inpaint":
                call = dataclasses.replace(call, output_type="pt")
            images = self._run(call, first["scheduler"], on_step)
            offset = 0
            for i in indices:
                n = len(requests[i].seeds)
                results[i] = images[offset : offset + n]
                offset += n
        return results

    def _use_scheduler(self, name: str | None, pipe: Any) -> None:
        scheduler = self._schedulers[name] if name is not None else self.base_scheduler
        host = self.family.scheduler_host(pipe)
        if host.scheduler is not scheduler:
            host.scheduler = scheduler
            if host is not pipe and hasattr(pipe, "scheduler"):
                pipe.scheduler = scheduler  # the combined pipeline's registered component

    def _run(self, call: _Call, scheduler: str | None, on_step: StepCallback | None) -> list[Any]:
        import torch

        pipe = self.pipe if call.mode == "text" else self.edit_pipeline(call.mode)
        self._use_scheduler(scheduler, pipe)
        size = self.images_per_call or len(call.seeds)
        starts = range(0, len(call.seeds), size)
        progress = _Progress(on_step, chunks=len(starts)) if on_step is not None else None
        images: list[Any] = []
        for start in starts:
            chunk = dataclasses.replace(
                call,
                prompts=call.prompts[start : start + size],
                negatives=(
                    call.negatives[start : start + size] if call.negatives is not None else None
                ),
                seeds=call.seeds[start : start + size],
            )
            if progress is not None and start:
                progress.next_chunk()
            with torch.inference_mode():
                images += self.family.run(pipe, chunk, progress, self.options)
        if len(images) != len(call.seeds):
            raise RuntimeError(
                f"{type(self.pipe).__name__} returned {len(images)} images for "
                f"{len(call.seeds)} seeds"
            )
        for image in images:
            drawn = candidate_size(image)
            if drawn != (call.width, call.height):
                raise RuntimeError(
                    f"{type(self.pipe).__name__} drew {drawn[0]}x{drawn[1]} for "
                    f"{call.width}x{call.height}: refusing a silently resized image"
                )
        if call.mode == "inpaint":
            # The pipeline repaints in latent space, so the VAE would change every pixel a
            # little: paste the result over the original where the mask is not white, so the
            # kept area is the input's own pixels (byte-identical where the mask is black).
            assert call.image is not None and call.mask is not None
            overlay = pipe.image_processor.apply_overlay
            images = [overlay(call.mask, call.image, image) for image in images]
        return images

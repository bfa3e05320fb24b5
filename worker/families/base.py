"""The family contract: what every adapter in this package answers, and the helpers they share.

diffusers' text-to-image pipelines share a name, not a contract. Sizes must be multiples of
8, 16 or 64 and some pipelines silently resize otherwise; `guidance_scale` is CFG on SD,
a guidance embedding on FLUX-dev and nothing on FLUX-schnell; a negative prompt is `None` on
one family and must be `""` on PixArt; PixArt only knows the old `callback`/`callback_steps`;
Kandinsky 2.2 is a prior and a decoder, each with its own scheduler and generator handling.
Each family states what its pipeline takes, derives the model's `ModelCapabilities` from the
loaded pipeline (published to the API, which refuses what the model cannot do), and runs
requests so that every parameter does what it says: exact sizes, per-image seeds whatever the
batch, the chosen scheduler on the stage that denoises, progress whose total and last step come
from the pipeline, and a step callback that may raise to stop the run within one step.

`Family` holds what most pipelines share; a family module overrides only where its pipeline
differs. The edit-mode helpers live here too: which edit modes a model runs is decided from its
family's attributes (`passes`, `edit_modes`, `edit_refusal`).

torch and diffusers are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Union

from PIL import Image

from daikon.capabilities import MODE_NAMES, GuidanceKind, Mode, ModelOptions
from daikon.contract import JobParams

StepCallback = Callable[[int, int], None]  # (step done, total steps); may raise to stop the run


if TYPE_CHECKING:
    import torch

# A generated image: a PIL image, or (where the pipeline can return tensors) a (3, H, W)
# float tensor in [0, 1] still on the pipeline's device, so ranking reads it there and only
# the images kept cross to the CPU (to_pil) to be encoded.
Candidate = Union[Image.Image, "torch.Tensor"]


# A generator that draws in chunks may hand each chunk's images over as it is drawn, per
# request: (request index, the index of the first image within its request, the images). The
# executor scores them at once and keeps only each job's best (worker/ranking.py Shortlist).
ChunkSink = Callable[[list[tuple[int, int, list[Candidate]]]], None]


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


class FamilyError(ValueError):
    """A model or its options cannot be served as configured (raised at load)."""


class UnsupportedPipeline(FamilyError):
    pass


class UnsupportedOption(FamilyError):
    pass


@dataclass(frozen=True)
class Call:
    """One pipeline call: resolved parameters shared by its images."""

    prompts: list[str]
    negatives: list[str] | None  # None = no negative prompt
    seeds: list[int]
    width: int
    height: int
    steps: int
    guidance_scale: float
    true_cfg_scale: float | None
    # The validated parameters the call's jobs share (JobParams.shared; the prompts, negative
    # prompts and seeds above are per image): where a family reads a parameter of its own.
    params: JobParams
    mode: Mode = "text"
    image: Image.Image | None = None
    mask: Image.Image | None = None  # blurred already when mask_blur asked it
    strength: float | None = None
    output_type: str = "pil"  # "pt": images stay tensors on the pipeline's device


def generators(seeds: Sequence[int]) -> list[Any]:
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


def call_default(cls: type, name: str) -> Any:
    p = inspect.signature(cls.__call__).parameters.get(name)  # type: ignore[operator]
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def timesteps(pipe: Any) -> int:
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


def scheduled(scheduler: Any, steps: int) -> int:
    """The iterations `scheduler` takes for `steps`, without touching the one in use."""
    probe = copy.deepcopy(scheduler)
    probe.set_timesteps(steps, device="cpu")
    return len(probe.timesteps)


class Progress:
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
        self._report(self.offset + i + 1, self.offset + timesteps(pipe) + self.later)
        return tensors

    def legacy(self, pipe: Any, steps: int) -> Callable[[int, Any, Any], None]:
        def callback(step_index: int, t: Any, latents: Any) -> None:
            # PixArt passes i // order: count calls instead, so the last one equals the total.
            self._calls += 1
            self._report(self._calls, _legacy_updates(pipe.scheduler, steps))

        return callback


# --- the base family --------------------------------------------------------------------------


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
        return int(call_default(type(pipe), "num_inference_steps") or 50)

    def default_guidance(self, pipe: Any) -> float:
        return float(call_default(type(pipe), "guidance_scale") or 0.0)

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

    def negative(self, call: Call) -> Any:
        return call.negatives if call.negatives is not None else self.negative_when_absent

    def kwargs(self, pipe: Any, call: Call, progress: Progress | None) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            prompt=call.prompts,
            width=call.width,
            height=call.height,
            num_inference_steps=call.steps,
            guidance_scale=call.guidance_scale,
            generator=generators(call.seeds),
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
        self, pipe: Any, call: Call, progress: Progress | None, options: ModelOptions
    ) -> list[Candidate]:
        return list(pipe(**self.kwargs(pipe, call, progress)).images)


BASE_PASSES = frozenset(
    {"prompt", "width", "height", "num_inference_steps", "guidance_scale", "generator"}
    | {"output_type", "callback_on_step_end"}
)


def set_timesteps_takes(scheduler: Any, names: set[str]) -> bool:
    return names <= set(inspect.signature(scheduler.set_timesteps).parameters)


# --- edit modes -------------------------------------------------------------------------------


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
            notes.append(
                f"no {label} (mode {mode}): diffusers has no such pipeline for "
                f"{type(pipe).__name__}"
            )
            continue
        if mode not in family.edit_modes:
            notes.append(
                f"no {label} (mode {mode}): Daikon's {family.name} adapter does not "
                f"drive {cls.__name__} yet"
            )
            continue
        refusal = family.edit_refusal(pipe, mode)
        if refusal:
            notes.append(f"no {label} (mode {mode}): {refusal}")
            continue
        needed = (family.passes - {"width", "height"}) | _EDIT_NEEDS[mode]
        missing = sorted(needed - call_parameters(cls))
        if missing:
            notes.append(
                f"no {label} (mode {mode}): {cls.__name__}.__call__ lacks {', '.join(missing)}"
            )
            continue
        modes.append(mode)  # type: ignore[arg-type]
    return modes, notes

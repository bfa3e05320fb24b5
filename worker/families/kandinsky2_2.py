"""Kandinsky 2.2: a prior and a decoder, driven stage by stage (see `Kandinsky22`)."""

from __future__ import annotations

import copy
import inspect
from typing import Any

from daikon.capabilities import GuidanceKind, ModelOptions
from worker.families.base import (
    Call,
    Candidate,
    Family,
    Progress,
    call_default,
    generators,
    scheduled,
    timesteps,
)

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
        return int(call_default(cls, "width") or 512), int(call_default(cls, "height") or 512)

    def guidance(self, pipe: Any) -> GuidanceKind:
        return "cfg"

    def _prior(self, pipe: Any, options: ModelOptions) -> tuple[int, float]:
        cls = type(pipe)
        steps = options.prior_steps or int(call_default(cls, "prior_num_inference_steps") or 25)
        guidance = options.prior_guidance_scale
        if guidance is None:
            guidance = float(call_default(cls, "prior_guidance_scale") or 4.0)
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
        self, pipe: Any, call: Call, progress: Progress | None, options: ModelOptions
    ) -> list[Candidate]:
        prior, decoder = pipe.prior_pipe, pipe.decoder_pipe
        prior_steps, prior_guidance = self._prior(pipe, options)
        # With a negative prompt the prior runs [prompts..., negatives...]: one generator per
        # row, each image's pair seeded alike, so an image never depends on its batch.
        seeds = call.seeds + (call.seeds if call.negatives is not None else [])
        if progress is not None:
            progress.later = scheduled(decoder.scheduler, call.steps)
        image_embeds, negative_image_embeds = prior(
            prompt=call.prompts,
            negative_prompt=call.negatives,
            num_inference_steps=prior_steps,
            generator=generators(seeds),
            guidance_scale=prior_guidance,
            output_type="pt",
            return_dict=False,
            callback_on_step_end=progress.step_end if progress is not None else None,
        )
        if progress is not None:
            progress.offset, progress.later = timesteps(prior), 0
        out = decoder(
            image_embeds=image_embeds,
            negative_image_embeds=negative_image_embeds,
            width=call.width,
            height=call.height,
            num_inference_steps=call.steps,
            generator=generators(call.seeds),
            guidance_scale=call.guidance_scale,
            output_type=call.output_type,
            callback_on_step_end=progress.step_end if progress is not None else None,
        )
        if call.output_type == "pt":  # this decoder returns "pt" un-denormalised, in [-1, 1]
            return list((out.images * 0.5 + 0.5).clamp(0, 1))
        return list(out.images)

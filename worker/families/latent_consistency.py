"""LCM: guidance is an embedding, no negative prompt, and at most the distilled steps."""

from __future__ import annotations

from typing import Any

from daikon.capabilities import GuidanceKind, ModelOptions
from worker.families.base import BASE_PASSES, Family


class LatentConsistency(Family):
    name = "lcm"
    passes = BASE_PASSES
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

"""SD3: a transformer on a cropped positional grid (a largest size) and flow-matching schedulers."""

from __future__ import annotations

from typing import Any

from daikon.capabilities import GuidanceKind
from worker.families.base import BASE_PASSES, Family, set_timesteps_takes


class StableDiffusion3(Family):
    name = "stable-diffusion-3"
    passes = BASE_PASSES | {"negative_prompt"}
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
            return (
                f"StableDiffusion3InpaintPipeline needs a transformer of 16 or 33 input "
                f"channels; this one has {channels}"
            )
        return None

    def scheduler_usable(self, pipe: Any, scheduler: Any) -> bool:
        # SD3 passes `mu` when the model's scheduler shifts by resolution.
        needs = {"mu"} if pipe.scheduler.config.get("use_dynamic_shifting") else set()
        return set_timesteps_takes(scheduler, needs)

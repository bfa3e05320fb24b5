"""SDXL and its turbo checkpoints: Stable Diffusion with a native size from the pipeline."""

from __future__ import annotations

from typing import Any

from worker.families.stable_diffusion import StableDiffusion


class StableDiffusionXL(StableDiffusion):
    name = "stable-diffusion-xl"

    def native_size(self, pipe: Any) -> tuple[int, int]:
        side = int(pipe.default_sample_size) * int(pipe.vae_scale_factor)
        return side, side

"""PixArt-alpha and -sigma: the old `callback`, "" for no negative prompt, exact sizes."""

from __future__ import annotations

import math
from typing import Any

from daikon.capabilities import GuidanceKind, ModelOptions
from worker.families.base import BASE_PASSES, Call, Family, Progress


class PixArt(Family):
    passes = BASE_PASSES - {"callback_on_step_end"} | {
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

    def kwargs(self, pipe: Any, call: Call, progress: Progress | None) -> dict[str, Any]:
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

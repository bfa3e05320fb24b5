"""Stable Diffusion 1.x and 2.x (v-prediction too): the base contract as it stands."""

from __future__ import annotations

from worker.families.base import BASE_PASSES, Family


class StableDiffusion(Family):
    name = "stable-diffusion"
    passes = BASE_PASSES | {"negative_prompt"}

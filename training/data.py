"""Training batches drawn fresh from the shapes world (never a held-out two-object scene)."""

from __future__ import annotations

import random

import numpy as np
import torch

from shapeworld.captions import Spec, spec_of, varied_caption
from shapeworld.prompts import is_held_out
from shapeworld.world import Scene, render, sample_scene

P_TWO_OBJECTS = 0.6  # pairs are the hard part, so they get more of the batches


def training_scene(rng: random.Random) -> Scene:
    while True:
        scene = sample_scene(rng, 2 if rng.random() < P_TWO_OBJECTS else 1)
        if not is_held_out(spec_of(scene)):
            return scene


def images_to_tensor(scenes: list[Scene]) -> torch.Tensor:
    """Pixels in [-1, 1], NCHW, as diffusers' VAEs expect."""
    pixels = np.stack([np.asarray(render(s)) for s in scenes])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def batch(rng: random.Random, size: int) -> tuple[list[Spec], list[str], torch.Tensor]:
    scenes = [training_scene(rng) for _ in range(size)]
    specs = [spec_of(s) for s in scenes]
    return specs, [varied_caption(sp, rng) for sp in specs], images_to_tensor(scenes)

"""Text-to-image generation with classifier-free guidance, shaped for batches of jobs.

A batch may hold several jobs' requests; requests that share size, steps and guidance run in
one pipeline call (each image with its own seeded generator, so batching never changes which
noise an image starts from).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

StepCallback = Callable[[int, int], None]  # (step done, total steps)


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance_scale: float
    seeds: tuple[int, ...]  # one per image

    @property
    def batch_key(self) -> tuple[int, int, int, float]:
        return (self.width, self.height, self.steps, self.guidance_scale)


class Generator:
    def __init__(self, pipe: Any, device: str):
        self.pipe = pipe
        self.device = device

    @classmethod
    def load(cls, model_id: str, *, device: str, dtype: Any) -> Generator:
        from diffusers import AutoPipelineForText2Image
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        pipe = AutoPipelineForText2Image.from_pretrained(model_id, dtype=dtype)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, device)

    def generate(
        self, requests: Sequence[GenerationRequest], *, on_step: StepCallback | None = None
    ) -> list[list[Image.Image]]:
        """Images for each request, in request order; compatible requests share one call."""
        groups: dict[tuple[int, int, int, float], list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            groups[req.batch_key].append(i)
        results: list[list[Image.Image]] = [[] for _ in requests]
        for indices in groups.values():
            batch = [requests[i] for i in indices]
            images = self._run(batch, on_step)
            offset = 0
            for i in indices:
                n = len(requests[i].seeds)
                results[i] = images[offset : offset + n]
                offset += n
        return results

    def _run(
        self, batch: Sequence[GenerationRequest], on_step: StepCallback | None
    ) -> list[Image.Image]:
        import torch

        first = batch[0]
        prompts = [r.prompt for r in batch for _ in r.seeds]
        negatives = [r.negative_prompt or "" for r in batch for _ in r.seeds]
        # CPU generators make a seed give the same starting noise on any device.
        generators = [torch.Generator("cpu").manual_seed(s) for r in batch for s in r.seeds]
        kwargs: dict[str, Any] = {}
        if on_step is not None:
            total = first.steps

            def _callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
                on_step(step + 1, total)
                return tensors

            kwargs["callback_on_step_end"] = _callback
        with torch.inference_mode():
            out = self.pipe(
                prompt=prompts,
                negative_prompt=negatives if any(negatives) else None,
                width=first.width,
                height=first.height,
                num_inference_steps=first.steps,
                guidance_scale=first.guidance_scale,
                generator=generators,
                output_type="pil",
                **kwargs,
            )
        return list(out.images)

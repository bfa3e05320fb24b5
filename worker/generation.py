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

from daikon.contract import SCHEDULERS

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
    scheduler: str | None = None  # a name from daikon.contract.SCHEDULERS; None = the model's

    @property
    def batch_key(self) -> tuple[int, int, int, float, str | None]:
        return (self.width, self.height, self.steps, self.guidance_scale, self.scheduler)


class UnsupportedScheduler(ValueError):
    pass


class Generator:
    def __init__(self, pipe: Any, device: str):
        self.pipe = pipe
        self.device = device
        self.base_scheduler = pipe.scheduler
        self._schedulers: dict[str | None, Any] = {None: pipe.scheduler}

    def supported_schedulers(self) -> list[str]:
        compatible = {c.__name__ for c in self.base_scheduler.compatibles}
        compatible.add(type(self.base_scheduler).__name__)
        return [name for name, cls in SCHEDULERS.items() if cls in compatible]

    def check(self, request: GenerationRequest) -> None:
        """Refuse what this pipeline cannot do, before any GPU work."""
        if request.scheduler is not None and request.scheduler not in self.supported_schedulers():
            raise UnsupportedScheduler(
                f"scheduler {request.scheduler!r} is not supported by this model; supported: "
                f"{', '.join(self.supported_schedulers())}"
            )

    def _scheduler(self, name: str | None) -> Any:
        if name not in self._schedulers:
            import diffusers

            cls = getattr(diffusers, SCHEDULERS[name or ""])
            self._schedulers[name] = cls.from_config(self.base_scheduler.config)
        return self._schedulers[name]

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
        groups: dict[tuple[int, int, int, float, str | None], list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            self.check(req)
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
        self.pipe.scheduler = self._scheduler(first.scheduler)
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

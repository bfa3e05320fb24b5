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


@dataclass(frozen=True)
class _Progress:
    """A call's step as the whole generation's: `offset` steps were done by earlier calls."""

    report: StepCallback
    offset: int
    total: int

    def __call__(self, step: int) -> None:
        self.report(self.offset + step, self.total)


class UnsupportedScheduler(ValueError):
    pass


class Generator:
    def __init__(self, pipe: Any, device: str, *, images_per_call: int = 4):
        self.pipe = pipe
        self.device = device
        self.images_per_call = images_per_call
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
    def load(cls, model_id: str, *, device: str, dtype: Any, images_per_call: int = 4) -> Generator:
        from diffusers import AutoPipelineForText2Image
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        pipe = AutoPipelineForText2Image.from_pretrained(model_id, dtype=dtype)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, device, images_per_call=images_per_call)

    def generate(
        self, requests: Sequence[GenerationRequest], *, on_step: StepCallback | None = None
    ) -> list[list[Image.Image]]:
        """Images for each request, in request order. Compatible requests share calls; every
        call denoises and decodes at most `images_per_call` images, so the work between two
        step callbacks (where a cancel or a lost lease stops the run) stays bounded whatever
        the candidate count. Progress counts the steps of every call: (done, total)."""
        groups: dict[tuple[int, int, int, float, str | None], list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            self.check(req)
            groups[req.batch_key].append(i)
        # Each call: one request's seeds, or several requests' at once, at most images_per_call.
        calls: list[list[tuple[int, int]]] = []  # (request index, seed)
        for indices in groups.values():
            pending = [(i, seed) for i in indices for seed in requests[i].seeds]
            calls += [pending[k : k + self.images_per_call]
                      for k in range(0, len(pending), self.images_per_call)]  # fmt: skip
        total = sum(requests[call[0][0]].steps for call in calls)
        results: list[list[Image.Image]] = [[] for _ in requests]
        done = 0
        for call in calls:
            first = requests[call[0][0]]
            progress = None if on_step is None else _Progress(on_step, done, total)
            images = self._run(first, [(requests[i], seed) for i, seed in call], progress)
            for (i, _), image in zip(call, images, strict=True):
                results[i].append(image)
            done += first.steps
        return results

    def _run(
        self,
        first: GenerationRequest,
        images: Sequence[tuple[GenerationRequest, int]],
        on_step: Callable[[int], None] | None,
    ) -> list[Image.Image]:
        """One pipeline call: one image per (request, seed), all sharing `first`'s batch key."""
        import torch

        prompts = [r.prompt for r, _ in images]
        negatives = [r.negative_prompt or "" for r, _ in images]
        # CPU generators make a seed give the same starting noise on any device.
        generators = [torch.Generator("cpu").manual_seed(seed) for _, seed in images]
        kwargs: dict[str, Any] = {}
        if on_step is not None:

            def _callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
                on_step(step + 1)
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

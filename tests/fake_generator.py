"""A generator with the real one's interface and no pipeline behind it, for the tests of the
executor's orchestration (claim, run, settle, batching, leases, recovery, cancel): what they
check is which jobs run together, with which seeds, and what each ends with, not the pixels a
diffusion model draws, so they need not pay for denoising.

It is `worker.generation.Generator` with only the pipeline call replaced: checking a request
against the capabilities, resolving the model's defaults and grouping compatible requests into
one call are the real code. Each image is a function of its prompt, seed and size alone (so a
job's images are the same in a batch and alone, byte for byte); a call reports every step to
`on_step` before its images exist, chunk by chunk as the real adapter does, so a cancel, a lost
lease or the time allowance stops it mid-run; an inpaint keeps its input's pixels where the
mask is black. The real tiny pipelines stay where the pipeline itself is under test
(tests/worker/test_generation.py, test_families.py, test_edit_families.py).
"""

from __future__ import annotations

import zlib

import numpy as np
from PIL import Image

from daikon.capabilities import ModelCapabilities, ModelOptions
from worker.families import Call, StepCallback
from worker.generation import Generator

# What tests/tiny_models.py's Stable-Diffusion-shaped pipeline says it can do (its worker
# derives the same from the loaded pipeline), so a job the fake runs is one the tiny model would.
TINY_SD = ModelCapabilities(
    model="default",
    family="stable-diffusion",
    pipeline_class="StableDiffusionPipeline",
    size_multiple=8,
    min_size=8,
    max_size=None,
    native_width=64,
    native_height=64,
    min_steps=1,
    max_steps=None,
    schedulers=[
        "ddim",
        "ddpm",
        "pndm",
        "lms",
        "euler",
        "euler_a",
        "heun",
        "dpm_2",
        "dpm_2_a",
        "dpmpp_2m",
        "dpmpp_2s",
        "deis",
        "unipc",
    ],
    guidance="cfg",
    supports_negative_prompt=True,
    negative_prompt_needs_guidance=True,
    supports_true_cfg=False,
    supports_progress=True,
    modes=["text", "image", "inpaint"],
    defaults={
        "width": 64,
        "height": 64,
        "steps": 50,
        "guidance_scale": 7.5,
        "true_cfg_scale": None,
        "scheduler": "ddim",
    },
    notes=[],
)


def draw(prompt: str, seed: int, width: int, height: int) -> Image.Image:
    """The fake's image for one seed: noise from (prompt, seed), the same wherever it is drawn."""
    rng = np.random.default_rng([zlib.crc32(prompt.encode()), seed])
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


class FakeGenerator(Generator):
    """The real Generator's checks, defaults and grouping, with images drawn by `draw`."""

    def __init__(
        self, capabilities: ModelCapabilities = TINY_SD, *, images_per_call: int | None = None
    ):
        # No pipeline, so none of Generator.__init__ applies: only what generate() reads.
        self.pipe = None
        self.device = "cpu"
        self.images_per_call = images_per_call
        self.options = ModelOptions()
        self._schedulers = {}
        self._edit_pipes = {}
        self.capabilities = capabilities

    def _run(self, call: Call, scheduler: str | None, on_step: StepCallback | None) -> list[object]:
        size = self.images_per_call or len(call.seeds)
        starts = range(0, len(call.seeds), size)
        # An edit runs about steps x strength steps, as the image-to-image pipelines do.
        steps = (
            call.steps if call.mode == "text" else max(1, int(call.steps * (call.strength or 1)))
        )
        images: list[Image.Image] = []
        for chunk, start in enumerate(starts):
            for step in range(1, steps + 1):
                if on_step is not None:
                    on_step(chunk * steps + step, len(starts) * steps)
            for prompt, seed in zip(
                call.prompts[start : start + size], call.seeds[start : start + size], strict=True
            ):
                images.append(draw(prompt, seed, call.width, call.height))
        if call.mode == "inpaint":
            assert call.image is not None and call.mask is not None
            images = [Image.composite(im, call.image, call.mask) for im in images]
        return list(images)

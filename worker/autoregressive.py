"""`TokenGenerator`: a loaded token model (worker/families/janus.py) behind the `Generator`'s
interface, so the executor, batching, ranking and limits treat both kinds of model alike.

DALL-E 1 drew hundreds of samples per caption and kept the best by CLIP. Here a job's
candidates are drawn `images_per_call` at a time (the model's limit: the rows one generate call
holds in memory), each from its own seed, so a job of 512 candidates runs as chunks that fit and
a cancel waits at most one token of one chunk. Jobs that share the sampling (guidance,
temperature, top-p, top-k tokens) share calls: rows are independent, so batching changes no
byte. Progress counts tokens over every chunk of the call.

Completion (DALL-E 1's "complete this picture from its top rows") is the token models' mode
inpaint, offered only where it is exact: the mask keeps whole rows of the token grid at the top
(daikon/capabilities.py's `check_mask`), the input's tokens for those rows are emitted as they
are and the rest drawn after them from each row's seed, and the input's own pixels are pasted
back over the kept rows, byte-identical (the VQ decoder alone would change them a little).

torch and transformers are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from PIL import Image

from daikon.capabilities import (
    ModelCapabilities,
    ModelDefaults,
    ModelOptions,
    UnsupportedParameters,
    top_band,
)
from worker.families import Candidate, ChunkSink, StepCallback, UnsupportedOption, to_pil
from worker.families.janus import Janus, TokenCall
from worker.generation import GenerationRequest


class TokenGenerator:
    """A token model, its family and its capabilities: checks and runs requests."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        family: Janus,
        model_name: str = "default",
        options: ModelOptions | None = None,
        images_per_call: int | None = None,
    ):
        self.model = model
        self.processor = processor
        self.family = family
        self.options = options or ModelOptions()
        family.check_options(self.options)
        self.images_per_call = images_per_call
        self.capabilities = self._derive(model_name)

    @classmethod
    def load(
        cls,
        model_id: str,
        *,
        model: str = "default",
        device: str,
        dtype: Any = None,
        options: ModelOptions | None = None,
        images_per_call: int | None = None,
    ) -> TokenGenerator:
        import torch

        options = options or ModelOptions()
        family = Janus()
        family.check_options(options)  # refuse before loading weights
        if options.dtype not in (None, "auto"):
            dtype = getattr(torch, options.dtype)
        loaded, processor = family.load(model_id, device=device, dtype=dtype)
        return cls(
            loaded,
            processor,
            family=family,
            model_name=model,
            options=options,
            images_per_call=images_per_call,
        )

    def modules(self) -> list[Any]:
        return [self.model]

    def warm_up(self) -> None:
        """Nothing to compile: `compile` is refused for token models."""

    def _derive(self, name: str) -> ModelCapabilities:
        family, model, options = self.family, self.model, self.options
        side = family.native_size(model)
        temperature, top_p = family.default_sampling(model)
        guidance = (
            options.default_guidance_scale
            if options.default_guidance_scale is not None
            else family.default_guidance(model)
        )
        caps = ModelCapabilities(
            model=name,
            kind="autoregressive",
            family=family.name,
            pipeline_class=family.model_class,
            image_tokens=family.image_tokens(model),
            codebook_size=family.codebook_size(model),
            sampling=family.sampling(),
            size_multiple=side,
            min_size=side,
            max_size=side,
            native_width=side,
            native_height=side,
            min_steps=1,
            max_steps=1,
            schedulers=[],
            guidance="cfg",
            supports_negative_prompt=False,
            supports_progress=True,
            modes=["text", "inpaint"],
            defaults=ModelDefaults(
                width=options.default_width or side,
                height=options.default_height or side,
                steps=1,
                guidance_scale=guidance,
                temperature=temperature,
                top_p=top_p,
            ),
            notes=family.notes(model),
        )
        caps = caps.model_copy(update={"notes": caps.notes + _mode_notes(caps)})
        bad = caps.check({})
        if bad:
            raise UnsupportedOption(f"{name}: its defaults are not servable: {bad[0].message}")
        return caps

    def check(self, request: GenerationRequest) -> None:
        """Refuse what this model cannot do, before any work (UnsupportedParameters): its
        parameters, and an edit's input size and mask as they are."""
        params, caps = request.params, self.capabilities
        if params.mode != "text":
            if request.image is None or (params.mode == "inpaint" and request.mask is None):
                raise ValueError(f"mode {params.mode} needs an image (and inpaint a mask)")
            width, height = request.image.size
            params = params.model_copy(update={"width": width, "height": height})
        caps.require(params)
        if params.mode == "inpaint" and request.mask is not None:
            mask = request.mask.convert("L")
            violations = caps.check_mask(mask.width, mask.height, mask.tobytes())
            if violations:
                raise UnsupportedParameters(violations)

    def _known(self, request: GenerationRequest) -> tuple[int, ...]:
        """A completion's kept tokens: the input's, for the whole token rows the mask keeps."""
        if request.params.mode != "inpaint":
            return ()
        assert request.image is not None and request.mask is not None  # check() said so
        mask = request.mask.convert("L")
        kept_px, _ = top_band(mask.width, mask.height, mask.tobytes())
        caps = self.capabilities
        assert caps.token_grid and caps.token_row_height
        count = kept_px // caps.token_row_height * caps.token_grid
        tokens = self.family.encode_image(self.model, self.processor, request.image.convert("RGB"))
        return tuple(tokens[:count])

    def _sampling(self, request: GenerationRequest) -> tuple[float, float, float, int | None]:
        params, d = request.params, self.capabilities.defaults
        return (
            params.guidance_scale if params.guidance_scale is not None else d.guidance_scale,
            params.temperature if params.temperature is not None else d.temperature or 1.0,
            params.top_p if params.top_p is not None else d.top_p or 1.0,
            params.top_k_tokens,
        )

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_step: StepCallback | None = None,
        tensors: bool = False,
        on_chunk: ChunkSink | None = None,
    ) -> list[list[Candidate]]:
        """Images for each request, in request order: requests with the same sampling share
        calls, `images_per_call` rows at a time; image i of a request is drawn from its seed i.
        A completion's images are PIL images, its kept rows the input's own pixels.
        With `on_chunk`, each chunk's images go there as they are drawn and are not kept:
        what is returned is only what was not handed over (nothing)."""
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for i, request in enumerate(requests):
            if not request.seeds:
                raise ValueError("a generation request needs at least one seed")
            self.check(request)
            groups[self._sampling(request)].append(i)
        known = [self._known(request) for request in requests]
        rows = sum(len(r.seeds) for r in requests)
        size = self.images_per_call or rows
        tokens = self.capabilities.image_tokens or 0
        # Every group's chunks in one count: progress is tokens drawn over tokens to draw.
        total = sum(-(-sum(len(requests[i].seeds) for i in g) // size) for g in groups.values())
        done = 0
        results: list[list[Candidate]] = [[] for _ in requests]
        for (guidance, temperature, top_p, top_k), indices in groups.items():
            prompts = [requests[i].params.prompt for i in indices for _ in requests[i].seeds]
            seeds = [s for i in indices for s in requests[i].seeds]
            rows_known = [known[i] for i in indices for _ in requests[i].seeds]
            rows_request = [requests[i] for i in indices for _ in requests[i].seeds]
            images: list[Candidate] = []
            for start in range(0, len(seeds), size):
                call = TokenCall(
                    prompts=prompts[start : start + size],
                    seeds=seeds[start : start + size],
                    guidance_scale=guidance,
                    temperature=temperature,
                    top_p=top_p,
                    top_k_tokens=top_k,
                    known=rows_known[start : start + size],
                )

                def on_token(step: int, before: int = done) -> None:
                    if on_step is not None:
                        on_step(before * tokens + step, total * tokens)

                drawn = self.family.run(self.model, self.processor, call, on_token, tensors=tensors)
                drawn = [_pasted(rows_request[start + k], d) for k, d in enumerate(drawn)]
                done += 1
                if on_chunk is not None:
                    on_chunk(_parts(requests, indices, start, drawn))
                else:
                    images += drawn
            offset = 0
            for i in indices:
                n = len(requests[i].seeds)
                results[i] = images[offset : offset + n]
                offset += n
        return results


def _parts(
    requests: Sequence[GenerationRequest], indices: list[int], start: int, images: list[Candidate]
) -> list[tuple[int, int, list[Candidate]]]:
    """A chunk's images (rows `start`... of a group of requests) split by request."""
    parts = []
    first = 0  # the group's row where request i begins
    for i in indices:
        n = len(requests[i].seeds)
        lo, hi = max(start, first), min(start + len(images), first + n)
        if lo < hi:
            parts.append((i, lo - first, images[lo - start : hi - start]))
        first += n
    return parts


def _pasted(request: GenerationRequest, drawn: Candidate) -> Candidate:
    """A completion's image with the input's own pixels where the mask is black (the kept
    rows), byte for byte; other modes' as drawn."""
    if request.params.mode != "inpaint":
        return drawn
    assert request.image is not None and request.mask is not None
    image, mask = request.image.convert("RGB"), request.mask.convert("L")
    return Image.composite(to_pil(drawn), image, mask)


def _mode_notes(caps: ModelCapabilities) -> list[str]:
    side, grid, row = caps.native_width, caps.token_grid, caps.token_row_height
    return [
        f"inpaint is completion (DALL-E 1's): the image must be {side}x{side} and the mask "
        f"black (keep) on the top rows and white (draw) from a row boundary to the bottom, "
        f"the boundary a multiple of {row} px (one row of its {grid}x{grid} image tokens); "
        "the kept rows' tokens are encoded from the image, the rest drawn after them from "
        "each candidate's seed, and the kept pixels come back unchanged; strength 1 and "
        "mask_blur 0 only",
        "no image-to-image (mode image): a token model draws each token once, with no noise "
        "level to redraw an image at",
    ]

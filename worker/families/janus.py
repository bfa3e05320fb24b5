"""Janus and Janus-Pro (transformers' `JanusForConditionalGeneration`): DALL-E 1's recipe.

A discrete VQ tokenizer cuts an image into a grid of codebook tokens; a decoder-only language
model reads the caption's tokens and then predicts the image's tokens one after another; the
VQ decoder turns the tokens back into pixels. Classifier-free guidance runs on the logits: each
step scores the prompt's rows and, batched with them, unconditional rows (the prompt with every
word padded out), and mixes them at `guidance_scale`.

transformers' own sampler draws every row from one global generator, so a candidate's tokens
depend on the batch it was drawn in. Daikon samples in a logits processor of its own instead
(`SeededSampler`, run with `do_sample=False` and `guidance_scale=1` so generate adds no guidance
or sampling of its own): guidance, temperature, top-k and top-p per row, each row drawn from its
own seeded generator. Candidate i of a job then has the same tokens alone, in a chunk or beside
other jobs. The same processor counts the tokens (progress) and may raise to stop the call
(cancel): generate takes no stopping criteria in image mode. Findings behind each choice:
docs/notes/janus.md.

torch and transformers are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from daikon.capabilities import SAMPLING_PARAMS, ModelOptions
from worker.families.base import Candidate, UnsupportedOption

# ModelOptions that tune a diffusion pipeline; a token model has nothing they could apply to.
_DIFFUSION_OPTIONS = (
    "default_steps",
    "default_true_cfg_scale",
    "default_scheduler",
    "max_steps",
    "guidance",
    "prior_steps",
    "prior_guidance_scale",
    "cpu_offload",
    "vae_tiling",
    "vae_slicing",
    "channels_last",
    "compile",
)
DEFAULT_GUIDANCE = 5.0  # Janus' own generation_config default


@dataclass(frozen=True)
class TokenCall:
    """One generate call: a row per image, and the sampling they share."""

    prompts: list[str]
    seeds: list[int]
    guidance_scale: float
    temperature: float
    top_p: float
    top_k_tokens: int | None
    # Per row, the image tokens it must start with (a completion's kept rows); empty: none.
    known: list[tuple[int, ...]] | None = None


def _seeded_sampler_class() -> type:
    from transformers import LogitsProcessor

    class SeededSampler(LogitsProcessor):  # type: ignore[misc]
        """Guidance, temperature, top-k and top-p, then one token per row from that row's
        own generator; returns the chosen tokens as one-hot scores, which generate's greedy
        step keeps. Receives [conditional; unconditional] rows: generate adds no CFG of its
        own at guidance_scale 1. A row's known tokens (a completion's kept rows) are emitted
        as they are for its first steps; its generator draws only the tokens after them."""

        def __init__(self, call: TokenCall, device: Any, on_token: Callable[[int], None]):
            import torch

            self.call = call
            self.generators = [torch.Generator(device=device).manual_seed(s) for s in call.seeds]
            self.on_token = on_token
            self.known = call.known or [()] * len(call.seeds)
            self.step = 0

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            import torch

            call, rows = self.call, len(self.generators)
            cond, uncond = scores[:rows].float(), scores[rows:].float()
            logits = uncond + call.guidance_scale * (cond - uncond)
            logits = logits / call.temperature
            if call.top_k_tokens is not None and call.top_k_tokens < logits.shape[-1]:
                kth = torch.topk(logits, call.top_k_tokens, dim=-1).values[..., -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if call.top_p < 1.0:
                ordered, index = torch.sort(logits, descending=True, dim=-1)
                probs = ordered.softmax(-1)
                drop = (probs.cumsum(-1) - probs) > call.top_p  # the most likely always stays
                logits = logits.masked_fill(drop.scatter(-1, index, drop), float("-inf"))
            probs = logits.softmax(-1)
            step = self.step
            tokens = torch.cat(
                [
                    torch.tensor([known[step]], device=probs.device)
                    if step < len(known)
                    else torch.multinomial(probs[r], 1, generator=g)
                    for r, (g, known) in enumerate(zip(self.generators, self.known, strict=True))
                ]
            )
            out = torch.full_like(scores[:rows], float("-inf"))
            out.scatter_(1, tokens[:, None].to(out.device), 0.0)
            self.step += 1
            self.on_token(self.step)  # may raise: the call stops within this token
            return out

    return SeededSampler


class Janus:
    """How a Janus model is loaded, described and run. Stateless: methods take the model."""

    name = "janus"
    model_class = "JanusForConditionalGeneration"

    def load(self, model_id: str, *, device: str, dtype: Any) -> tuple[Any, Any]:
        from transformers import AutoProcessor, JanusForConditionalGeneration

        model = JanusForConditionalGeneration.from_pretrained(model_id, dtype=dtype)
        model = model.to(device).eval()  # type: ignore[arg-type]
        processor = AutoProcessor.from_pretrained(model_id)
        return model, processor

    def check_options(self, options: ModelOptions) -> None:
        asked = [o for o in _DIFFUSION_OPTIONS if getattr(options, o) not in (None, False)]
        if asked:
            raise UnsupportedOption(
                f"{', '.join(asked)}: a token model ({self.name}) has no denoising steps, "
                "scheduler, VAE or denoiser for them to apply to"
            )

    # capabilities ---------------------------------------------------------------------------
    def image_tokens(self, model: Any) -> int:
        return int(model.config.vision_config.num_image_tokens)

    def native_size(self, model: Any) -> int:
        vq = model.config.vq_config
        return int(vq.num_patches) * 2 ** (len(vq.channel_multiplier) - 1)

    def codebook_size(self, model: Any) -> int:
        return int(model.config.vq_config.num_embeddings)

    def default_guidance(self, model: Any) -> float:
        value = getattr(model.generation_config, "guidance_scale", None)
        return float(value) if value is not None else DEFAULT_GUIDANCE

    def default_sampling(self, model: Any) -> tuple[float, float]:
        """(temperature, top_p) a job that names none gets: the model's generation config's
        (1.0 each where it says nothing). Its top_k is not taken: transformers fills in 50
        for every model, and Janus' own sampler draws from all tokens."""
        gc = model.generation_config
        temperature = getattr(gc, "temperature", None)
        top_p = getattr(gc, "top_p", None)
        return (
            float(temperature) if temperature else 1.0,
            float(top_p) if top_p else 1.0,
        )

    def sampling(self) -> list[str]:
        return list(SAMPLING_PARAMS)

    def notes(self, model: Any) -> list[str]:
        tokens, side = self.image_tokens(model), self.native_size(model)
        return [
            f"draws {tokens} image tokens one after another and decodes them to {side}x{side} "
            "px; steps, schedulers, other sizes and negative prompts do not exist for it",
            "guidance_scale is classifier-free guidance on each token's logits (the prompt "
            "and its padded-out copy batched together); 1 = none",
            "candidate i is drawn from seed + i by its own generator: the same image alone, "
            "in a chunk or batched with other jobs",
        ]

    # running --------------------------------------------------------------------------------
    def encode_image(self, model: Any, processor: Any, image: Any) -> list[int]:
        """A native-size image's tokens, row by row, as the VQ encoder quantises it: pixels
        normalised by the processor's image processor, as the model was trained, but not
        resized (its size is the understanding tower's, which may differ from the native)."""
        import torch

        pixels = processor.image_processor(images=[image], do_resize=False, return_tensors="pt")[
            "pixel_values"
        ]
        vq = model.model.vqmodel
        with torch.inference_mode():
            encoded = vq.encode(pixels.to(device=model.device, dtype=vq.dtype))
        tokens = [int(t) for t in encoded.image_tokens.reshape(-1).tolist()]
        if len(tokens) != self.image_tokens(model):
            raise RuntimeError(
                f"the VQ encoder cut a {image.width}x{image.height} image into {len(tokens)} "
                f"tokens, not the {self.image_tokens(model)} the model draws"
            )
        return tokens

    def encode_prompts(self, processor: Any, prompts: Sequence[str]) -> dict[str, Any]:
        """The processor's image-mode inputs; a chat model's prompts go through its template
        first (Janus-Pro's `<|User|>: ...<|Assistant|>:`), as its model card does."""
        texts = list(prompts)
        if getattr(processor, "chat_template", None):
            texts = [
                processor.apply_chat_template(
                    [{"role": "user", "content": [{"type": "text", "text": p}]}],
                    add_generation_prompt=True,
                )
                for p in prompts
            ]
        inputs: dict[str, Any] = processor(
            text=texts, generation_mode="image", padding=True, return_tensors="pt"
        )
        return inputs

    def run(
        self,
        model: Any,
        processor: Any,
        call: TokenCall,
        on_token: Callable[[int], None],
        *,
        tensors: bool,
    ) -> list[Candidate]:
        import torch
        from transformers import LogitsProcessorList

        device = model.device
        inputs = {k: v.to(device) for k, v in self.encode_prompts(processor, call.prompts).items()}
        sampler = _seeded_sampler_class()(call, "cpu" if device.type == "cpu" else device, on_token)
        with torch.inference_mode():
            tokens = model.generate(
                **inputs,
                generation_mode="image",
                do_sample=False,
                guidance_scale=1.0,
                # The sampler above applies the model's sampling settings; generate's own
                # copies stay neutral (and unwarned) under do_sample=False.
                temperature=1.0,
                top_p=1.0,
                # A new list each call: generate appends to the one it is given.
                logits_processor=LogitsProcessorList([sampler]),
            )
            pixels = model.decode_image_tokens(tokens)  # (N, H, W, 3), about [-1, 1]
        return self.to_candidates(processor, pixels, tensors=tensors)

    def to_candidates(self, processor: Any, pixels: Any, *, tensors: bool) -> list[Candidate]:
        """(N, H, W, 3) in the processor's normalisation -> (3, H, W) in [0, 1] on the model's
        device, or PIL images (by the same rounding as diffusers' `to_pil`)."""
        import torch

        from worker.families.base import to_pil

        ip = processor.image_processor
        mean = torch.tensor(ip.image_mean, device=pixels.device)
        std = torch.tensor(ip.image_std, device=pixels.device)
        images = (pixels.float() * std + mean).clamp(0, 1).permute(0, 3, 1, 2)
        out = list(images)
        return out if tensors else [to_pil(image) for image in out]

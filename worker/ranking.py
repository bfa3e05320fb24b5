"""CLIP ranking: score each candidate image against its prompt and order best first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image


def _embeds(output: Any) -> Any:
    """transformers 5 may return an output object where 4.x returned the projected tensor."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    for name in ("text_embeds", "image_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected CLIP feature output: {type(output).__name__}")


class ClipRanker:
    def __init__(self, model: Any, processor: Any, device: str):
        self.model = model
        self.processor = processor
        self.device = device

    @classmethod
    def load(cls, model_id: str, *, device: str, dtype: Any) -> ClipRanker:
        from transformers import CLIPModel, CLIPProcessor

        # transformers types `.to` through a decorator mypy misreads as needing a model.
        model = CLIPModel.from_pretrained(model_id, dtype=dtype).to(device).eval()  # type: ignore[arg-type]
        processor = CLIPProcessor.from_pretrained(model_id)
        return cls(model, processor, device)

    def score(self, prompt: str, images: Sequence[Image.Image]) -> list[float]:
        """100 x cosine similarity between the prompt and each image (CLIPScore's scale)."""
        return self.score_groups([(prompt, images)])[0]

    def score_groups(
        self, groups: Sequence[tuple[str, Sequence[Image.Image]]]
    ) -> list[list[float]]:
        """Each group's images scored against its own prompt, in one text and one image
        forward for all groups (a batch of jobs ranks at the cost of one call). The same
        scores as group by group, up to batched kernels' float rounding."""
        import torch

        prompts = list(dict.fromkeys(prompt for prompt, _ in groups))  # each once, in order
        images = [image for _, group in groups for image in group]
        # Truncate to what this CLIP's position table holds (77 for OpenAI's, 16 for shapes).
        max_length = self.processor.tokenizer.model_max_length
        text = self.processor(
            text=prompts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
        )
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():
            t = _embeds(
                self.model.get_text_features(
                    input_ids=text["input_ids"].to(self.device),
                    attention_mask=text["attention_mask"].to(self.device),
                )
            )
            v = _embeds(self.model.get_image_features(pixel_values=pixels.to(self.device, dtype)))
            t = torch.nn.functional.normalize(t.float(), dim=-1)
            v = torch.nn.functional.normalize(v.float(), dim=-1)
            similarity = (v @ t.T * 100.0).cpu()  # images x prompts
        out: list[list[float]] = []
        first = 0
        for prompt, group in groups:
            column = prompts.index(prompt)
            out.append([float(similarity[first + i, column]) for i in range(len(group))])
            first += len(group)
        return out


def rank(scores: Sequence[float]) -> list[int]:
    """Indices best first; ties keep generation order so ranking is deterministic."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))

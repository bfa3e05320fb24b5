"""CLIP ranking: score each candidate image against its prompt and order best first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    import torch

    from worker.families import Candidate


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

    def score(self, prompt: str, images: Sequence[Candidate]) -> list[float]:
        """100 x cosine similarity between the prompt and each image (CLIPScore's scale)."""
        return self.score_groups([(prompt, images)])[0]

    def score_groups(self, groups: Sequence[tuple[str, Sequence[Candidate]]]) -> list[list[float]]:
        """Each group's images scored against its own prompt, in one text and one image
        forward for all groups (a batch of jobs ranks at the cost of one call). The same
        scores as group by group, up to batched kernels' float rounding. Images given as
        tensors are prepared where they are (`_tensor_pixels`), PIL images by the processor."""
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
        if all(isinstance(image, Image.Image) for image in images):
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        else:
            pixels = self._tensor_pixels(images)
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

    def _tensor_pixels(self, images: Sequence[Candidate]) -> torch.Tensor:
        """CLIP's input from (3, H, W) tensors in [0, 1] on their own device: quantised to the
        8 bits a stored PNG has, resized (shortest edge, bicubic with antialiasing), centre
        cropped and normalised as the image processor's config says. Only PIL's resampling
        differs from the processor's path (scores agree within about 0.5 on CLIPScore's scale)."""
        import torch
        import torch.nn.functional as F

        from worker.families import to_pil

        p = self.processor.image_processor
        device = next(i.device for i in images if not isinstance(i, Image.Image))
        x = torch.stack(
            [_pil_tensor(i).to(device) if isinstance(i, Image.Image) else i.float() for i in images]
        )
        x = (x.clamp(0, 1) * 255).round() / 255
        h, w = x.shape[-2:]
        if p.do_resize:
            short = _field(p.size, "shortest_edge")
            if short:
                size = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
            else:
                size = (_field(p.size, "height"), _field(p.size, "width"))
            if size != (h, w):
                x = F.interpolate(
                    x, size=size, mode="bicubic", align_corners=False, antialias=True
                ).clamp(0, 1)
        if p.do_center_crop:
            ch, cw = _field(p.crop_size, "height"), _field(p.crop_size, "width")
            h, w = x.shape[-2:]
            if ch > h or cw > w:  # the processor pads here; let it
                return self.processor(images=[to_pil(i) for i in images], return_tensors="pt")[
                    "pixel_values"
                ]
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top : top + ch, left : left + cw]
        if p.do_normalize:
            mean = torch.tensor(p.image_mean, device=x.device)[:, None, None]
            std = torch.tensor(p.image_std, device=x.device)[:, None, None]
            x = (x - mean) / std
        return x


def _field(size: Any, name: str) -> Any:
    """A size entry from a SizeDict (transformers 5) or a dict (4.x)."""
    return size.get(name) if isinstance(size, dict) else getattr(size, name, None)


def _pil_tensor(image: Image.Image) -> torch.Tensor:
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(
        2, 0, 1
    )


def rank(scores: Sequence[float]) -> list[int]:
    """Indices best first; ties keep generation order so ranking is deterministic."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


class Shortlist:
    """One job's best `keep` candidates so far, as chunks arrive: DALL-E 1's many samples
    ranked without holding them all (the rest are dropped once scored). The same order as
    `rank` over every score at once: best first, ties by generation order."""

    def __init__(self, keep: int):
        self.keep = keep
        self._best: list[tuple[float, int, Candidate]] = []  # (score, index, image)

    def add(self, first: int, images: Sequence[Candidate], scores: Sequence[float]) -> None:
        entries = self._best + [
            (s, first + i, im) for i, (im, s) in enumerate(zip(images, scores, strict=True))
        ]
        entries.sort(key=lambda e: (-e[0], e[1]))
        self._best = entries[: self.keep]

    @property
    def images(self) -> list[Candidate]:
        return [e[2] for e in self._best]

    @property
    def scores(self) -> list[float]:
        return [e[0] for e in self._best]

    @property
    def indices(self) -> list[int]:
        """Each kept image's index among its job's candidates (its seed is seed + index)."""
        return [e[1] for e in self._best]

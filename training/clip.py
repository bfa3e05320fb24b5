"""Stage 2: a small CLIP trained contrastively on the shapes world, for ranking candidates.

Random batches rarely contain the captions that matter most for ranking: the same objects with
colours swapped, or the relation turned around. So every image also meets one such "confuser"
caption as an extra negative, which is what teaches the towers attribute binding and relations
instead of a bag of words. Captions that describe the same scene (duplicates in a batch,
"A above B" vs "B below A") are all counted as right answers.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPVisionConfig

from shapeworld.captions import Spec, varied_caption
from shapeworld.prompts import scene_type
from shapeworld.world import COLOURS, OPPOSITE, SHAPES, SIZE
from training.common import Progress, lr_at
from training.data import batch

STEPS = 1500
BATCH = 128
LR = 1e-3
WIDTH = 64


def text_config(tokenizer: Any, layers: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_attention_heads=4,
        num_hidden_layers=layers,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_clip(tokenizer: Any) -> Any:  # transformers types .to() oddly for mypy
    vision = CLIPVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_attention_heads=4,
        num_hidden_layers=4,
        image_size=SIZE,
        patch_size=4,
    )
    config = CLIPConfig(
        text_config=text_config(tokenizer, layers=3).to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=WIDTH,
    )
    return CLIPModel(config)


def image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(
        size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}
    )


def key(spec: Spec) -> tuple[object, ...]:
    """Equal for captions that describe the same scene."""
    return (scene_type(spec),) if spec.relation else spec.objects


def confuser(spec: Spec, rng: random.Random) -> Spec:
    """A caption for a different scene that shares most of the words."""
    if spec.relation is None:
        ((c, s),) = spec.objects
        options = [Spec(((c2, s),)) for c2 in COLOURS if c2 != c]
        options += [Spec(((c, s2),)) for s2 in SHAPES if s2 != s]
        return rng.choice(options)
    (c0, s0), (c1, s1) = spec.objects
    rel = spec.relation
    perpendicular = {
        "above": "left of",
        "below": "right of",
        "left of": "below",
        "right of": "above",
    }
    options = [
        Spec(((c1, s0), (c0, s1)), rel),  # colours bound to the other shapes
        Spec(((c0, s0), (c1, s1)), OPPOSITE[rel]),  # the other way round
        Spec(((c0, s0), (c1, s1)), perpendicular[rel]),
        Spec(((c0, s1), (c1, s0)), rel),
        Spec(((rng.choice([c for c in COLOURS if c not in (c0, c1)]), s0), (c1, s1)), rel),
        Spec(((c0, s0), (c1, rng.choice([s for s in SHAPES if s != s1]))), rel),
    ]
    return rng.choice([o for o in options if key(o) != key(spec)])


def _augment(pixels01: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Soft edges and a little noise, as generated images have, so ranking sees them as seen."""
    n = pixels01.shape[0]
    blurred = F.avg_pool2d(pixels01, 3, stride=1, padding=1, count_include_pad=False)
    amount = torch.rand(n, 1, 1, 1, generator=gen) * 0.6
    noise = torch.randn(pixels01.shape, generator=gen) * torch.rand(n, 1, 1, 1, generator=gen)
    return (pixels01.lerp(blurred, amount) + 0.06 * noise).clamp(0, 1)


def _soft_cross_entropy(logits: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    target = same.float() / same.float().sum(dim=1, keepdim=True)
    return -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()


def train_clip(
    tokenizer: Any,
    rng: random.Random,
    device: str,
    steps: int = STEPS,
    *,
    start: Any = None,
    view: Callable[[torch.Tensor], torch.Tensor] | None = None,
    lr: float = LR,
    warmup: int = 100,
    name: str = "clip",
) -> Any:
    """From scratch, or on from `start`'s weights (a fine-tune: a lower `lr`). `view` maps a
    batch of rendered pixels in [-1, 1] to what the ranker should learn to read, for example
    a generator's own decoding of them."""
    model = (start if start is not None else build_clip(tokenizer)).to(device).train()
    model.requires_grad_(True)
    processor = image_processor()
    mean = torch.tensor(processor.image_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std, device=device).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    progress = Progress(name, steps, every=100)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup=warmup)
        specs, captions, pixels = batch(rng, BATCH)
        if view is not None:
            pixels = view(pixels)
        negatives = [confuser(s, rng) for s in specs]
        texts = captions + [varied_caption(s, rng) for s in negatives]
        keys = [key(s) for s in specs + negatives]
        same = torch.tensor([[keys[i] == k for k in keys] for i in range(BATCH)], device=device)
        tokens = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")
        pixels01 = _augment((pixels + 1) / 2, gen).to(device)
        image = model.visual_projection(model.vision_model((pixels01 - mean) / std).pooler_output)
        text = model.text_projection(
            model.text_model(
                input_ids=tokens["input_ids"].to(device),
                attention_mask=tokens["attention_mask"].to(device),
            ).pooler_output
        )
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * image @ text.T  # (B, 2B)
        loss = (
            _soft_cross_entropy(logits, same)
            + _soft_cross_entropy(logits[:, :BATCH].T, same[:, :BATCH].T)
        ) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hit = same.gather(1, logits.argmax(dim=1, keepdim=True)).float().mean()
        progress(step, loss=loss.item(), pick=hit.item())
    return model.eval().requires_grad_(False)

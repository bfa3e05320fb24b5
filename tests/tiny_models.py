"""Build tiny, randomly initialised models offline: a Stable-Diffusion-shaped pipeline and a CLIP.

They exercise the exact `from_pretrained` path that real weights use (UNet, VAE, CLIP text
encoder + tokenizer, scheduler; CLIP vision + text + processor) but are a few MB and need no
download. Weights are random, so images are noise: these prove plumbing, not quality.

    python -m tests.tiny_models --out .daikon/models
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SEED = 0
SD_DIR = "tiny-sd"
CLIP_DIR = "tiny-clip"
BUILD_MARKER = "daikon-tiny.json"
BUILD_VERSION = 1


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's byte-to-printable-character table (bytes that print stay themselves)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _tokenizer():  # type: ignore[no-untyped-def]
    """A byte-level BPE vocabulary with no merges: every byte is a token (plus `</w>` forms)."""
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={tok: i for i, tok in enumerate(tokens)}, merges=[], model_max_length=77
    )


def _text_config(tokenizer, hidden: int = 32):  # type: ignore[no-untyped-def]
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        layer_norm_eps=1e-5,
    )


def build_tiny_sd(out: Path) -> Path:
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    tokenizer = _tokenizer()
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=16,
    )
    torch.manual_seed(SEED)
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
    )
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    target = out / SD_DIR
    pipe.save_pretrained(target, safe_serialization=True)  # type: ignore[attr-defined]  # mixin
    (target / BUILD_MARKER).write_text(json.dumps({"version": BUILD_VERSION, "seed": SEED}))
    return target


def build_tiny_clip(out: Path) -> Path:
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPVisionConfig,
    )

    tokenizer = _tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=32,
        patch_size=4,
    )
    config = CLIPConfig(
        text_config=_text_config(tokenizer).to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=32,
    )
    torch.manual_seed(SEED)
    model = CLIPModel(config)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    target = out / CLIP_DIR
    model.save_pretrained(target, safe_serialization=True)
    processor.save_pretrained(target)
    (target / BUILD_MARKER).write_text(json.dumps({"version": BUILD_VERSION, "seed": SEED}))
    return target


def is_built(folder: Path) -> bool:
    marker = folder / BUILD_MARKER
    if not marker.is_file():
        return False
    return json.loads(marker.read_text()).get("version") == BUILD_VERSION


def ensure_tiny_models(out: Path) -> tuple[Path, Path]:
    """Build whichever of the two is missing or stale; return their folders."""
    sd, clip = out / SD_DIR, out / CLIP_DIR
    if not is_built(sd):
        build_tiny_sd(out)
    if not is_built(clip):
        build_tiny_clip(out)
    return sd, clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for tiny-sd/, tiny-clip/")
    args = parser.parse_args()
    sd, clip = ensure_tiny_models(args.out)
    print(f"tiny pipeline: {sd}\ntiny CLIP:     {clip}")


if __name__ == "__main__":
    main()

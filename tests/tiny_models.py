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


JANUS_DIR = "tiny-janus"
JANUS_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "red",
    "blue",
    "green",
    "yellow",
    "circle",
    "square",
    "triangle",
    "above",
    "below",
    "left",
    "right",
]
JANUS_SPECIALS = (
    "<pad>",
    "<bos>",
    "<eos>",
    "<unk>",
    "<image_placeholder>",
    "<begin_of_image>",
    "<end_of_image>",
)


def _janus_tokenizer():  # type: ignore[no-untyped-def]
    """A word-level tokenizer with Janus' special tokens, prepending <bos> as Llama's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*JANUS_SPECIALS, *JANUS_WORDS])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={
            "image_token": "<image_placeholder>",
            "boi_token": "<begin_of_image>",
            "eoi_token": "<end_of_image>",
        },
        padding_side="left",
    )


def build_tiny_janus(out: Path, *, grid: int = 4, levels: int = 4) -> Path:
    """A random JanusForConditionalGeneration of grid x grid image tokens, drawing
    grid * 2**(levels-1) px images (16 tokens, 32 px by default), with its processor. The
    image projections match the text hidden size, as image generation needs."""
    import torch
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusImageProcessorPil,
        JanusProcessor,
    )

    tok = _janus_tokenizer()
    hidden, patch = 32, 4
    config = JanusConfig(
        text_config=dict(
            model_type="llama",
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=64 + grid * grid,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        ),
        vision_config=dict(
            image_size=grid * patch,
            patch_size=patch,
            num_image_tokens=grid * grid,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            mlp_ratio=2,
            projection_dim=hidden,
        ),
        vq_config=dict(
            embed_dim=8,
            num_embeddings=64,
            latent_channels=8,
            base_channels=32,
            channel_multiplier=[1] * levels,
            num_res_blocks=1,
            projection_dim=hidden,
            image_token_embed_dim=hidden,
        ),
        image_token_id=tok.convert_tokens_to_ids("<image_placeholder>"),
    )
    torch.manual_seed(SEED)
    model = JanusForConditionalGeneration(config).eval()
    # Sharpen the token head: a random model's logits are nearly uniform, so sampling
    # parameters would change little that a test could see.
    with torch.no_grad():
        for p in model.model.generation_head.parameters():
            p.mul_(30.0)
    gc = model.generation_config
    gc.generation_kwargs = {"boi_token_id": tok.convert_tokens_to_ids("<begin_of_image>")}
    gc.guidance_scale = 5.0
    gc.pad_token_id = tok.pad_token_id
    gc._from_model_config = False  # else generation_kwargs is dropped on reload
    side = grid * patch
    processor = JanusProcessor(
        image_processor=JanusImageProcessorPil(
            size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),
        tokenizer=tok,
        num_image_tokens=grid * grid,
    )
    target = out / JANUS_DIR
    model.save_pretrained(target)
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

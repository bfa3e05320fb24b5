"""`make train-models`: train the shapes pipeline and CLIP from scratch into --out.

python -m training --out models            # the committed models: 42 min on 2 CPU cores
python -m training --out /tmp/m --scale 0.1  # a quick smoke run of every stage
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPProcessor

from training import clip, diffusion, vae
from training.common import RECORD, device, seeded, training_record
from training.tokenizer import build_tokenizer

SEED = 20261125
PIPELINE_DIR = "shapes-sd"
CLIP_DIR = "shapes-clip"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the steps to run")
    args = parser.parse_args()
    dev = device()
    steps = {
        "vae": max(1, round(vae.STEPS * args.scale)),
        "clip": max(1, round(clip.STEPS * args.scale)),
        "diffusion": max(1, round(diffusion.STEPS * args.scale)),
    }
    print(f"training on {dev} with {torch.get_num_threads()} threads: {steps}", flush=True)
    tokenizer = build_tokenizer()
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    autoencoder = vae.train_vae(seeded(SEED + 1), dev, steps["vae"])
    seconds["vae"] = time.perf_counter() - started

    started = time.perf_counter()
    ranker = clip.train_clip(tokenizer, seeded(SEED + 2), dev, steps["clip"])
    seconds["clip"] = time.perf_counter() - started

    started = time.perf_counter()
    unet, text_encoder = diffusion.train_diffusion(
        autoencoder, tokenizer, seeded(SEED + 3), dev, steps["diffusion"]
    )
    seconds["diffusion"] = time.perf_counter() - started

    pipe = StableDiffusionPipeline(
        vae=autoencoder.to("cpu"),
        text_encoder=text_encoder.to("cpu"),
        tokenizer=tokenizer,
        unet=unet.to("cpu"),
        scheduler=diffusion.inference_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    record = training_record(SEED, steps, seconds, dev)
    pipeline_dir, clip_dir = args.out / PIPELINE_DIR, args.out / CLIP_DIR
    pipe.save_pretrained(pipeline_dir, safe_serialization=True)  # type: ignore[attr-defined]
    ranker.to("cpu").save_pretrained(clip_dir, safe_serialization=True)
    CLIPProcessor(image_processor=clip.image_processor(), tokenizer=tokenizer).save_pretrained(
        clip_dir
    )
    for folder in (pipeline_dir, clip_dir):
        (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {pipeline_dir} and {clip_dir}: {json.dumps(record['seconds'])}", flush=True)


if __name__ == "__main__":
    main()

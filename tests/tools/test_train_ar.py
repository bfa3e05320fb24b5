"""shapes-ar, the tiny Janus token model: `make train-ar` writes a folder that plain
transformers loads and samples like any Janus checkpoint, and the committed one draws."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, JanusForConditionalGeneration, JanusProcessor

from shapeworld.captions import caption_for, spec_of
from shapeworld.world import place, render, sample_scene
from tests.stack import ROOT
from training.autoregressive import DIR, LM_STEPS, RANKER_DIR, RANKER_STEPS, VQ_STEPS, sample
from worker.ranking import ClipRanker, rank

COMMITTED = ROOT / "models" / DIR
SCALE = 0.004  # a few steps of each stage


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)  # tiny ops on a shared 2-core box: more threads thrash


def load(folder: Path) -> tuple[JanusForConditionalGeneration, JanusProcessor]:
    model = JanusForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    assert isinstance(processor, JanusProcessor)
    return model, processor


@pytest.mark.slow
def test_a_shortened_training_run_writes_a_folder_transformers_samples(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.autoregressive",
            "--out",
            str(tmp_path),
            "--scale",
            str(SCALE),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / DIR
    record = json.loads((folder / "daikon-training.json").read_text())
    assert record["steps"] == {
        "vq": round(VQ_STEPS * SCALE),
        "lm": round(LM_STEPS * SCALE),
        "ranker": round(RANKER_STEPS * SCALE),
    }
    model, processor = load(folder)
    assert model.generation_config.to_dict()["generation_kwargs"]["boi_token_id"] == (
        processor.tokenizer.convert_tokens_to_ids("<begin_of_image>")
    )
    image = sample(model, processor, "a red circle above a blue square", seed=1, guidance=4.0)
    assert image.size == (32, 32) and image.mode == "RGB"
    # its ranker, tuned from the committed shapes CLIP, loads as the worker loads rankers
    ranker = ClipRanker.load(str(tmp_path / RANKER_DIR), device="cpu", dtype=torch.float32)
    [score] = ranker.score("a red circle above a blue square", [image])
    assert math.isfinite(score) and -100 <= score <= 100


def test_the_committed_model_draws_a_red_circle_the_same_twice_for_one_seed() -> None:
    model, processor = load(COMMITTED)
    for weights in COMMITTED.glob("*"):
        assert weights.stat().st_size <= 20 * 2**20, weights
    inputs = processor(
        text=["a red circle"], generation_mode="image", padding=True, return_tensors="pt"
    )
    drawn = []
    for _ in range(2):
        torch.manual_seed(7)
        tokens = model.generate(**inputs, generation_mode="image", do_sample=True)
        with torch.inference_mode():
            drawn.append(model.decode_image_tokens(tokens).numpy())
    assert drawn[0].shape == (1, 32, 32, 3)
    assert np.array_equal(drawn[0], drawn[1])
    assert sample(model, processor, "a red circle", seed=7, guidance=4.0).size == (32, 32)


def test_the_committed_ranker_still_reads_binding_and_relation_in_decodings_and_renders() -> None:
    """shapes-ar-clip was tuned on the tokenizer's decodings; it must keep what shapes-clip's
    confuser captions taught it: the true scene beats one with colours swapped, the relation
    turned or a shape changed, seen through the tokenizer and as rendered. (What the tuning
    buys on the model's own samples is measured in docs/quality.md.)"""
    from training.autoregressive import encode, to_images
    from training.clip import confuser
    from training.data import images_to_tensor

    model, _ = load(COMMITTED)
    tuned = ClipRanker.load(str(ROOT / "models" / RANKER_DIR), device="cpu", dtype=torch.float32)
    rng = random.Random(99)
    right = {"decoded": 0, "rendered": 0}
    n = 60
    for _ in range(n):
        scene = sample_scene(rng, 2)
        spec = spec_of(scene)
        wrong = confuser(spec, rng)
        decoy = place(wrong.objects, wrong.relation, rng)
        caption = caption_for(spec)
        decoded = to_images(model, encode(model, images_to_tensor([decoy, scene])))
        right["decoded"] += rank(tuned.score(caption, decoded))[0] == 1
        right["rendered"] += rank(tuned.score(caption, [render(decoy), render(scene)]))[0] == 1
    assert min(right.values()) >= 0.85 * n, right

"""`make train-models` works from a fresh checkout (a shortened run of every stage), writes
folders the worker loads, and the same seed trains the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.stack import ROOT
from training.common import seeded
from training.vae import train_vae
from worker.generation import GenerationRequest, Generator
from worker.ranking import ClipRanker

pytestmark = pytest.mark.slow  # trains: every stage, shortened


def test_a_shortened_training_run_writes_models_the_worker_loads(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "training", "--out", str(tmp_path), "--scale", "0.003"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "shapes-sd" / "daikon-training.json").read_text())
    assert record["steps"] == {"vae": 3, "clip": 4, "diffusion": 14}
    generator = Generator.load(str(tmp_path / "shapes-sd"), device="cpu", dtype=torch.float32)
    [images] = generator.generate(
        [
            GenerationRequest.of(
                "a red circle", (1,), width=32, height=32, steps=2, guidance_scale=3.0
            )
        ]
    )
    assert images[0].size == (32, 32)
    ranker = ClipRanker.load(str(tmp_path / "shapes-clip"), device="cpu", dtype=torch.float32)
    assert len(ranker.score("a red circle above a blue square", images * 2)) == 2


def test_the_same_seed_trains_the_same_weights() -> None:
    first = train_vae(seeded(5), "cpu", steps=2).state_dict()
    second = train_vae(seeded(5), "cpu", steps=2).state_dict()
    other = train_vae(seeded(6), "cpu", steps=2).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)

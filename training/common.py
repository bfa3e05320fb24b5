"""What every stage shares: the device, seeding, a progress line, an EMA of weights."""

from __future__ import annotations

import copy
import math
import platform
import random
import time
from typing import Any

import torch

RECORD = "daikon-training.json"  # how a model folder was trained, beside its weights


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def training_record(
    seed: int, steps: dict[str, int], seconds: dict[str, float], dev: str
) -> dict[str, Any]:
    """What a model folder's RECORD says of how it was trained: seed, steps, time, machine."""
    return {
        "seed": seed,
        "steps": steps,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "device": dev if dev == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def seeded(seed: int) -> random.Random:
    torch.manual_seed(seed)
    return random.Random(seed)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine down to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class Ema:
    """Exponential moving average of a model's weights; samples come from the average."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model: Any = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for avg, live in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(live.detach(), 1 - decay)


class Progress:
    def __init__(self, stage: str, total: int, every: int):
        self.stage, self.total, self.every = stage, total, every
        self.started = time.perf_counter()

    def __call__(self, step: int, **values: Any) -> None:
        if (step + 1) % self.every and step + 1 != self.total:
            return
        shown = " ".join(f"{k}={v:.4f}" for k, v in values.items())
        elapsed = time.perf_counter() - self.started
        print(f"[{self.stage}] step {step + 1}/{self.total} {shown} {elapsed:.0f}s", flush=True)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

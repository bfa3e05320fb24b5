"""The per-process model runtime: loaded once (after any fork) and kept warm between jobs."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from daikon.settings import Settings
from worker.generation import Generator
from worker.ranking import ClipRanker

log = logging.getLogger(__name__)


@dataclass
class ModelRuntime:
    generator: Generator
    ranker: ClipRanker
    device: str
    load_seconds: float


class ModelLoadError(Exception):
    pass


_lock = threading.Lock()
_runtime: ModelRuntime | None = None


def load_runtime(settings: Settings) -> ModelRuntime:
    import torch

    from worker.devices import resolve_device, resolve_dtype

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    started = time.perf_counter()
    try:
        generator = Generator.load(settings.model_id, device=device, dtype=dtype)
    except Exception as e:
        raise ModelLoadError(f"cannot load pipeline {settings.model_id!r}: {e}") from e
    try:
        ranker = ClipRanker.load(settings.clip_model_id, device=device, dtype=dtype)
    except Exception as e:
        raise ModelLoadError(f"cannot load CLIP model {settings.clip_model_id!r}: {e}") from e
    seconds = time.perf_counter() - started
    log.info("models loaded on %s (%s) in %.1fs", device, dtype, seconds)
    return ModelRuntime(generator, ranker, device, seconds)


def get_runtime(settings: Settings) -> ModelRuntime:
    """The process's runtime; a failed load is retried on the next call, not cached."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = load_runtime(settings)
        return _runtime

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
_runtimes: dict[str, ModelRuntime] = {}


def load_runtime(settings: Settings, model: str) -> ModelRuntime:
    import torch

    from worker.devices import resolve_device, resolve_dtype

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    spec = settings.model_specs.get(model)
    if spec is None:
        raise ModelLoadError(f"model {model!r} is not configured on this worker")
    clip_id = settings.clip_for(model)
    started = time.perf_counter()
    try:
        generator = Generator.load(spec.pipeline, device=device, dtype=dtype)
    except Exception as e:
        raise ModelLoadError(f"cannot load pipeline {spec.pipeline!r}: {e}") from e
    try:
        ranker = ClipRanker.load(clip_id, device=device, dtype=dtype)
    except Exception as e:
        raise ModelLoadError(f"cannot load CLIP model {clip_id!r}: {e}") from e
    seconds = time.perf_counter() - started
    log.info("model %s loaded on %s (%s) in %.1fs", model, device, dtype, seconds)
    return ModelRuntime(generator, ranker, device, seconds)


def get_runtime(settings: Settings, model: str) -> ModelRuntime:
    """The process's runtime for a model, loaded once and kept warm; a failed load is
    retried on the next call, not cached."""
    with _lock:
        if model not in _runtimes:
            _runtimes[model] = load_runtime(settings, model)
        return _runtimes[model]

"""The per-process model runtime: loaded once (after any fork) and kept warm between jobs."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from daikon import heartbeats, limits, live, served_models
from daikon.limits import ModelLimits
from daikon.served_models import ServedModel
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
    # For this model on this device (daikon/limits.py); None = the device's defaults.
    limits: ModelLimits = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.limits is None:
            self.limits = limits.resolve(self.device)


class ModelLoadError(Exception):
    pass


_lock = threading.Lock()
_runtimes: dict[str, ModelRuntime] = {}


def load_runtime(settings: Settings, model: str) -> ModelRuntime:
    import torch

    from worker.devices import resolve_device, resolve_dtype

    if settings.worker.torch_threads:
        torch.set_num_threads(settings.worker.torch_threads)
    device = resolve_device(settings.worker.device)
    dtype = resolve_dtype(settings.worker.dtype, device)
    spec = settings.model_specs.get(model)
    if spec is None:
        raise ModelLoadError(f"model {model!r} is not configured on this worker")
    clip_id = settings.clip_for(model)
    model_limits = limits.resolve(device, spec.limits)
    started = time.perf_counter()
    try:
        generator = Generator.load(
            spec.pipeline, model=model, device=device, dtype=dtype, options=spec.options,
            images_per_call=model_limits.images_per_call,
        )  # fmt: skip
    except Exception as e:
        raise ModelLoadError(f"cannot load pipeline {spec.pipeline!r}: {e}") from e
    try:
        ranker = ClipRanker.load(clip_id, device=device, dtype=dtype)
    except Exception as e:
        raise ModelLoadError(f"cannot load CLIP model {clip_id!r}: {e}") from e
    seconds = time.perf_counter() - started
    log.info("model %s loaded on %s (%s) in %.1fs", model, device, dtype, seconds)
    _publish(settings, ServedModel(model=model, device=device, limits=model_limits,
                                   capabilities=generator.capabilities,
                                   loaded_at=datetime.now(UTC)))  # fmt: skip
    return ModelRuntime(generator, ranker, device, seconds, model_limits)


def _publish(settings: Settings, info: ServedModel) -> None:
    """Tell the API what this model can do and allows here; a Redis outage only delays that
    (the worker's own checks refuse meanwhile)."""
    try:
        served_models.publish(live.client(settings.services.redis_url), settings, info)
    except Exception as e:
        log.warning("could not publish the limits of model %s: %s", info.model, e)


# The Celery node this process belongs to (set in its main process before the pool forks), so
# the heartbeat can tell which models this worker failed to load.
node_name: str | None = None


def get_runtime(settings: Settings, model: str) -> ModelRuntime:
    """The process's runtime for a model, loaded once and kept warm; a failed load is
    retried on the next call, not cached. Either outcome is recorded for the heartbeat."""
    with _lock:
        if model not in _runtimes:
            try:
                _runtimes[model] = load_runtime(settings, model)
            except ModelLoadError as e:
                _record_load(settings, model, str(e))
                raise
            _record_load(settings, model, None)
        return _runtimes[model]


def _record_load(settings: Settings, model: str, error: str | None) -> None:
    if node_name is None:
        return
    try:
        heartbeats.record_load(live.client(settings.services.redis_url), settings, model=model,
                               hostname=node_name, error=error)  # fmt: skip
    except Exception as e:
        log.warning("could not record the load of model %s: %s", model, e)

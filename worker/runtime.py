"""The per-process model runtime: loaded once (after any fork) and kept warm between jobs."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from daikon import limits
from daikon.limits import ModelLimits
from server import heartbeats, live, served_models
from server.served_models import ServedModel
from server.settings import Settings
from worker.autoregressive import TokenGenerator
from worker.generation import Generator
from worker.ranking import ClipRanker

log = logging.getLogger(__name__)


# A loaded model of either kind: both check and run GenerationRequests alike.
ImageGenerator = Generator | TokenGenerator

# transformers model types served as token models (worker/families/janus.py).
TOKEN_MODEL_TYPES = ("janus",)


def model_kind(model_id: str) -> str:
    """ "diffusion" for a diffusers pipeline (a folder or Hub repo with model_index.json),
    "autoregressive" for a transformers token model Daikon serves; a transformers model of
    another type is refused by name."""
    import json
    from pathlib import Path

    folder = Path(model_id)
    if folder.is_dir():
        if (folder / "model_index.json").exists() or not (folder / "config.json").exists():
            return "diffusion"
        config = json.loads((folder / "config.json").read_text())
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            hf_hub_download(model_id, "model_index.json")
            return "diffusion"
        except EntryNotFoundError:
            config = json.loads(Path(hf_hub_download(model_id, "config.json")).read_text())
        except Exception:
            return "diffusion"  # unreachable or unknown: the pipeline loader says why
    model_type = config.get("model_type")
    if model_type in TOKEN_MODEL_TYPES:
        return "autoregressive"
    raise ModelLoadError(
        f"{model_id!r} is a transformers {model_type!r} model, not a diffusers pipeline or a "
        f"token model Daikon serves ({', '.join(TOKEN_MODEL_TYPES)})"
    )


def load_generator(model_id: str, **kwargs: Any) -> ImageGenerator:
    """The model's generator, of its kind (`Generator.load`'s arguments)."""
    if model_kind(model_id) == "autoregressive":
        return TokenGenerator.load(model_id, **kwargs)
    return Generator.load(model_id, **kwargs)


@dataclass
class ModelRuntime:
    generator: ImageGenerator
    ranker: ClipRanker
    device: str
    load_seconds: float
    # For this model on this device (daikon/limits.py); None = the device's defaults.
    limits: ModelLimits = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.limits is None:
            self.limits = limits.resolve(self.device)

    @property
    def weight_bytes(self) -> int:
        """The bytes of every parameter and buffer it holds: the pipeline's components and
        its CLIP (what unloading it frees)."""
        modules = [*self.generator.modules(), self.ranker.model]
        seen: set[int] = set()
        total = 0
        for module in modules:
            for tensor in (*module.parameters(), *module.buffers()):
                if id(tensor) not in seen:  # a module shared by two components counts once
                    seen.add(id(tensor))
                    total += tensor.numel() * tensor.element_size()
        return total


class ModelLoadError(Exception):
    pass


_lock = threading.Lock()
# The process's loaded models, least recently used first; within `Worker.model_memory_gb`.
_runtimes: OrderedDict[str, ModelRuntime] = OrderedDict()
# Each model's weight bytes when it was last loaded: room is made before it loads again.
_sizes: dict[str, int] = {}


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
        generator = load_generator(
            spec.pipeline,
            model=model,
            device=device,
            dtype=dtype,
            options=spec.options,
            images_per_call=model_limits.images_per_call,
        )
    except Exception as e:
        raise ModelLoadError(f"cannot load pipeline {spec.pipeline!r}: {e}") from e
    try:
        ranker = ClipRanker.load(clip_id, device=device, dtype=dtype)
    except Exception as e:
        raise ModelLoadError(f"cannot load CLIP model {clip_id!r}: {e}") from e
    seconds = time.perf_counter() - started
    log.info("model %s loaded on %s (%s) in %.1fs", model, device, dtype, seconds)
    _publish(
        settings,
        ServedModel(
            model=model,
            device=device,
            limits=model_limits,
            capabilities=generator.capabilities,
            loaded_at=datetime.now(UTC),
        ),
    )
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
    retried on the next call, not cached. Either outcome is recorded for the heartbeat.

    With a memory budget (`Worker.model_memory_gb`) the least recently used models are
    unloaded to keep the loaded ones within it: before a load when the model's size is known
    from an earlier load, after it otherwise; a load that runs out of device memory is retried
    once with every other model unloaded. The model being asked for is never unloaded, so one
    model larger than the budget still runs, alone."""
    with _lock:
        if model in _runtimes:
            _runtimes.move_to_end(model)
            return _runtimes[model]
        budget = int(settings.worker.model_memory_gb * 1e9)
        if budget and model in _sizes:
            _make_room(budget, keep=model, extra=_sizes[model])
        try:
            try:
                runtime = load_runtime(settings, model)
            except ModelLoadError as e:
                if not (_out_of_memory(e) and _runtimes):
                    raise
                log.warning("model %s did not fit; unloading every other model", model)
                _make_room(0, keep=model)
                runtime = load_runtime(settings, model)
        except ModelLoadError as e:
            _record_load(settings, model, str(e))
            raise
        _record_load(settings, model, None)
        _runtimes[model] = runtime
        _sizes[model] = runtime.weight_bytes
        if budget:
            _make_room(budget, keep=model)
        return runtime


def loaded_models() -> list[str]:
    """The models this process holds, least recently used first."""
    with _lock:
        return list(_runtimes)


def _make_room(budget: int, *, keep: str, extra: int = 0) -> None:
    """Unload least recently used models (never `keep`) until the loaded ones and `extra`
    bytes fit in `budget`."""
    while sum(_sizes[m] for m in _runtimes) + extra > budget:
        victim = next((m for m in _runtimes if m != keep), None)
        if victim is None:
            return
        _unload(victim)


def _unload(model: str) -> None:
    runtime = _runtimes.pop(model)
    device = runtime.device
    del runtime
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    log.info("model %s unloaded to stay within the worker's model memory", model)


def _out_of_memory(error: BaseException) -> bool:
    import torch

    cause = error.__cause__
    return isinstance(cause, torch.OutOfMemoryError) or "out of memory" in str(cause).lower()


def _record_load(settings: Settings, model: str, error: str | None) -> None:
    if node_name is None:
        return
    try:
        heartbeats.record_load(
            live.client(settings.services.redis_url),
            settings,
            model=model,
            hostname=node_name,
            error=error,
        )
    except Exception as e:
        log.warning("could not record the load of model %s: %s", model, e)

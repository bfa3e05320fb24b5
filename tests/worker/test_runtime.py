"""The worker process's loaded models: kept warm, and within a memory budget the least recently
used one is unloaded to make room (worker/runtime.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.settings import Settings
from worker import runtime


@pytest.fixture(autouse=True)
def empty_process() -> Iterator[None]:
    runtime._runtimes.clear()
    runtime._sizes.clear()
    yield
    runtime._runtimes.clear()
    runtime._sizes.clear()


def settings(tmp: Path, tiny: tuple[Path, Path], gb: float) -> Settings:
    sd, clip = (str(p) for p in tiny)
    return Settings(
        data_dir=tmp,
        torch_threads=1,
        model_memory_gb=gb,
        models={name: {"pipeline": sd, "clip": clip} for name in ("a", "b", "c")},
    )


def one_model_gb(tmp: Path, tiny: tuple[Path, Path]) -> float:
    return runtime.load_runtime(settings(tmp, tiny, 0), "a").weight_bytes / 1e9


def test_weight_bytes_count_the_pipeline_and_its_clip(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    loaded = runtime.load_runtime(settings(tmp_path, tiny_models, 0), "a")
    unet = sum(p.numel() * p.element_size() for p in loaded.generator.pipe.unet.parameters())
    clip = sum(p.numel() * p.element_size() for p in loaded.ranker.model.parameters())
    assert loaded.weight_bytes > unet + clip > 0


def test_without_a_budget_every_model_stays_loaded(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    s = settings(tmp_path, tiny_models, 0)
    first = runtime.get_runtime(s, "a")
    runtime.get_runtime(s, "b")
    runtime.get_runtime(s, "c")
    assert runtime.loaded_models() == ["a", "b", "c"]
    assert runtime.get_runtime(s, "a") is first  # warm: not loaded again
    assert runtime.loaded_models() == ["b", "c", "a"]


def test_the_least_recently_used_model_makes_room(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    s = settings(tmp_path, tiny_models, 2.5 * one_model_gb(tmp_path, tiny_models))  # room for 2
    a = runtime.get_runtime(s, "a")
    runtime.get_runtime(s, "b")
    assert runtime.get_runtime(s, "a") is a  # a is now the most recently used
    runtime.get_runtime(s, "c")
    assert runtime.loaded_models() == ["a", "c"]  # b, the least recently used, went
    again = runtime.get_runtime(s, "b")  # loaded again, a goes
    assert runtime.loaded_models() == ["c", "b"]
    assert again.generator.pipe is not None
    assert runtime.get_runtime(s, "a") is not a  # a fresh load


def test_a_model_larger_than_the_budget_still_runs_alone(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    s = settings(tmp_path, tiny_models, 0.5 * one_model_gb(tmp_path, tiny_models))
    runtime.get_runtime(s, "a")
    assert runtime.loaded_models() == ["a"]
    b = runtime.get_runtime(s, "b")
    assert runtime.loaded_models() == ["b"]
    (images,) = b.generator.generate([_request()])
    assert [im.size for im in images] == [(32, 32)]


def _request():  # type: ignore[no-untyped-def]
    from worker.generation import GenerationRequest

    return GenerationRequest.of(
        "a red circle", (1,), width=32, height=32, steps=2, guidance_scale=7.5
    )

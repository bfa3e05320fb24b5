"""The job executor against a real database and store, with runtimes that fail on purpose."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from daikon.contract import JobStatus
from daikon.storage import LocalStore, StorageError
from db import jobs
from db.models import Job, JobImage
from db.session import make_session_factory, session_scope
from tests.factories import make_job
from worker.executor import JobExecutor, Outcome
from worker.generation import GenerationRequest, Generator
from worker.ranking import ClipRanker
from worker.runtime import ModelLoadError, ModelRuntime


@pytest.fixture(scope="module")
def runtime(tiny_models: tuple[Path, Path]) -> ModelRuntime:
    return ModelRuntime(
        generator=Generator.load(str(tiny_models[0]), device="cpu", dtype=torch.float32),
        ranker=ClipRanker.load(str(tiny_models[1]), device="cpu", dtype=torch.float32),
        device="cpu",
        load_seconds=0.0,
    )


@pytest.fixture
def sessions(db_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(db_engine)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "images")


def new_job(sessions: sessionmaker[Session], **params: Any) -> str:
    with session_scope(sessions) as s:
        return make_job(s, **params).id


def load(sessions: sessionmaker[Session], job_id: str) -> Job:
    with session_scope(sessions) as s:
        job = jobs.get(session=s, job_id=job_id)
        job.images  # noqa: B018 - load before the session closes
        return job


def executor(sessions: sessionmaker[Session], store: Any, runtime: Any) -> JobExecutor:
    return JobExecutor(
        sessions=sessions, store=store, runtime=lambda _model: runtime, worker_name="t"
    )


class ExplodingGenerator:
    def check(self, request: GenerationRequest) -> None:
        pass

    def generate(self, requests: Sequence[GenerationRequest], **_: Any) -> list[list[Image.Image]]:
        raise RuntimeError("CUDA out of memory (on purpose)")


class BrokenStore(LocalStore):
    def put(self, key: str, data: bytes, content_type: str) -> None:
        raise StorageError("bucket unreachable (on purpose)")


def test_a_job_runs_to_ranked_pngs(sessions, store, runtime) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job(sessions, candidates=4, top_k=3, seed=100, width=64, height=32)
    assert executor(sessions, store, runtime).run(job_id) is Outcome.succeeded
    job = load(sessions, job_id)
    assert job.status is JobStatus.succeeded and job.seed == 100
    assert [i.rank for i in job.images] == [1, 2, 3]
    scores = [i.clip_score for i in job.images]
    assert scores == sorted(scores, reverse=True)
    assert {i.seed for i in job.images} <= {100, 101, 102, 103}
    for img in job.images:
        data = store.get(img.storage_key)
        assert len(data) == img.byte_size
        assert Image.open(io.BytesIO(data)).size == (64, 32)
    for key in ("queue_seconds", "inference_seconds", "ranking_seconds", "upload_seconds"):
        assert job.metrics[key] >= 0


def test_a_job_without_a_seed_records_the_one_it_used(sessions, store, runtime) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job(sessions, seed=None, candidates=2, top_k=2)
    executor(sessions, store, runtime).run(job_id)
    job = load(sessions, job_id)
    assert job.seed is not None
    assert sorted(i.seed for i in job.images) == [job.seed, job.seed + 1]


@pytest.mark.parametrize(
    ("runtime_factory", "store_cls", "code", "fragment"),
    [
        (lambda rt: ModelRuntime(ExplodingGenerator(), rt.ranker, "cpu", 0.0),  # type: ignore[arg-type]
         LocalStore, "generation_failed", "RuntimeError: CUDA out of memory (on purpose)"),
        (lambda rt: rt, BrokenStore, "upload_failed", "bucket unreachable (on purpose)"),
    ],
)  # fmt: skip
def test_a_failing_stage_fails_the_job_with_its_reason(  # type: ignore[no-untyped-def]
    sessions, tmp_path, runtime, runtime_factory, store_cls, code, fragment
) -> None:
    job_id = new_job(sessions)
    ex = executor(sessions, store_cls(tmp_path / "s"), runtime_factory(runtime))
    assert ex.run(job_id) is Outcome.failed
    job = load(sessions, job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, code)
    assert fragment in (job.error_message or "")
    assert job.images == [] and job.finished_at is not None


def test_a_model_that_cannot_load_fails_the_job(sessions, store) -> None:  # type: ignore[no-untyped-def]
    def no_model(_model: str) -> ModelRuntime:
        raise ModelLoadError("cannot load pipeline '/nowhere': not a folder")

    job_id = new_job(sessions)
    ex = JobExecutor(sessions=sessions, store=store, runtime=no_model, worker_name="t")
    assert ex.run(job_id) is Outcome.failed
    job = load(sessions, job_id)
    assert (job.error_code, job.error_message) == (
        "model_load_failed", "cannot load pipeline '/nowhere': not a folder",
    )  # fmt: skip


def test_a_job_claimed_elsewhere_is_left_alone(sessions, store, runtime) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job(sessions)
    with session_scope(sessions) as s:
        jobs.claim(session=s, job_id=job_id, worker="other-worker")
    assert executor(sessions, store, runtime).run(job_id) is Outcome.skipped
    job = load(sessions, job_id)
    assert (job.status, job.worker, job.attempts) == (JobStatus.running, "other-worker", 1)


def test_a_job_that_leaves_running_mid_flight_keeps_no_images(  # type: ignore[no-untyped-def]
    sessions, store, runtime
) -> None:
    job_id = new_job(sessions, candidates=2, top_k=2)

    class CancelingGenerator:
        def check(self, request: GenerationRequest) -> None:
            pass

        def generate(self, requests: Sequence[GenerationRequest], **kw: Any) -> Any:
            with session_scope(sessions) as s:  # another actor finishes the job meanwhile
                jobs.fail(session=s, job_id=job_id, code="canceled_elsewhere", message="",
                          metrics={})  # fmt: skip
            return runtime.generator.generate(requests, **kw)

    rt = ModelRuntime(CancelingGenerator(), runtime.ranker, "cpu", 0.0)  # type: ignore[arg-type]
    assert executor(sessions, store, rt).run(job_id) is Outcome.superseded
    job = load(sessions, job_id)
    assert job.error_code == "canceled_elsewhere" and job.images == []
    assert not list(store.root.rglob("*.png"))  # uploads of a superseded run are removed
    with session_scope(sessions) as s:
        assert s.scalars(select(JobImage).where(JobImage.job_id == job_id)).all() == []

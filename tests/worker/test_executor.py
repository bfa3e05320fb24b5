"""The job executor against a real database and store, with runtimes that fail on purpose.
The generator is the fake one (tests/fake_generator.py): what is under test is the claim, run
and settle, not the pipeline's pixels; the real tiny pipeline runs where they are."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from daikon.contract import JobStatus
from db import jobs
from db.models import Job, JobImage, utcnow
from db.session import make_session_factory, session_scope
from server.settings import Settings
from server.storage import LocalStore, StorageError
from tests.factories import job_params, make_job
from tests.fake_generator import TINY_SD, FakeGenerator
from worker.executor import JobBusy, JobExecutor, Outcome
from worker.generation import GenerationRequest, Generator
from worker.ranking import ClipRanker
from worker.runtime import ModelLoadError, ModelRuntime, load_generator


@pytest.fixture(scope="module")
def runtime(tiny_models: tuple[Path, Path]) -> ModelRuntime:
    return ModelRuntime(
        generator=FakeGenerator(),
        ranker=ClipRanker.load(str(tiny_models[1]), device="cpu", dtype=torch.float32),
        device="cpu",
        load_seconds=0.0,
    )


@pytest.fixture(scope="module")
def tiny(tiny_models: tuple[Path, Path], runtime: ModelRuntime) -> ModelRuntime:
    """The real tiny pipeline, for what the pipeline itself hands the executor."""
    generator = Generator.load(str(tiny_models[0]), device="cpu", dtype=torch.float32)
    return ModelRuntime(generator, runtime.ranker, "cpu", 0.0)


@pytest.fixture
def sessions(db_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(db_engine)


@pytest.fixture(autouse=True)
def own_queues(sessions: sessionmaker[Session]) -> None:
    """A message starts the head of its job's queue (db/jobs.py acquire), so jobs that other
    tests left queued in the shared database would run first: each test here starts with
    none queued."""
    with session_scope(sessions) as s:
        s.execute(
            update(Job)
            .where(Job.status == JobStatus.queued)
            .values(status=JobStatus.canceled, finished_at=utcnow())
        )


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


CAPABILITIES = TINY_SD  # what the failing generators below claim to be able to do


class Fake:
    """A generator that fails on purpose; it can do what the tiny model can."""

    @property
    def capabilities(self) -> Any:
        return CAPABILITIES

    def check(self, request: GenerationRequest) -> None:
        pass


class ExplodingGenerator(Fake):
    def generate(self, requests: Sequence[GenerationRequest], **_: Any) -> list[list[Image.Image]]:
        raise RuntimeError("CUDA out of memory (on purpose)")


class BrokenStore(LocalStore):
    def put(self, key: str, data: bytes, content_type: str) -> None:
        raise StorageError("bucket unreachable (on purpose)")


class StoppedGenerator(Fake):
    """As when Celery cancels the task (SystemExit in the pool process), e.g. on broker loss."""

    def generate(self, requests: Sequence[GenerationRequest], **_: Any) -> list[list[Image.Image]]:
        raise SystemExit(-15)


def test_a_job_whose_process_is_stopped_is_left_for_redelivery_not_failed(  # type: ignore[no-untyped-def]
    sessions, store, runtime
) -> None:
    job_id = new_job(sessions)
    stopped = ModelRuntime(StoppedGenerator(), runtime.ranker, "cpu", 0.0)  # type: ignore[arg-type]
    with pytest.raises(SystemExit):
        executor(sessions, store, stopped).run(job_id)
    job = load(sessions, job_id)
    assert job.status is JobStatus.running and job.error_code is None
    # Once its lease lapses the redelivered message (or the sweeper's) runs it to the end.
    with session_scope(sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=job.started_at))
    other = JobExecutor(
        sessions=sessions, store=store, runtime=lambda _m: runtime, worker_name="t2"
    )
    assert other.run(job_id) is Outcome.succeeded
    assert load(sessions, job_id).attempts == 2


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


def test_stored_pngs_are_the_pipelines_own_pil_output_byte_for_byte(  # type: ignore[no-untyped-def]
    sessions, store, tiny
) -> None:
    # The executor ranks tensors and encodes only the kept ones; a client's PNG must be what
    # the pipeline's own "pil" output gives for that seed.
    job_id = new_job(sessions, candidates=3, top_k=2, seed=300, width=32, height=64)
    assert executor(sessions, store, tiny).run(job_id) is Outcome.succeeded
    job = load(sessions, job_id)
    (direct,) = tiny.generator.generate(
        [
            GenerationRequest.of(
                prompt="a red circle",
                negative_prompt=None,
                width=32,
                height=64,
                steps=4,
                guidance_scale=7.5,
                seeds=(300, 301, 302),
            )
        ]
    )
    assert len(job.images) == 2
    for img in job.images:
        stored = Image.open(io.BytesIO(store.get(img.storage_key)))
        assert stored.size == (32, 64) and (img.width, img.height) == (32, 64)
        assert stored.tobytes() == direct[img.seed - 300].tobytes()


def test_a_job_without_a_seed_records_the_one_it_used(sessions, store, runtime) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job(sessions, seed=None, candidates=2, top_k=2)
    executor(sessions, store, runtime).run(job_id)
    job = load(sessions, job_id)
    assert job.seed is not None
    assert sorted(i.seed for i in job.images) == [job.seed, job.seed + 1]


@pytest.mark.parametrize(
    ("runtime_factory", "store_cls", "code", "fragment"),
    [
        (
            lambda rt: ModelRuntime(ExplodingGenerator(), rt.ranker, "cpu", 0.0),  # type: ignore[arg-type]
            LocalStore,
            "generation_failed",
            "RuntimeError: CUDA out of memory (on purpose)",
        ),
        (lambda rt: rt, BrokenStore, "upload_failed", "bucket unreachable (on purpose)"),
    ],
)
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


class CountingGenerator(ExplodingGenerator):
    calls = 0

    def generate(self, requests: Sequence[GenerationRequest], **_: Any) -> list[list[Image.Image]]:
        CountingGenerator.calls += 1
        return super().generate(requests)


def test_a_job_too_large_for_its_model_fails_before_any_gpu_work(  # type: ignore[no-untyped-def]
    sessions, store, runtime
) -> None:
    """A deployment whose workers never published the model's limits let the API accept it:
    the worker refuses it, with the code and message the API would have answered."""
    job_id = new_job(sessions, width=1024, height=1024, candidates=16, steps=150)
    counting = ModelRuntime(CountingGenerator(), runtime.ranker, "cpu", 0.0)  # type: ignore[arg-type]
    assert executor(sessions, store, counting).run(job_id) is Outcome.failed
    job = load(sessions, job_id)
    assert (job.error_code, job.error_message) == (
        "job_too_large",
        "this job costs 2517 megapixel-steps (1024x1024 px x 16 candidates x 150 steps); model "
        "'default' on cpu allows at most 4: ask for a smaller size, fewer candidates or fewer "
        "steps",
    )
    assert CountingGenerator.calls == 0


def test_a_job_past_the_time_its_cost_allows_fails_at_the_next_step(  # type: ignore[no-untyped-def]
    sessions, store, runtime
) -> None:
    job_id = new_job(sessions, steps=20)
    ex = executor(sessions, store, runtime)
    ex.time_limit_seconds = 0.0  # the deployment's ceiling caps every allowance
    assert ex.run(job_id) is Outcome.failed
    job = load(sessions, job_id)
    assert job.error_code == "time_limit_exceeded" and job.images == []
    assert (job.error_message or "").startswith("the job ran past its time limit of 0 s")


def test_a_model_that_cannot_load_fails_the_job(sessions, store) -> None:  # type: ignore[no-untyped-def]
    def no_model(_model: str) -> ModelRuntime:
        raise ModelLoadError("cannot load pipeline '/nowhere': not a folder")

    job_id = new_job(sessions)
    ex = JobExecutor(sessions=sessions, store=store, runtime=no_model, worker_name="t")
    assert ex.run(job_id) is Outcome.failed
    job = load(sessions, job_id)
    assert (job.error_code, job.error_message) == (
        "model_load_failed",
        "cannot load pipeline '/nowhere': not a folder",
    )


def test_a_job_running_on_a_live_worker_is_deferred_never_run_twice(  # type: ignore[no-untyped-def]
    sessions, store, runtime
) -> None:
    job_id = new_job(sessions)
    with session_scope(sessions) as s:
        jobs.claim(session=s, job_id=job_id, worker="elsewhere:123", lease_seconds=60)
    with pytest.raises(JobBusy) as busy:
        executor(sessions, store, runtime).run(job_id)
    assert 55 < busy.value.retry_in <= 60  # come back when that lease would have lapsed
    job = load(sessions, job_id)
    assert (job.status, job.worker, job.attempts) == (JobStatus.running, "elsewhere:123", 1)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("owner", ["dead-here", "lapsed-elsewhere"])
def test_a_job_whose_worker_died_is_taken_over(sessions, store, runtime, owner) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job(sessions)
    with session_scope(sessions) as s:
        if owner == "dead-here":  # a killed pool process on this host: taken over at once
            jobs.claim(session=s, job_id=job_id, worker=f"{socket.gethostname()}:{dead_pid()}")
        else:  # another host: taken over once its lease has lapsed
            jobs.claim(session=s, job_id=job_id, worker="elsewhere:1", lease_seconds=-1)
    assert executor(sessions, store, runtime).run(job_id) is Outcome.succeeded
    job = load(sessions, job_id)
    assert (job.status, job.worker, job.attempts) == (JobStatus.succeeded, "t", 2)
    assert len(job.images) == 1


def test_a_job_that_keeps_killing_its_worker_fails_after_max_attempts(  # type: ignore[no-untyped-def]
    sessions, store, runtime
) -> None:
    job_id = new_job(sessions)
    for _ in range(3):  # three workers died on it, one after another
        with session_scope(sessions) as s:
            assert (
                jobs.claim(
                    session=s,
                    job_id=job_id,
                    worker=f"{socket.gethostname()}:{dead_pid()}",
                    lease_seconds=-1,
                )
                is not None
            )
    assert executor(sessions, store, runtime).run(job_id) is Outcome.failed
    job = load(sessions, job_id)
    assert (job.status, job.error_code, job.attempts) == (JobStatus.failed, "worker_lost", 3)
    assert "stopped 3 times" in (job.error_message or "")
    assert "gave up after 3 attempts" in (job.error_message or "")


def test_a_worker_that_lost_its_lease_writes_nothing(sessions, store, runtime) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job(sessions, candidates=2, top_k=2)

    class TakenOver(Fake):
        def generate(self, requests: Sequence[GenerationRequest], **kw: Any) -> Any:
            images = runtime.generator.generate(requests)
            with session_scope(sessions) as s:  # meanwhile another worker took the job over
                s.execute(update(Job).where(Job.id == job_id).values(lease_owner="thief:1"))
            return images

    rt = ModelRuntime(TakenOver(), runtime.ranker, "cpu", 0.0)  # type: ignore[arg-type]
    assert executor(sessions, store, rt).run(job_id) is Outcome.superseded
    job = load(sessions, job_id)
    assert job.status is JobStatus.running and job.images == []  # left to its new owner
    assert not list(store.root.rglob("*.png"))


class FlakyStore(LocalStore):
    """Refuses the first `failures` uploads, as a storage outage would."""

    def __init__(self, root: Path, failures: int):
        super().__init__(root)
        self.failures = failures
        self.calls = 0

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise StorageError("connection refused (on purpose)")
        super().put(key, data, content_type)


def test_uploads_retry_through_a_storage_outage(sessions, tmp_path, runtime) -> None:  # type: ignore[no-untyped-def]
    store = FlakyStore(tmp_path / "s", failures=2)
    ex = executor(sessions, store, runtime)
    ex.storage_retry_seconds = 10
    job_id = new_job(sessions)
    assert ex.run(job_id) is Outcome.succeeded
    assert store.calls == 3 and len(load(sessions, job_id).images) == 1


def test_uploads_give_up_when_storage_stays_down(sessions, tmp_path, runtime) -> None:  # type: ignore[no-untyped-def]
    ex = executor(sessions, FlakyStore(tmp_path / "s", failures=10**6), runtime)
    ex.storage_retry_seconds = 1
    job_id = new_job(sessions)
    assert ex.run(job_id) is Outcome.failed
    job = load(sessions, job_id)
    assert job.error_code == "upload_failed" and "connection refused" in (job.error_message or "")
    assert job.images == []


def test_a_job_that_leaves_running_mid_flight_keeps_no_images(  # type: ignore[no-untyped-def]
    sessions, store, runtime
) -> None:
    job_id = new_job(sessions, candidates=2, top_k=2)

    class CancelingGenerator(Fake):
        def generate(self, requests: Sequence[GenerationRequest], **kw: Any) -> Any:
            with session_scope(sessions) as s:  # another actor finishes the job meanwhile
                jobs.fail(
                    session=s, job_id=job_id, code="canceled_elsewhere", message="", metrics={}
                )
            return runtime.generator.generate(requests, **kw)

    rt = ModelRuntime(CancelingGenerator(), runtime.ranker, "cpu", 0.0)  # type: ignore[arg-type]
    assert executor(sessions, store, rt).run(job_id) is Outcome.superseded
    job = load(sessions, job_id)
    assert job.error_code == "canceled_elsewhere" and job.images == []
    assert not list(store.root.rglob("*.png"))  # uploads of a superseded run are removed
    with session_scope(sessions) as s:
        assert s.scalars(select(JobImage).where(JobImage.job_id == job_id)).all() == []


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory, runtime: ModelRuntime) -> ModelRuntime:
    from tests.families import FamilyBuilds

    path = FamilyBuilds(tmp_path_factory.mktemp("flux")).path("flux-dev")
    generator = Generator.load(str(path), model="flux", device="cpu", dtype=torch.float32)
    return ModelRuntime(generator, runtime.ranker, "cpu", 0.0)


def test_a_cold_deployments_job_a_model_cannot_honour_fails_with_the_apis_code(  # type: ignore[no-untyped-def]
    sessions, store, flux
) -> None:
    """No worker had published the model's capabilities, so the API accepted it: the worker
    refuses before any GPU work, with the code and message the API would have answered."""
    job_id = new_job(sessions, model="flux", width=72, height=64, steps=2)
    assert executor(sessions, store, flux).run(job_id) is Outcome.failed
    job = load(sessions, job_id)
    assert job.error_code == "unsupported_parameter" and job.images == []
    assert (job.error_message or "").startswith(
        "width: 72 is not a multiple of 16 for model 'flux' (flux, FluxPipeline)"
    )


@pytest.fixture(scope="module")
def tokens(tiny_janus: Path, runtime: ModelRuntime) -> ModelRuntime:
    """The tiny Janus (32x32 px, 4x4 tokens: a token row is 8 px)."""
    generator = load_generator(str(tiny_janus), model="tokens", device="cpu")
    return ModelRuntime(generator, runtime.ranker, "cpu", 0.0)


def test_a_cold_deployments_completion_keeping_part_of_a_token_row_fails_with_the_apis_code(  # type: ignore[no-untyped-def]
    sessions, store, tokens
) -> None:
    """The API could not look at the mask's pixels against a model no worker had published:
    the worker refuses it after reading the inputs, before any model work, as the API would."""
    mask = Image.new("L", (32, 32), 255)
    mask.paste(0, (0, 0, 32, 12))  # 12 px kept: one and a half token rows
    inputs = {}
    for role, picture in (("image", Image.new("RGB", (32, 32), (9, 99, 199))), ("mask", mask)):
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        store.put(f"inputs/{role}.png", buf.getvalue(), "image/png")
        inputs[role] = {"key": f"inputs/{role}.png"}
    params = job_params(model="tokens", mode="inpaint", width=32, height=32, steps=1)
    with session_scope(sessions) as s:
        job_id = jobs.create(
            session=s,
            params=params.model_copy(update={"strength": 1.0, "mask_blur": 0}),
            options=jobs.JobOptions(inputs=inputs),
        ).id
    assert executor(sessions, store, tokens).run(job_id) is Outcome.failed
    job = load(sessions, job_id)
    assert job.error_code == "unsupported_parameter" and job.images == []
    message = job.error_message or ""
    assert message.startswith("mask: its black band ends at 12 px: model 'tokens' (janus")
    assert "a multiple of 8 px" in message


def test_what_the_api_could_not_know_is_filled_from_the_model_and_recorded(  # type: ignore[no-untyped-def]
    sessions, store, flux
) -> None:
    job_id = new_job(
        sessions,
        model="flux",
        width=None,
        height=None,
        steps=2,
        guidance_scale=None,
        candidates=1,
        defaulted=["width", "height", "guidance_scale"],
    )
    assert executor(sessions, store, flux).run(job_id) is Outcome.succeeded
    job = load(sessions, job_id)
    own = flux.generator.capabilities.defaults
    assert (job.params["width"], job.params["height"], job.params["guidance_scale"]) == (
        own.width,
        own.height,
        own.guidance_scale,
    )
    assert job.cost > 0 and (job.images[0].width, job.images[0].height) == (own.width, own.height)


class SecondPutFails(LocalStore):
    def put(self, key: str, data: bytes, content_type: str) -> None:
        if any(self.root.rglob("*.png")):
            raise StorageError("disk full (on purpose)")
        super().put(key, data, content_type)


def test_a_failed_upload_leaves_no_stored_image_behind(sessions, tmp_path, runtime) -> None:  # type: ignore[no-untyped-def]
    """The job's first image was stored, its second was not: the job fails and the first is
    deleted, so no object outlives the failure without a row pointing at it."""
    store = SecondPutFails(tmp_path / "s")
    job_id = new_job(sessions, candidates=2, top_k=2)
    assert executor(sessions, store, runtime).run(job_id) is Outcome.failed
    job = load(sessions, job_id)
    assert job.error_code == "upload_failed" and "disk full" in (job.error_message or "")
    assert job.images == [] and list(store.root.rglob("*.png")) == []


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "the job has no stored image"),
        (
            {"image": {"key": "nowhere/image.png"}},
            "its image could not be read: KeyError: 'nowhere/image.png'",
        ),
    ],
)
def test_an_edit_whose_input_is_gone_fails_saying_which_and_why(  # type: ignore[no-untyped-def]
    sessions, store, runtime, inputs, message
) -> None:
    with session_scope(sessions) as s:
        job_id = jobs.create(
            session=s,
            params=job_params(mode="image", strength=0.5),
            options=jobs.JobOptions(inputs=inputs),
        ).id
    assert executor(sessions, store, runtime).run(job_id) is Outcome.failed
    job = load(sessions, job_id)
    assert job.error_code == "input_unavailable"
    assert job.error_message == message


# --- exact repeats (DAIKON_REUSE_REPEATS) ------------------------------------------------------


def reusing(sessions: sessionmaker[Session], store: Any, runtime: Any, loads: list[str]) -> Any:
    """An executor that answers repeats, counting its model loads in `loads`."""
    return JobExecutor(
        sessions=sessions,
        store=store,
        runtime=lambda model: loads.append(model) or runtime,  # type: ignore[func-returns-value]
        worker_name="t",
        settings=Settings().evolve(reuse_repeats=True),
    )


def stored(store: LocalStore, job: Job) -> list[bytes]:
    return [store.get(i.storage_key) for i in job.images]


def test_a_repeat_is_answered_with_copies_of_the_earlier_images_without_the_model(  # type: ignore[no-untyped-def]
    sessions, store, runtime
) -> None:
    prompt = f"a red circle {uuid.uuid4().hex}"  # nothing another test ran repeats it
    loads: list[str] = []
    ex = reusing(sessions, store, runtime, loads)
    first = new_job(sessions, prompt=prompt, candidates=3, top_k=2, seed=40)
    assert ex.run(first) is Outcome.succeeded and loads == ["default"]
    repeat = new_job(sessions, prompt=prompt, candidates=3, top_k=2, seed=40)
    assert ex.run(repeat) is Outcome.succeeded
    assert loads == ["default"]  # answered before any model work
    a, b = load(sessions, first), load(sessions, repeat)
    assert (a.reused_from, b.reused_from) == (None, first)
    assert stored(store, b) == stored(store, a) and len(b.images) == 2
    assert {i.storage_key for i in a.images}.isdisjoint(i.storage_key for i in b.images)
    assert [(i.rank, i.seed, i.clip_score) for i in b.images] == [
        (i.rank, i.seed, i.clip_score) for i in a.images
    ]
    assert b.seed == 40 and "inference_seconds" not in b.metrics

    # Anything else that changes the images runs: the seed, top_k, or a seed left to the
    # worker (drawn afresh each time); and so does every job where reuse is off (the default).
    others = [
        new_job(sessions, prompt=prompt, candidates=3, top_k=2, seed=41),
        new_job(sessions, prompt=prompt, candidates=3, top_k=1, seed=40),
        new_job(sessions, prompt=prompt, candidates=3, top_k=2, seed=None),
        new_job(sessions, prompt=prompt, candidates=3, top_k=2, seed=None),
    ]
    for job_id in others:
        assert ex.run(job_id) is Outcome.succeeded
    assert [load(sessions, j).reused_from for j in others] == [None] * 4
    assert len(loads) == 5
    off = new_job(sessions, prompt=prompt, candidates=3, top_k=2, seed=40)
    assert executor(sessions, store, runtime).run(off) is Outcome.succeeded
    ran = load(sessions, off)
    assert ran.reused_from is None and "inference_seconds" in ran.metrics
    assert stored(store, ran) == stored(store, a)


def test_a_repeat_of_a_job_whose_images_are_gone_runs(sessions, store, runtime) -> None:  # type: ignore[no-untyped-def]
    prompt = f"a blue square {uuid.uuid4().hex}"
    loads: list[str] = []
    ex = reusing(sessions, store, runtime, loads)
    first = new_job(sessions, prompt=prompt, seed=9)
    assert ex.run(first) is Outcome.succeeded
    for image in load(sessions, first).images:
        store.delete(image.storage_key)
    repeat = new_job(sessions, prompt=prompt, seed=9)
    assert ex.run(repeat) is Outcome.succeeded
    job = load(sessions, repeat)
    assert job.reused_from is None and len(loads) == 2 and len(stored(store, job)) == 1

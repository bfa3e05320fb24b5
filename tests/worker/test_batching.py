"""Cross-job batching in the executor: compatible queued jobs run in one pipeline call, each
keeping its own seeds, progress, cancel, lease and result (real database, store and Redis).
The generator is the fake one (tests/fake_generator.py), the real Generator's grouping with no
pipeline behind it: what is under test is which jobs run together and what each ends with;
that batching changes no image of the real pipeline is tests/worker/test_generation.py's."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import Engine, event, update
from sqlalchemy.orm import Session, sessionmaker

from daikon.contract import JobParams, JobStatus, WebhookEvent
from daikon.limits import ModelLimits
from db import jobs
from db.models import Job
from db.session import make_session_factory, session_scope
from server.live import LiveState
from server.storage import LocalStore
from tests.factories import job_params, make_job
from tests.fake_generator import FakeGenerator
from worker.executor import JobExecutor, Outcome
from worker.generation import GenerationRequest, Generator
from worker.ranking import ClipRanker
from worker.runtime import ModelRuntime

LIMITS = ModelLimits(
    max_job_cost=4.0, images_per_call=4, seconds_per_cost=120.0, tenant_queued_cost=200.0
)


class Recording:
    """A generator, recording how many requests each pipeline call carried."""

    def __init__(self, inner: Generator, fail_batches: bool = False):
        self.inner, self.fail_batches = inner, fail_batches
        self.calls: list[int] = []

    @property
    def capabilities(self) -> Any:
        return self.inner.capabilities

    def generate(self, requests: Sequence[GenerationRequest], **kw: Any) -> Any:
        self.calls.append(len(requests))
        if self.fail_batches and len(requests) > 1:
            raise RuntimeError("a batch fails (on purpose)")
        return self.inner.generate(requests, **kw)


@pytest.fixture(scope="module")
def generator() -> Generator:
    return FakeGenerator()


@pytest.fixture(scope="module")
def ranker(tiny_models: tuple[Path, Path]) -> ClipRanker:
    return ClipRanker.load(str(tiny_models[1]), device="cpu", dtype=torch.float32)


@pytest.fixture
def model() -> str:
    """A model name of this test's own, so queued jobs of other tests never join its batch."""
    return f"m-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sessions(db_engine: Engine, model: str) -> Iterator[sessionmaker[Session]]:
    factory = make_session_factory(db_engine)
    yield factory
    # Jobs a test left queued or running would look lost to later tests' sweepers (the
    # database is the session's): end them.
    with session_scope(factory) as s:
        s.execute(
            update(Job)
            .where(Job.model == model, Job.status.in_([JobStatus.queued, JobStatus.running]))
            .values(status=JobStatus.canceled)
        )


@pytest.fixture
def live(redis_url: str) -> Iterator[LiveState]:
    yield LiveState(redis_url, f"batch-test-{uuid.uuid4().hex[:6]}")


def make_executor(
    sessions: sessionmaker[Session],
    store: LocalStore,
    gen: Any,
    ranker: ClipRanker,
    *,
    live: LiveState | None = None,
    batch: bool = True,
    worker: str = "w1",
    step_hook: Any = None,
    sleeps: list[float] | None = None,
) -> JobExecutor:
    runtime = ModelRuntime(gen, ranker, "cpu", 0.0, LIMITS)
    ex = JobExecutor(
        sessions=sessions,
        store=store,
        runtime=lambda _m: runtime,
        worker_name=worker,
        batch_jobs=batch,
        batch_wait_seconds=0.01 if sleeps is not None else 0.0,
    )
    if live is not None:
        ex.live = live
    if step_hook is not None:
        ex.step_hook = step_hook
    if sleeps is not None:
        ex.sleep = sleeps.append
    return ex


def submit(sessions: sessionmaker[Session], model: str, **params: Any) -> str:
    with session_scope(sessions) as s:
        return make_job(s, model=model, candidates=params.pop("candidates", 1), **params).id


def row(sessions: sessionmaker[Session], job_id: str) -> Job:
    with session_scope(sessions) as s:
        job = jobs.get(session=s, job_id=job_id)
        job.images  # noqa: B018 - load before the session closes
        return job


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def image_bytes(store: LocalStore, job: Job) -> list[bytes]:
    return [store.get(i.storage_key) for i in sorted(job.images, key=lambda i: i.rank)]


def test_compatible_jobs_run_in_one_call_and_each_gets_the_images_it_gets_alone(  # type: ignore[no-untyped-def]
    sessions, generator, ranker, model, tmp_path
) -> None:
    prompts = ["a red circle", "a blue square", "a green triangle"]
    ids = [submit(sessions, model, prompt=p, seed=100 + i) for i, p in enumerate(prompts)]
    gen = Recording(generator)
    batched = LocalStore(tmp_path / "batched")
    leader = make_executor(sessions, batched, gen, ranker)
    assert leader.run(ids[0]) is Outcome.succeeded
    assert gen.calls == [3]  # one pipeline call for the three jobs
    rows = [row(sessions, i) for i in ids]
    assert [r.status for r in rows] == [JobStatus.succeeded] * 3
    assert [r.metrics["batch_size"] for r in rows] == [3, 3, 3]
    assert [r.seed for r in rows] == [100, 101, 102]
    # The same jobs, each run alone, make the same images: their own seeds' noise. The fake
    # draws them byte for byte; the tolerance is the real pipeline's, whose UNet kernels are not
    # batch-invariant on a CPU (a pixel a level apart in a few of 12,288, docs/benchmarks.md).
    alone_model = f"{model}-alone"
    solo = LocalStore(tmp_path / "alone")
    gen_alone = Recording(generator)
    for i, p in enumerate(prompts):
        job_id = submit(sessions, alone_model, prompt=p, seed=100 + i)
        make_executor(sessions, solo, gen_alone, ranker, batch=False).run(job_id)
        (one,), (other,) = image_bytes(solo, row(sessions, job_id)), image_bytes(batched, rows[i])
        a, b = pixels(one), pixels(other)
        assert a.shape == b.shape
        differ = np.abs(a - b)
        assert differ.max() <= 1 and (differ > 0).mean() < 0.001, (differ.max(), differ.sum())
    assert gen_alone.calls == [1, 1, 1]
    # Their own messages, delivered afterwards, find nothing to do: on another worker from
    # the database, on the one that ran the batch without a database round trip at all.
    for job_id in ids[1:]:
        assert make_executor(sessions, batched, gen, ranker).run(job_id) is Outcome.skipped
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(args[2])

    engine = sessions.kw["bind"]
    event.listen(engine, "before_cursor_execute", seen)
    try:
        assert [leader.run(job_id) for job_id in ids[1:]] == [Outcome.skipped] * 2
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert statements == []
    assert gen.calls == [3]


class RecordedEvents:
    """The executor's webhook events as it asks for them (the outbox itself is tested in
    test_webhook_delivery.py)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def record(self, session: Session, job_id: str, event: WebhookEvent) -> list[str]:
        self.asked.append((job_id, event.value))
        return []

    def send(self, delivery_ids: list[str]) -> None:
        pass

    def progress_hook(self, job: Job) -> None:
        return None


def test_each_batched_job_with_a_webhook_url_gets_its_own_events_and_the_others_none(  # type: ignore[no-untyped-def]
    sessions, generator, ranker, model, tmp_path
) -> None:
    hook = jobs.JobOptions(
        webhook_url="https://hooks.example/daikon", webhook_events=["job.started", "job.succeeded"]
    )
    ids = []
    with session_scope(sessions) as s:
        for i, options in enumerate([hook, jobs.JobOptions(), hook]):
            params = job_params(model=model, prompt=f"job {i}", candidates=1)
            ids.append(jobs.create(session=s, params=params, options=options).id)
    ex = make_executor(sessions, LocalStore(tmp_path), Recording(generator), ranker)
    events = ex.webhooks = RecordedEvents()
    assert ex.run(ids[0]) is Outcome.succeeded
    assert [row(sessions, i).metrics["batch_size"] for i in ids] == [3, 3, 3]
    asked = sorted(events.asked)
    assert asked == sorted(
        [
            (ids[0], "job.started"),
            (ids[2], "job.started"),
            (ids[0], "job.succeeded"),
            (ids[2], "job.succeeded"),
        ]
    )


def test_a_batch_takes_the_head_of_the_queue_in_run_order_and_stops_at_a_misfit(  # type: ignore[no-untyped-def]
    sessions, generator, ranker, model, tmp_path
) -> None:
    leader = submit(sessions, model)
    low = submit(sessions, model, prompt="low")
    with session_scope(sessions) as s:  # priorities are job options: set them on the rows
        s.execute(update(Job).where(Job.id == low).values(priority=0))
    high = submit(sessions, model, prompt="high")
    with session_scope(sessions) as s:
        s.execute(update(Job).where(Job.id == high).values(priority=9))
    misfit = submit(sessions, model, steps=3)  # other steps: cannot share a call
    with session_scope(sessions) as s:
        s.execute(update(Job).where(Job.id == misfit).values(priority=5))
    after = submit(sessions, model, prompt="after the misfit")
    gen = Recording(generator)
    make_executor(sessions, LocalStore(tmp_path), gen, ranker).run(leader)
    # Run order: high (9), misfit (5), then the default-priority jobs. `high` joins; the misfit
    # ends the batch, so nothing behind it (`after`, `low`) runs before it.
    assert gen.calls == [2]
    statuses = {
        k: row(sessions, v).status
        for k, v in {"high": high, "misfit": misfit, "after": after, "low": low}.items()
    }
    assert statuses == {
        "high": JobStatus.succeeded,
        "misfit": JobStatus.queued,
        "after": JobStatus.queued,
        "low": JobStatus.queued,
    }


def test_a_batch_holds_no_more_images_than_the_model_denoises_at_once(  # type: ignore[no-untyped-def]
    sessions, generator, ranker, model, tmp_path
) -> None:
    ids = [submit(sessions, model, candidates=2, prompt=f"job {i}") for i in range(3)]
    gen = Recording(generator)
    make_executor(sessions, LocalStore(tmp_path), gen, ranker).run(ids[0])
    assert gen.calls == [2]  # 2 + 2 candidates fill images_per_call = 4; the third waits
    assert [row(sessions, i).status for i in ids] == [
        JobStatus.succeeded,
        JobStatus.succeeded,
        JobStatus.queued,
    ]


def test_a_job_canceled_mid_batch_ends_canceled_and_the_others_finish(  # type: ignore[no-untyped-def]
    sessions, generator, ranker, model, live, tmp_path
) -> None:
    ids = [submit(sessions, model, prompt=f"job {i}", steps=4) for i in range(3)]
    victim = ids[1]

    def cancel_at_step_2(params: JobParams, step: int) -> None:
        if step == 2 and params.prompt == "job 1":
            with session_scope(sessions) as s:  # what POST /v1/jobs/{id}/cancel does
                jobs.cancel(session=s, job_id=victim)
            live.request_cancel(victim)

    store = LocalStore(tmp_path)
    ex = make_executor(
        sessions, store, Recording(generator), ranker, live=live, step_hook=cancel_at_step_2
    )
    assert ex.run(ids[0]) is Outcome.succeeded
    rows = [row(sessions, i) for i in ids]
    assert [r.status for r in rows] == [
        JobStatus.succeeded,
        JobStatus.canceled,
        JobStatus.succeeded,
    ]
    assert rows[1].images == []
    assert len(list((tmp_path).rglob(f"*{victim}*"))) == 0  # its images were never stored
    # Each job's progress is its own: the canceled one stopped at the step it was canceled.
    progress = live.progress(ids)
    assert progress[ids[0]][0] == progress[ids[0]][1] and progress[victim][0] == 2


def test_a_job_whose_lease_is_lost_mid_batch_writes_nothing_and_the_others_finish(  # type: ignore[no-untyped-def]
    sessions, generator, ranker, model, tmp_path
) -> None:
    ids = [submit(sessions, model, prompt=f"job {i}") for i in range(2)]

    def taken_over(params: JobParams, step: int) -> None:
        if step == 1 and params.prompt == "job 1":  # another worker took it over
            with session_scope(sessions) as s:
                s.execute(update(Job).where(Job.id == ids[1]).values(lease_owner="w2"))

    ex = make_executor(
        sessions, LocalStore(tmp_path), Recording(generator), ranker, step_hook=taken_over
    )
    ex.lease_seconds = 3.0  # renewed every second: the keeper notices the takeover
    ex.run(ids[0])
    first, second = row(sessions, ids[0]), row(sessions, ids[1])
    assert first.status is JobStatus.succeeded
    assert second.status is JobStatus.running and second.lease_owner == "w2"
    assert second.images == []


def test_a_failing_batch_runs_each_job_alone_so_a_failure_stays_with_its_job(  # type: ignore[no-untyped-def]
    sessions, generator, ranker, model, tmp_path
) -> None:
    ids = [submit(sessions, model, prompt=f"job {i}") for i in range(3)]
    gen = Recording(generator, fail_batches=True)
    make_executor(sessions, LocalStore(tmp_path), gen, ranker).run(ids[0])
    assert gen.calls == [3, 1, 1, 1]
    assert [row(sessions, i).status for i in ids] == [JobStatus.succeeded] * 3


def test_a_retried_job_runs_alone(sessions, generator, ranker, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A job whose worker died runs without company: if it is what kills workers, it fails
    by itself after max_attempts instead of taking other jobs' attempts with it."""
    ids = [submit(sessions, model, prompt=f"job {i}") for i in range(2)]
    with session_scope(sessions) as s:  # its first worker died: running, lease lapsed
        s.execute(
            update(Job)
            .where(Job.id == ids[0])
            .values(
                status=JobStatus.running,
                attempts=1,
                lease_owner="dead:1",
                lease_expires_at=jobs.utcnow(),
            )
        )
    gen = Recording(generator)
    assert make_executor(sessions, LocalStore(tmp_path), gen, ranker).run(ids[0]) is (
        Outcome.succeeded
    )
    assert gen.calls == [1]
    assert row(sessions, ids[1]).status is JobStatus.queued


def test_it_waits_for_company_only_while_the_queue_gives_some(  # type: ignore[no-untyped-def]
    sessions, generator, ranker, model, tmp_path
) -> None:
    store, gen = LocalStore(tmp_path), Recording(generator)
    sleeps: list[float] = []
    alone = submit(sessions, model)  # an idle queue: no wait at all
    make_executor(sessions, store, gen, ranker, sleeps=sleeps).run(alone)
    assert sleeps == [] and gen.calls == [1]
    ids = [submit(sessions, model, prompt=f"job {i}") for i in range(2)]  # load: one short wait
    make_executor(sessions, store, gen, ranker, sleeps=sleeps).run(ids[0])
    assert sleeps == [0.01] and gen.calls == [1, 2]
    ids = [submit(sessions, model, prompt=f"full {i}") for i in range(5)]  # a full batch: none
    make_executor(sessions, store, gen, ranker, sleeps=sleeps).run(ids[0])
    assert sleeps == [0.01] and gen.calls == [1, 2, 4]


def test_batching_off_runs_one_job_per_call(sessions, generator, ranker, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ids = [submit(sessions, model, prompt=f"job {i}") for i in range(2)]
    gen = Recording(generator)
    make_executor(sessions, LocalStore(tmp_path), gen, ranker, batch=False).run(ids[0])
    assert gen.calls == [1] and row(sessions, ids[1]).status is JobStatus.queued


def test_jobs_queued_before_the_models_defaults_were_known_batch_on_what_they_will_run(  # type: ignore[no-untyped-def]
    sessions, generator, ranker, model, tmp_path
) -> None:
    cold = {"width": None, "height": None, "steps": None, "guidance_scale": None}
    ids = [submit(sessions, model, prompt=f"cold {i}", **cold) for i in range(3)]
    gen = Recording(generator)
    make_executor(sessions, LocalStore(tmp_path), gen, ranker).run(ids[0])
    assert gen.calls == [3]
    rows = [row(sessions, i) for i in ids]
    assert [r.status for r in rows] == [JobStatus.succeeded] * 3
    native = generator.capabilities.defaults.width
    assert {(r.params["width"], r.params["steps"]) for r in rows} == {
        (native, generator.capabilities.defaults.steps)
    }


def test_a_queue_paused_after_the_leader_started_gives_it_no_company(  # type: ignore[no-untyped-def]
    sessions, generator, ranker, model, tmp_path
) -> None:
    from db.models import PausedModel

    ids = [submit(sessions, model, prompt=f"job {i}") for i in range(3)]
    with session_scope(sessions) as s:  # the leader was claimed, then the queue was paused
        assert jobs.claim(session=s, job_id=ids[0], worker="w1") is not None
        s.add(PausedModel(model=model, paused_by="test"))
    gen = Recording(generator)
    make_executor(sessions, LocalStore(tmp_path), gen, ranker).run(ids[0])
    assert gen.calls == [1]
    assert [row(sessions, i).status for i in ids] == [
        JobStatus.succeeded,
        JobStatus.queued,
        JobStatus.queued,
    ]


def test_an_edit_job_joins_no_text_batch_takes_no_company_and_still_succeeds(  # type: ignore[no-untyped-def]
    sessions, generator, ranker, model, tmp_path
) -> None:
    """Edits run alone (JobParams.batch_key is None for them): their input images and strength
    are their own, so a text batch stops at one and it runs by itself, on its own message."""
    store = LocalStore(tmp_path)
    picture = Image.new("RGB", (64, 64), (200, 40, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 32, 64, 64))  # repaint the lower half, keep the upper
    inputs = {}
    for role, im in (("image", picture), ("mask", mask)):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        key = f"inputs/{model}/{role}.png"
        store.put(key, buf.getvalue(), "image/png")
        inputs[role] = {"key": key, "width": 64, "height": 64, "content_type": "image/png"}
    text = [submit(sessions, model, prompt=f"text {i}") for i in range(2)]
    with session_scope(sessions) as s:
        edit = jobs.create(
            session=s,
            params=job_params(
                model=model,
                candidates=1,
                prompt="a blue square",
                mode="inpaint",
                strength=1.0,
                mask_blur=0,
            ),
            options=jobs.JobOptions(inputs=inputs),
        ).id
    after = submit(sessions, model, prompt="text after the edit")
    gen = Recording(generator)
    ex = make_executor(sessions, store, gen, ranker)
    assert ex.run(text[0]) is Outcome.succeeded
    assert gen.calls == [2]  # the two text jobs; the edit ended the batch, so `after` waits
    assert row(sessions, edit).status is JobStatus.queued
    assert row(sessions, after).status is JobStatus.queued
    assert ex.run(edit) is Outcome.succeeded
    assert gen.calls == [2, 1]  # alone: `after`, compatible with nothing it has, stays queued
    done = row(sessions, edit)
    assert done.status is JobStatus.succeeded and done.metrics["batch_size"] == 1
    assert row(sessions, after).status is JobStatus.queued
    (result,) = image_bytes(store, done)
    kept, original = pixels(result)[:32], np.asarray(picture, dtype=np.int16)[:32]
    assert np.array_equal(kept, original)  # the unmasked half is the input's own pixels

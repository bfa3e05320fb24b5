"""Job service functions on SQLite and PostgreSQL: transitions are conditional and atomic."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from daikon.contract import JobStatus
from daikon.errors import NotFound
from db import jobs
from db.models import Job, JobImage, utcnow
from tests.factories import image, job_params, make_job


def test_create_stores_complete_params_and_starts_queued(session: Session) -> None:
    job = make_job(session, prompt="a blue square")
    got = jobs.get(session=session, job_id=job.id)
    assert got.status is JobStatus.queued
    assert got.params["prompt"] == "a blue square" and got.params["steps"] == 4
    assert got.created_at.tzinfo is not None and got.attempts == 0 and got.images == []


def test_get_unknown_job_raises_not_found(session: Session) -> None:
    with pytest.raises(NotFound, match="not found"):
        jobs.get(session=session, job_id="nope")


def test_list_recent_is_newest_first_and_limited(session: Session) -> None:
    made = [make_job(session, prompt=f"p{i}").id for i in range(5)]
    listed = [j.id for j in jobs.list_recent(session=session, limit=3)]
    assert listed == list(reversed(made))[:3]


def test_claim_moves_queued_to_running_exactly_once(session: Session) -> None:
    job = make_job(session)
    claimed = jobs.claim(session=session, job_id=job.id, worker="w1")
    assert claimed is not None and claimed.status is JobStatus.running
    assert claimed.worker == "w1" and claimed.attempts == 1 and claimed.started_at is not None
    # A redelivered message (or a second worker) finds nothing to claim.
    assert jobs.claim(session=session, job_id=job.id, worker="w2") is None
    assert jobs.get(session=session, job_id=job.id).worker == "w1"


def test_claim_of_a_missing_job_is_a_no_op(session: Session) -> None:
    assert jobs.claim(session=session, job_id="missing", worker="w") is None


def test_succeed_records_images_in_rank_order(session: Session) -> None:
    job = make_job(session)
    jobs.claim(session=session, job_id=job.id, worker="w")
    ok = jobs.succeed(
        session=session,
        job_id=job.id,
        seed=7,
        images=[image(2, 0.5), image(1, 0.9)],
        metrics={"inference_seconds": 1.5},
    )
    assert ok
    session.expire_all()
    done = jobs.get(session=session, job_id=job.id)
    assert done.status is JobStatus.succeeded and done.finished_at is not None
    assert [(i.rank, i.clip_score) for i in done.images] == [(1, 0.9), (2, 0.5)]
    assert done.metrics == {"inference_seconds": 1.5} and done.seed == 7


def test_a_queued_job_cannot_be_finished_without_a_claim(session: Session) -> None:
    job = make_job(session)
    assert not jobs.succeed(
        session=session, job_id=job.id, seed=1, images=[image(1, 1)], metrics={}
    )
    assert not jobs.fail(session=session, job_id=job.id, code="x", message="y", metrics={})
    assert jobs.get(session=session, job_id=job.id).status is JobStatus.queued
    assert session.scalars(select(JobImage).where(JobImage.job_id == job.id)).all() == []


def test_a_finished_job_is_finished_once(session: Session) -> None:
    job = make_job(session)
    jobs.claim(session=session, job_id=job.id, worker="w")
    assert jobs.fail(
        session=session, job_id=job.id, code="generation_failed", message="boom", metrics={}
    )
    # A late success from another attempt must not overwrite the failure or add images.
    assert not jobs.succeed(
        session=session, job_id=job.id, seed=1, images=[image(1, 1)], metrics={}
    )
    session.expire_all()
    done = jobs.get(session=session, job_id=job.id)
    assert (done.status, done.error_code, done.error_message) == (
        JobStatus.failed,
        "generation_failed",
        "boom",
    )
    assert done.images == []


def test_delete_removes_the_row(session: Session) -> None:
    job = make_job(session)
    jobs.delete(session=session, job_id=job.id)
    session.flush()
    with pytest.raises(NotFound):
        jobs.get(session=session, job_id=job.id)


def _age(session: Session, job_id: str, **values: object) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(**values))


def test_the_sweeper_takes_each_possibly_lost_job_once(session: Session) -> None:
    now = utcnow()
    old, ancient = now - timedelta(minutes=5), now - timedelta(hours=3)
    never_published = make_job(session).id
    just_submitted = make_job(session).id  # the API may still be publishing it
    published = make_job(session).id
    lost_in_broker = make_job(session).id
    dead_runner = make_job(session).id
    _age(session, never_published, created_at=old)
    _age(session, published, created_at=old, enqueued_at=old)
    _age(session, lost_in_broker, created_at=ancient, enqueued_at=ancient)
    jobs.claim(session=session, job_id=dead_runner, worker="gone:1", lease_seconds=-7200)
    _age(session, dead_runner, enqueued_at=ancient)

    def take() -> set[str]:
        return {
            t.job_id
            for t in jobs.take_for_republish(
                session=session,
                unpublished_before=now - timedelta(seconds=30),
                stale_before=now - timedelta(hours=1),
            )
        }

    assert take() == {never_published, lost_in_broker, dead_runner}
    assert just_submitted not in take() and published not in take()
    assert take() == set()  # each was taken once: its enqueued_at moved on


def test_a_lease_is_renewed_only_by_its_holder(session: Session) -> None:
    job = make_job(session)
    jobs.claim(session=session, job_id=job.id, worker="w1", lease_seconds=5)
    assert jobs.renew_lease(session=session, job_id=job.id, worker="w1", lease_seconds=60)
    assert not jobs.renew_lease(session=session, job_id=job.id, worker="w2", lease_seconds=60)
    session.expire_all()
    left = (jobs.get(session=session, job_id=job.id).lease_expires_at - utcnow()).total_seconds()
    assert 55 < left <= 60
    # Results are written only under the lease: another worker's late write is refused.
    assert not jobs.succeed(
        session=session, job_id=job.id, seed=1, images=[], metrics={}, worker="w2"
    )
    assert jobs.succeed(session=session, job_id=job.id, seed=1, images=[], metrics={}, worker="w1")


def test_a_running_job_whose_lease_lapsed_a_lease_ago_is_republished_once(
    session: Session,
) -> None:
    """Its worker died while its message was out of the broker's reach (the connection dropped
    mid-job: the message sits unacked until the visibility timeout): publish it again now."""
    now = utcnow()
    dead = make_job(session).id
    alive = make_job(session).id
    jobs.claim(session=session, job_id=dead, worker="gone:1", lease_seconds=-30)
    jobs.claim(session=session, job_id=alive, worker="here:1", lease_seconds=60)
    _age(session, dead, enqueued_at=now - timedelta(minutes=2))
    _age(session, alive, enqueued_at=now - timedelta(minutes=2))

    def take() -> set[str]:
        """Of this test's jobs (the PostgreSQL database is the run's: jobs other tests' workers
        left running may be taken too)."""
        return {dead, alive} & {
            t.job_id
            for t in jobs.take_for_republish(
                session=session,
                unpublished_before=now - timedelta(seconds=30),
                stale_before=now - timedelta(hours=1),
                lapsed_before=now - timedelta(seconds=10),
            )
        }

    assert take() == {dead}
    assert take() == set()  # once per lapsed lease, not at every sweep


def test_the_repeat_key_changes_with_whatever_changes_the_images_and_only_that() -> None:
    sd = {"name": "default", "pipeline": "models/shapes-sd", "clip": "c", "options": {}}
    photo = {"image": {"key": "a/input-image.png", "sha256": "ab12", "width": 64}}

    def key(**changed: object) -> str:
        given: dict[str, object] = {
            "tenant_id": "t1",
            "model": sd,
            "params": job_params(mode="image", strength=0.5),
            "seed": 7,
            "inputs": photo,
            **changed,
        }
        return jobs.repeat_key(**given)  # type: ignore[arg-type]

    same = [
        # A value left to its default draws what the same value given draws; the same input
        # bytes stored under another job's key are the same input.
        key(params=job_params(mode="image", strength=0.5, defaulted=["width", "height"])),
        key(inputs={"image": {**photo["image"], "key": "b/input-image.png"}}),
    ]
    assert set(same) == {key()}
    different = [
        key(tenant_id="t2"),
        key(tenant_id=None),
        key(model={**sd, "pipeline": "elsewhere/shapes-sd"}),
        key(model={**sd, "options": {"dtype": "bfloat16"}}),
        key(seed=8),
        key(params=job_params(mode="image", strength=0.6)),
        key(params=job_params(mode="image", strength=0.5, top_k=2)),
        key(inputs={"image": {**photo["image"], "sha256": "cd34"}}),
    ]
    assert len({key(), *different}) == 1 + len(different)

"""Job service functions. State changes are conditional UPDATEs so concurrent workers and
redelivered messages can never move a job backwards or finish it twice."""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    case,
    exists,
    false,
    func,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from daikon.contract import DEFAULT_PRIORITY, PRIORITY_MAX, JobParams, JobStatus
from daikon.errors import Conflict, NotFound, RequestErrorCode
from db import retention
from db.models import ApiKey, Job, JobImage, PausedModel, utcnow

ACTIVE = (JobStatus.queued, JobStatus.running)
RETRYABLE = (JobStatus.failed, JobStatus.canceled)
# How soon a message for a paused model's job comes back to look again.
PAUSE_RECHECK_SECONDS = 2.0
# A message that could not start its queue's head (see acquire) comes back this soon; the
# head's own message, published at the top, is not published again for HANDOFF_SECONDS.
HANDOFF_RECHECK_SECONDS = 0.5
HANDOFF_SECONDS = 5.0

# The run order of a model's queue, the one definition the claim, batching and every queue
# position use: priority (highest first), then turn (a tenant's round at that priority, so
# tenants take turns and one's backlog cannot hold back another's job), then age, then id.
RUN_ORDER = (Job.priority.desc(), Job.turn, Job.created_at, Job.id)


def runs_before(ahead: Any, target: Any) -> Any:
    """SQL: queued job `ahead` runs before `target` (columns of two aliases of Job, or
    `target` a row's values) in RUN_ORDER, both of one model."""
    tie = and_(ahead.created_at == target.created_at, ahead.id < target.id)
    same_turn = and_(ahead.turn == target.turn, or_(ahead.created_at < target.created_at, tie))
    return or_(
        ahead.priority > target.priority,
        and_(ahead.priority == target.priority, or_(ahead.turn < target.turn, same_turn)),
    )


def next_turn(*, session: Session, tenant_id: str | None, model: str, priority: int) -> int:
    """A new job's turn at (model, priority): one past its tenant's last queued job there,
    and never before the queue's head (a tenant with nothing queued joins the round being
    served). Two of one tenant's submissions in the same instant may share a turn: fair to
    within a job. Two index lookups."""
    queued = (Job.model == model, Job.status == JobStatus.queued, Job.priority == priority)
    tenant = Job.tenant_id.is_(None) if tenant_id is None else Job.tenant_id == tenant_id
    own = select(func.max(Job.turn)).where(tenant, *queued).scalar_subquery()
    head = select(func.min(Job.turn)).where(*queued).scalar_subquery()
    last, first = session.execute(select(own, head)).one()
    return max(first or 0, last + 1 if last is not None else 0)


def model_paused(model: Any) -> Any:
    """SQL: the model's queue is paused (a row in paused_models)."""
    return exists(select(PausedModel.model).where(PausedModel.model == model))


@dataclass(frozen=True)
class NewImage:
    rank: int
    clip_score: float
    seed: int
    width: int
    height: int
    content_type: str
    storage_key: str
    byte_size: int


@dataclass(frozen=True)
class JobOptions:
    """What a submission carries besides the generation parameters."""

    priority: int = DEFAULT_PRIORITY
    metadata: dict[str, Any] | None = None
    webhook_url: str | None = None
    webhook_events: list[str] = field(default_factory=list)
    idempotency_key: str | None = None
    request_hash: str | None = None
    # An edit job's stored inputs by role (api/inputs.py), and the id they were stored under.
    inputs: dict[str, Any] | None = None
    job_id: str | None = None


class IdempotencyConflict(Exception):
    """Another job of this tenant holds the idempotency key; it is attached."""

    def __init__(self, job: Job):
        super().__init__(job.id)
        self.job = job


def create(
    *,
    session: Session,
    params: JobParams,
    tenant_id: str | None = None,
    options: JobOptions | None = None,
) -> Job:
    """Insert a queued job. With an idempotency key held by a live job, raise
    IdempotencyConflict carrying that job (a key older than `idempotency_window` was released
    by `release_expired_idempotency_key`)."""
    options = options or JobOptions()
    turn = next_turn(
        session=session, tenant_id=tenant_id, model=params.model, priority=options.priority
    )
    job = Job(
        **({"id": options.job_id} if options.job_id else {}),
        inputs=options.inputs,
        tenant_id=tenant_id,
        prompt=params.prompt,
        params=params.model_dump(mode="json"),
        model=params.model,
        cost=params.cost,
        status=JobStatus.queued,
        priority=options.priority,
        turn=turn,
        client_metadata=options.metadata,
        webhook_url=options.webhook_url,
        webhook_events=list(options.webhook_events),
        idempotency_key=options.idempotency_key,
        request_hash=options.request_hash,
        metrics={},
        images=[],
    )
    if options.idempotency_key is None:  # nothing to recover from: no savepoint round trips
        session.add(job)
        session.flush()
    else:
        try:
            with session.begin_nested():
                session.add(job)
        except IntegrityError:
            existing = session.scalar(
                select(Job).where(
                    Job.tenant_id == tenant_id, Job.idempotency_key == options.idempotency_key
                )
            )
            if existing is None:  # the holder vanished meanwhile: let the caller retry
                raise
            raise IdempotencyConflict(existing) from None
    # Its stored inputs count against the tenant's quota from the commit that records them.
    stored = retention.owned_inputs(job.id, options.inputs)
    retention.add_stored_bytes(
        session=session, tenant_id=tenant_id, delta=sum(size for _, size in stored)
    )
    return job


def release_expired_idempotency_key(
    *, session: Session, tenant_id: str | None, key: str, window: timedelta
) -> None:
    """A key is held for `window`; after that the same key starts a new job."""
    session.execute(
        update(Job)
        .where(
            Job.tenant_id == tenant_id,
            Job.idempotency_key == key,
            Job.created_at < utcnow() - window,
        )
        .values(idempotency_key=None)
        .execution_options(synchronize_session=False)
    )


def find_by_idempotency_key(*, session: Session, tenant_id: str | None, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def get(*, session: Session, job_id: str, tenant_id: str | None = None) -> Job:
    """The job, if it exists and (when a tenant is given) belongs to that tenant."""
    job = session.get(Job, job_id)
    if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
        raise NotFound(f"job {job_id!r} not found", param="id")
    return job


@dataclass(frozen=True)
class ListFilter:
    tenant_id: str | None = None
    status: JobStatus | None = None
    model: str | None = None
    created_after: datetime | None = None
    # Keyset cursor: the (created_at, id) of the last job of the previous page.
    before: tuple[datetime, str] | None = None


def _listed(stmt: Any, limit: int, where: ListFilter | None) -> Any:
    where = where or ListFilter()
    if where.tenant_id is not None:
        stmt = stmt.where(Job.tenant_id == where.tenant_id)
    if where.status is not None:
        stmt = stmt.where(Job.status == where.status)
    if where.model is not None:
        stmt = stmt.where(Job.model == where.model)
    if where.created_after is not None:
        stmt = stmt.where(Job.created_at > where.created_after)
    if where.before is not None:
        at, job_id = where.before
        stmt = stmt.where(or_(Job.created_at < at, and_(Job.created_at == at, Job.id < job_id)))
    return stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)


def list_recent(*, session: Session, limit: int, where: ListFilter | None = None) -> Sequence[Job]:
    """Newest first, stable under inserts: pages continue strictly after the cursor."""
    return session.scalars(_listed(select(Job), limit, where)).all()


@dataclass(frozen=True)
class PollState:
    """What decides a job object's ETag and whether a built one is still current, read in one
    indexed query (no images, no parameters)."""

    id: str
    tenant_id: str | None
    status: JobStatus
    created_at: datetime
    finished_at: datetime | None
    updated_at: datetime
    model: str
    queue_position: int | None  # only while queued (and asked for)


def _position_of(target: Any) -> Any:
    """Queued jobs of the target's model that run before it (see queue_position), as a
    correlated subquery: an index range count on ix_jobs_run_order."""
    ahead = aliased(Job)
    count = (
        select(func.count())
        .select_from(ahead)
        .where(
            ahead.model == target.model,
            ahead.status == JobStatus.queued,
            runs_before(ahead, target),
        )
        .scalar_subquery()
    )
    return case((target.status == JobStatus.queued, count), else_=None)


# Built once: composing the correlated subquery costs more than running it.
_STATE_COLUMNS = (
    Job.id,
    Job.tenant_id,
    Job.status,
    Job.created_at,
    Job.finished_at,
    Job.updated_at,
    Job.model,
)
_STATE_SELECT = select(*_STATE_COLUMNS, _position_of(Job))
# With the poll: whether the caller's key (by id) is still unrevoked, in the same read.
_KEY_ACTIVE = (
    select(func.count())
    .select_from(ApiKey)
    .where(ApiKey.id == bindparam("key_id"), ApiKey.revoked_at.is_(None))
    .scalar_subquery()
)
_POLL_STMT = select(*_STATE_SELECT.selected_columns, _KEY_ACTIVE).where(
    Job.id == bindparam("job_id")
)
# The same without the count of jobs ahead (the caller places the job in a queue ranking).
_POLL_UNPLACED_STMT = select(*_STATE_COLUMNS, null(), _KEY_ACTIVE).where(
    Job.id == bindparam("job_id")
)
_RANKING_STMT = select(
    Job.id, Job.priority, Job.turn, func.row_number().over(order_by=RUN_ORDER) - 1
).where(Job.model == bindparam("model"), Job.status == JobStatus.queued)
_POSITIONS_STMT = select(Job.id, _position_of(Job)).where(
    Job.id.in_(bindparam("job_ids", expanding=True))
)


def poll_state(
    *,
    session: Session | Connection,
    job_id: str,
    tenant_id: str | None = None,
    key_id: str | None = None,
    place: bool = True,
) -> tuple[PollState | None, bool]:
    """A job's PollState (None if it does not exist or, given a tenant, is another's), and
    whether API key `key_id` is unrevoked, in one indexed read (the key is found only with
    the job: for a missing job ask tenants.find_active_key). `place=False` leaves out the
    queue position (a count of the jobs ahead, O(their number)) for a caller that has one."""
    stmt = _POLL_STMT if place else _POLL_UNPLACED_STMT
    row = session.execute(stmt, {"job_id": job_id, "key_id": key_id or ""}).one_or_none()
    if row is None:
        return None, False
    key_active = bool(row[-1])
    if tenant_id is not None and row[1] != tenant_id:
        return None, key_active
    return PollState(*row[:-1]), key_active


def list_states(
    *,
    session: Session | Connection,
    limit: int,
    where: ListFilter | None = None,
    unranked: Collection[str] = (),
) -> list[PollState]:
    """list_recent's page as PollStates, in one query (one snapshot). The queue positions of
    its queued jobs come from one ranking of the queues of their models, not from a count per
    job: a page of 50 queued jobs behind 10,000 others reads the 10,000 once, not 50 times.
    `row_number() - 1` over RUN_ORDER is queue_position's count exactly: the jobs strictly
    ahead. Models in `unranked` are not ranked (their
    queued jobs come back without a position, for a caller that has a ranking already)."""
    page = _listed(select(*_STATE_COLUMNS), limit, where).cte("page")
    waiting_models = select(page.c.model).where(page.c.status == JobStatus.queued)
    if unranked:
        waiting_models = waiting_models.where(page.c.model.not_in(list(unranked)))
    ahead = func.row_number().over(partition_by=Job.model, order_by=RUN_ORDER) - 1
    ranked = (
        select(Job.id.label("id"), ahead.label("ahead"))
        .where(Job.status == JobStatus.queued, Job.model.in_(waiting_models))
        .subquery("ranked")
    )
    position = case((page.c.status == JobStatus.queued, ranked.c.ahead), else_=None)
    c = page.c
    stmt = (
        select(
            c.id,
            c.tenant_id,
            c.status,
            c.created_at,
            c.finished_at,
            c.updated_at,
            c.model,
            position,
        )
        .outerjoin(ranked, ranked.c.id == page.c.id)
        .order_by(page.c.created_at.desc(), page.c.id.desc())
    )
    return [PollState(*row) for row in session.execute(stmt)]


def queue_positions(*, session: Session | Connection, job_ids: Sequence[str]) -> dict[str, int]:
    """queue_position of each queued job among `job_ids`, in one query."""
    rows = session.execute(_POSITIONS_STMT, {"job_ids": list(job_ids)})
    return {job_id: int(n) for job_id, n in rows if n is not None}


@dataclass(frozen=True)
class QueueRanking:
    """A model's queue as one pass over it saw it."""

    ahead: dict[str, int]  # queue_position of each queued job
    by_priority: dict[int, int]  # how many are queued at each priority
    # The turns queued at each priority, in run order (so ascending).
    turns: dict[int, list[int]] = field(default_factory=dict)

    def ahead_of_new(self, priority: int, turn: int | None = None) -> int:
        """The queue_position a job submitted now at `priority` (and `turn`) would have:
        every queued job of a higher priority runs before it, and of its own priority every
        one of an earlier or the same turn (those are older); without a turn, all of them."""
        higher = sum(n for p, n in self.by_priority.items() if p > priority)
        if turn is None:
            return higher + self.by_priority.get(priority, 0)
        return higher + bisect.bisect_right(self.turns.get(priority, []), turn)


def queue_ranking(*, session: Session | Connection, model: str) -> QueueRanking:
    """queue_position of every queued job of `model`, in one pass over its queue
    (`row_number() - 1` over RUN_ORDER is the count of jobs strictly ahead)."""
    ahead: dict[str, int] = {}
    by_priority: dict[int, int] = {}
    turns: dict[int, list[int]] = {}
    for job_id, priority, turn, n in session.execute(_RANKING_STMT, {"model": model}):
        ahead[job_id] = int(n)
        by_priority[priority] = by_priority.get(priority, 0) + 1
        turns.setdefault(priority, []).append(int(turn))
    return QueueRanking(ahead, by_priority, turns)


def get_many(*, session: Session, job_ids: Sequence[str]) -> dict[str, Job]:
    """Whole rows (with images), by id, in two queries whatever their number."""
    if not job_ids:
        return {}
    return {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(job_ids))).all()}


def count_active(*, session: Session, tenant_id: str | None, up_to: int | None = None) -> int:
    """The tenant's queued and running jobs; with `up_to`, counting stops there (a limit
    check needs no more, and a tenant's backlog then costs a submission nothing)."""
    rows = select(Job.id).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))
    if up_to is not None:
        rows = rows.limit(up_to)
    return int(session.scalar(select(func.count()).select_from(rows.subquery())) or 0)


def active_cost(*, session: Session, tenant_id: str | None, model: str) -> float:
    """Megapixel-steps of the tenant's queued and running jobs for one model."""
    stmt = select(func.coalesce(func.sum(Job.cost), 0.0)).where(
        Job.tenant_id == tenant_id, Job.status.in_(ACTIVE), Job.model == model
    )
    return float(session.scalar(stmt) or 0.0)


def queue_position(*, session: Session, job: Job) -> int:
    """Queued jobs of the same model that run before this one (RUN_ORDER): the place a
    worker starts it from."""
    stmt = (
        select(func.count())
        .select_from(Job)
        .where(Job.model == job.model, Job.status == JobStatus.queued, runs_before(Job, job))
    )
    return int(session.scalar(stmt) or 0)


def cancel(*, session: Session, job_id: str) -> datetime | None:
    """queued|running -> canceled. The time, or None if the job had already finished."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(ACTIVE))
        .values(status=JobStatus.canceled, finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return now if result.rowcount == 1 else None  # type: ignore[attr-defined]


def delete(*, session: Session, job_id: str) -> None:
    """Delete a job row (a submission the broker refused); the caller deletes its objects, so
    their bytes leave the tenant's count here."""
    job = session.get(Job, job_id)
    if job is not None:
        own = [
            *retention.owned_inputs(job.id, job.inputs),
            *((i.storage_key, i.byte_size) for i in job.images),
        ]
        retention.add_stored_bytes(
            session=session, tenant_id=job.tenant_id, delta=-sum(size for _, size in own)
        )
        session.delete(job)


def claim(
    *,
    session: Session,
    job_id: str,
    worker: str,
    lease_seconds: float = 60,
    max_attempts: int | None = None,
    head_only: bool = False,
) -> Job | None:
    """Take the job to run it: queued -> running (unless its model's queue is paused; with
    `head_only`, only while no queued job of its model runs before it), or a running job whose
    lease lapsed (its worker died) or is this worker's own. None means it is not ours to run
    now. The pause is checked in the same UPDATE, so a job can never start after the pause
    committed."""
    now = utcnow()
    queued = and_(Job.status == JobStatus.queued, ~model_paused(Job.model))
    if head_only:
        ahead = aliased(Job)
        queued = and_(
            queued,
            ~exists(
                select(ahead.id).where(
                    ahead.model == Job.model,
                    ahead.status == JobStatus.queued,
                    runs_before(ahead, Job),
                )
            ),
        )
    runnable = or_(
        queued,
        and_(
            Job.status == JobStatus.running,
            or_(Job.lease_expires_at < now, Job.lease_owner == worker),
        ),
    )
    stmt = update(Job).where(Job.id == job_id, runnable)
    if max_attempts is not None:
        stmt = stmt.where(Job.attempts < max_attempts)
    result = session.execute(
        stmt.values(**_running_under(worker, now, lease_seconds)).execution_options(
            synchronize_session=False
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    session.expire_all()
    return session.get(Job, job_id)


def _running_under(worker: str, now: datetime, lease_seconds: float) -> dict[str, Any]:
    """The columns a claim sets: running under this worker's fresh lease, one more attempt."""
    return {
        "status": JobStatus.running,
        "started_at": now,
        "updated_at": now,
        "worker": worker,
        "lease_owner": worker,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "attempts": Job.attempts + 1,
    }


def claim_companions(
    *,
    session: Session,
    leader: Job,
    worker: str,
    lease_seconds: float,
    fits: Callable[[Job], bool],
    limit: int,
) -> list[Job]:
    """Queued jobs to run in one pipeline call with `leader` (already claimed), taken from the
    head of its model's queue in RUN_ORDER for as long as `fits` accepts
    them: the first that does not ends the batch, so a batch never runs a job before one that
    would have run first. Each is claimed by the same conditional UPDATE as `claim`; on
    PostgreSQL rows another worker is claiming are skipped (FOR UPDATE SKIP LOCKED) rather than
    waited for. Their own broker messages find them running or finished and do nothing."""
    heads = session.scalars(
        select(Job)
        .where(Job.model == leader.model, Job.status == JobStatus.queued, Job.id != leader.id)
        .where(~model_paused(Job.model))
        .order_by(*RUN_ORDER)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    now = utcnow()
    taken: list[str] = []
    for job in heads:
        if not fits(job):
            break
        result = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.queued, ~model_paused(Job.model))
            .values(**_running_under(worker, now, lease_seconds))
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            taken.append(job.id)
    if not taken:
        return []
    session.expire_all()
    found = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(taken)))}
    return [found[i] for i in taken if i in found]


@dataclass(frozen=True)
class Acquired:
    """What a delivered message may do with its job."""

    job: Job | None = None  # claimed: run it
    busy_for: float | None = None  # a live worker holds it: look again in this many seconds
    paused: bool = False  # with busy_for: its model's queue is paused, it stays queued
    gave_up: Job | None = None  # its workers died max_attempts times: now failed
    # With `job`: the message's own job, still queued, whose message started `job` (the head
    # of their queue): publish it again (its enqueued_at is cleared, so a sweep would).
    passed_over: ToPublish | None = None
    # With busy_for: the queue's head, which this message may not run (its time limits are
    # the message's job's): publish a message for it at the top (taken: enqueued_at set).
    handoff: ToPublish | None = None


def acquire(
    *,
    session: Session,
    job_id: str,
    worker: str,
    lease_seconds: float,
    max_attempts: int,
    owner_alive: Callable[[str], bool],
    limited: bool = False,
) -> Acquired:
    """Claim for a delivered message, deciding the cases a bare claim cannot: another live
    worker runs it (come back later, never run it twice), its worker is known dead (take it
    at once), or workers died on it too often (a poison input: fail it with the reason).

    A queued job's message starts the head of its model's queue in RUN_ORDER, whichever job's
    message it is, so jobs start in the order their positions say whatever order their
    messages arrive in (late, retried during a pause, behind another tenant's): its own job
    if that is the head, else the head (`passed_over` then names its own job, to be published
    again). `limited`: the message carries time limits sized for its own job, so it starts a
    passed-over head only if that costs no more (else `handoff`)."""
    for _ in range(2):
        job = claim(
            session=session,
            job_id=job_id,
            worker=worker,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
            head_only=True,
        )
        if job is not None:
            return Acquired(job=job)
        job = session.get(Job, job_id, populate_existing=True)
        if job is not None and job.status is JobStatus.queued:
            if is_paused(session=session, model=job.model):
                return Acquired(busy_for=PAUSE_RECHECK_SECONDS, paused=True)
            got = _start_head(session, job, worker, lease_seconds, limited)
            if got is not None:
                return got
            continue  # it left the queue meanwhile, or its head was taken: look again
        if job is None or job.status is not JobStatus.running:
            return Acquired()  # finished, canceled, gone, or queued but used up (see below)
        now = utcnow()
        lapsed = job.lease_expires_at is None or job.lease_expires_at < now
        if not lapsed and job.lease_owner and owner_alive(job.lease_owner):
            assert job.lease_expires_at is not None
            return Acquired(busy_for=(job.lease_expires_at - now).total_seconds())
        if job.attempts >= max_attempts:
            failed = _finish(
                session=session,
                job_id=job_id,
                status=JobStatus.failed,
                values={
                    "error_code": "worker_lost",
                    "error_message": f"the worker running this job stopped {job.attempts} "
                    f"times (killed, crashed or out of memory); gave up after {max_attempts} "
                    "attempts, so this input may be what kills it",
                },
                expected_owner=job.lease_owner,
            )
            session.expire_all()
            return Acquired(gave_up=session.get(Job, job_id) if failed else None)
        # Its worker is dead but the lease has not run out: end the lease, then claim.
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == job.lease_owner)
            .values(lease_expires_at=now)
            .execution_options(synchronize_session=False)
        )
    job = session.get(Job, job_id, populate_existing=True)
    if job is not None and job.status is JobStatus.queued:  # never drop a queued job's message
        return Acquired(busy_for=HANDOFF_RECHECK_SECONDS)
    return Acquired()


def _start_head(
    session: Session, own: Job, worker: str, lease_seconds: float, limited: bool
) -> Acquired | None:
    """For the message of queued job `own`, which is not its queue's head: claim the head
    (on PostgreSQL skipping rows other claims hold), or hand it a message of its own when
    this one's time limits would not cover it. None: nothing was claimed (look again)."""
    head = session.scalars(
        select(Job)
        .where(Job.model == own.model, Job.status == JobStatus.queued, ~model_paused(Job.model))
        .order_by(*RUN_ORDER)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
    if head is None:
        return None
    now = utcnow()
    if head.id != own.id and limited and head.cost > own.cost:
        handed = session.execute(
            update(Job)
            .where(
                Job.id == head.id,
                Job.status == JobStatus.queued,
                or_(
                    Job.enqueued_at.is_(None),
                    Job.enqueued_at < now - timedelta(seconds=HANDOFF_SECONDS),
                ),
            )
            .values(enqueued_at=now)
            .execution_options(synchronize_session=False)
        )
        taken = handed.rowcount == 1  # type: ignore[attr-defined]
        top = ToPublish(head.id, head.model, PRIORITY_MAX)
        return Acquired(busy_for=HANDOFF_RECHECK_SECONDS, handoff=top if taken else None)
    result = session.execute(
        update(Job)
        .where(Job.id == head.id, Job.status == JobStatus.queued, ~model_paused(Job.model))
        .values(**_running_under(worker, now, lease_seconds))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    passed_over = None
    if head.id != own.id:  # its message is spent on the head: an outbox entry for it again
        session.execute(
            update(Job)
            .where(Job.id == own.id, Job.status == JobStatus.queued)
            .values(enqueued_at=None)
            .execution_options(synchronize_session=False)
        )
        passed_over = ToPublish(own.id, own.model, own.priority)
    session.expire_all()
    return Acquired(job=session.get(Job, head.id), passed_over=passed_over)


def is_paused(*, session: Session, model: str) -> bool:
    return session.get(PausedModel, model) is not None


def retry(*, session: Session, job_id: str) -> Job:
    """A new queued job with the parameters and options of a failed or canceled one, linked
    to it by `retry_of`; the caller publishes it."""
    old = get(session=session, job_id=job_id)
    if old.status not in RETRYABLE:
        raise Conflict(
            f"job {job_id!r} is {old.status.value}; only failed or canceled jobs are retried",
            param="id",
            code=RequestErrorCode.job_not_retryable,
        )
    job = Job(
        tenant_id=old.tenant_id,
        prompt=old.prompt,
        params=dict(old.params),
        model=old.model,
        cost=old.cost,
        status=JobStatus.queued,
        priority=old.priority,
        turn=next_turn(
            session=session, tenant_id=old.tenant_id, model=old.model, priority=old.priority
        ),
        client_metadata=old.client_metadata,
        webhook_url=old.webhook_url,
        webhook_events=list(old.webhook_events),
        metrics={},
        images=[],
        retry_of=old.id,
        inputs=old.inputs,  # an edit's stored objects, shared: only a failed submit deletes any
    )
    session.add(job)
    session.flush()
    return job


def record_params(*, session: Session, job_id: str, params: JobParams, worker: str) -> bool:
    """The parameters a worker completed (model defaults the API could not know), under its
    lease; the cost follows them."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running, Job.lease_owner == worker)
        .values(params=params.model_dump(mode="json"), cost=params.cost)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def renew_lease(*, session: Session, job_id: str, worker: str, lease_seconds: float) -> bool:
    """Extend this worker's lease; False if the job is no longer running under it."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running, Job.lease_owner == worker)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def _finish(
    *,
    session: Session,
    job_id: str,
    status: JobStatus,
    values: dict[str, Any],
    expected_owner: str | None = None,
) -> datetime | None:
    """running -> a terminal status; with `expected_owner`, only under that worker's lease,
    so a worker that lost its lease can never write results over another's."""
    now = utcnow()
    stmt = update(Job).where(Job.id == job_id, Job.status == JobStatus.running)
    if expected_owner is not None:
        stmt = stmt.where(Job.lease_owner == expected_owner)
    result = session.execute(
        stmt.values(
            status=status, finished_at=now, updated_at=now, lease_expires_at=None, **values
        ).execution_options(synchronize_session=False)
    )
    return now if result.rowcount == 1 else None  # type: ignore[attr-defined]


def succeed(
    *,
    session: Session,
    job_id: str,
    seed: int,
    images: Sequence[NewImage],
    metrics: dict[str, float],
    worker: str | None = None,
    repeat_key: str | None = None,
    reused_from: str | None = None,
) -> bool:
    """running -> succeeded with its images, in one transaction. False if no longer running
    (or, given `worker`, no longer under that worker's lease). `repeat_key`: what a later
    identical job will look it up by; `reused_from`: the job whose images these are copies of."""
    values = {"seed": seed, "metrics": metrics, "repeat_key": repeat_key}
    if (
        _finish(
            session=session,
            job_id=job_id,
            status=JobStatus.succeeded,
            values={**values, "reused_from": reused_from},
            expected_owner=worker,
        )
        is None
    ):
        return False
    session.add_all(JobImage(job_id=job_id, **vars(image)) for image in images)
    retention.add_job_images(
        session=session, job_id=job_id, byte_sizes=(image.byte_size for image in images)
    )
    session.flush()
    return True


def repeat_key(
    *,
    tenant_id: str | None,
    model: Mapping[str, Any],
    params: JobParams,
    seed: int,
    inputs: Mapping[str, Any] | None,
) -> str:
    """The one definition of an exact repeat: SHA-256 of the tenant, the model's identity
    (its name and weights, Settings.model_identity), the parameters with every default filled
    (`defaulted` aside: a value given and the same value defaulted draw the same), the base
    seed actually used, and an edit's input images by content. Jobs with the same key draw the
    same images."""
    canonical = {
        "tenant": tenant_id,
        "model": dict(model),
        "params": params.model_dump(mode="json", exclude={"defaulted", "seed"}),
        "seed": seed,
        # By content; an input stored without its digest only repeats itself (its key).
        "inputs": {
            role: record.get("sha256") or record.get("key")
            for role, record in (inputs or {}).items()
        },
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def find_repeat(*, session: Session, tenant_id: str | None, key: str, job_id: str) -> Job | None:
    """The latest succeeded job of the tenant with this repeat key, other than `job_id`."""
    tenant = Job.tenant_id.is_(None) if tenant_id is None else Job.tenant_id == tenant_id
    return session.scalars(
        select(Job)
        .where(
            Job.repeat_key == key,
            tenant,
            Job.status == JobStatus.succeeded,
            Job.id != job_id,
        )
        .order_by(Job.finished_at.desc())
        .limit(1)
    ).first()


def fail(
    *,
    session: Session,
    job_id: str,
    code: str,
    message: str,
    metrics: dict[str, float],
    worker: str | None = None,
) -> bool:
    """running -> failed with a reason. False if no longer running (or not under `worker`)."""
    return (
        _finish(
            session=session,
            job_id=job_id,
            status=JobStatus.failed,
            values={"error_code": code, "error_message": message[:4000], "metrics": metrics},
            expected_owner=worker,
        )
        is not None
    )


# --- outbox and sweeper -------------------------------------------------------------------


@dataclass(frozen=True)
class ToPublish:
    job_id: str
    model: str
    priority: int


def mark_enqueued(*, session: Session, job_id: str) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(enqueued_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def mark_enqueued_many(*, session: Session, job_ids: Sequence[str]) -> None:
    """mark_enqueued for several jobs in one statement (moments after they were published)."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(list(job_ids)))
            .values(enqueued_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def mark_unpublished(*, session: Session, job_id: str) -> None:
    """A sweeper took the job but could not publish it: the next sweep takes it again."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(ACTIVE))
        .values(enqueued_at=None)
        .execution_options(synchronize_session=False)
    )


def take_for_republish(
    *,
    session: Session,
    unpublished_before: datetime,
    stale_before: datetime,
    lapsed_before: datetime | None = None,
    limit: int = 100,
) -> list[ToPublish]:
    """Jobs whose message may be lost, each taken by one sweeper only (a conditional UPDATE
    of `enqueued_at`): queued and never confirmed published; queued and published so long ago
    the broker must have lost it; running under a lease that lapsed long ago; and, with
    `lapsed_before`, running under a lease that lapsed before it and not published since
    (its worker died while its message was out of reach, e.g. the broker connection dropped:
    the message sits unacked until the visibility timeout). Taken once per lapsed lease."""
    lapsed = (
        and_(
            Job.status == JobStatus.running,
            Job.lease_expires_at < lapsed_before,
            or_(Job.enqueued_at.is_(None), Job.enqueued_at < Job.lease_expires_at),
        )
        if lapsed_before is not None
        else false()
    )
    candidates = session.execute(
        select(Job.id, Job.model, Job.priority, Job.enqueued_at)
        .where(
            or_(
                # A paused model's queued jobs are left alone: their messages come back every
                # few seconds by themselves; the sweep takes them again after the resume.
                and_(
                    Job.status == JobStatus.queued,
                    Job.enqueued_at.is_(None),
                    Job.created_at < unpublished_before,
                    ~model_paused(Job.model),
                ),
                and_(
                    Job.status == JobStatus.queued,
                    Job.enqueued_at < stale_before,
                    ~model_paused(Job.model),
                ),
                and_(
                    Job.status == JobStatus.running,
                    Job.lease_expires_at < stale_before,
                    or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale_before),
                ),
                lapsed,
            )
        )
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    taken = []
    for job_id, model, priority, seen in candidates:
        same = Job.enqueued_at.is_(None) if seen is None else Job.enqueued_at == seen
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, same)
            .values(enqueued_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            taken.append(ToPublish(job_id, model, priority))
    return taken

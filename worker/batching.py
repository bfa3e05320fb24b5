"""Batching: compatible queued jobs run in the leader's pipeline call.

The executor claims one job (the leader); when batching is on, the queued jobs behind it that
share its batch key join it, up to the images its model denoises at once. Each joined job is
claimed by the same conditional UPDATE as the leader (db/jobs.py: claim_companions), with its
`started` event in the same transaction; its own broker message later finds it running or
finished and does nothing. What a batch member does at each step, and how it ends, stays the
executor's (worker/executor.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from daikon.contract import JobParams, WebhookEvent
from db import jobs
from db.session import session_scope
from server.requests import fill_defaults
from server.settings import Settings
from worker.job_webhooks import JobEvents, StepHook
from worker.runtime import ModelRuntime

log = logging.getLogger(__name__)

BatchKey = Callable[[JobParams], tuple[object, ...] | None]


class BatchStopped(Exception):
    """Every member of the call stopped: the pipeline call ends at this step."""


@dataclass(frozen=True)
class Companion:
    """A queued job claimed to run in the leader's call, its `started` event recorded."""

    job: jobs.Job
    params: JobParams
    progress: StepHook | None


@dataclass
class Batcher:
    """Claims the leader's companions for one pipeline call."""

    sessions: sessionmaker[Session]
    worker_name: str
    lease_seconds: float
    settings: Settings  # the model table's defaults, for jobs queued before they were known
    webhooks: JobEvents
    announce: Callable[[str], None]  # a claimed job's change, told once it committed
    # A batch that is not full waits this long for company, only while other jobs are queued.
    wait_seconds: float
    sleep: Callable[[float], None]

    def companions(
        self, leader: jobs.Job, params: JobParams, runtime: ModelRuntime
    ) -> list[Companion]:
        """Queued jobs that run in the leader's pipeline call: same batch key, first attempt,
        and together no more images than the model denoises at once. Waits `wait_seconds` once
        for more, only while the queue is giving some (under load; never when no other job is
        queued)."""
        capacity = runtime.limits.images_per_call

        def key(p: JobParams) -> tuple[object, ...] | None:
            # What the job will run with: a job queued before any worker published the model's
            # defaults gets them now, as it would when run (the executor records them).
            filled = (
                p if p.complete else fill_defaults(p, self.settings, runtime.generator.capabilities)
            )
            return filled.batch_key

        leader_key = key(params)
        if leader_key is None:
            return []
        room = capacity - params.candidates
        taken, room, drained = self._claim_round(leader, leader_key, key, room, capacity)
        if taken and drained and room > 0 and self.wait_seconds > 0:
            self.sleep(self.wait_seconds)
            more, room, _ = self._claim_round(leader, leader_key, key, room, capacity)
            taken += more
        if taken:
            log.info("job %s runs with %d queued jobs in one call", leader.id, len(taken))
        return taken

    def _claim_round(
        self,
        leader: jobs.Job,
        leader_key: tuple[object, ...],
        key: BatchKey,
        room: int,
        capacity: int,
    ) -> tuple[list[Companion], int, bool]:
        """Claim what fits now, with each job's `started` event. Returns the companions, the
        room left and whether the queue ran dry (rather than a job that does not fit ending
        it)."""
        ended = False
        validated: dict[str, JobParams] = {}

        def fits(job: jobs.Job) -> bool:
            nonlocal room, ended
            other = validated[job.id] = JobParams.model_validate(job.params)
            if key(other) != leader_key or other.candidates > room:
                ended = True
                return False
            room -= other.candidates
            return True

        taken: list[Companion] = []
        sent: list[str] = []
        if room > 0:
            with session_scope(self.sessions) as session:
                for job in jobs.claim_companions(
                    session=session,
                    leader=leader,
                    worker=self.worker_name,
                    lease_seconds=self.lease_seconds,
                    fits=fits,
                    limit=capacity,
                ):
                    taken.append(
                        Companion(job, validated[job.id], self.webhooks.progress_hook(job))
                    )
                    if job.webhook_url:  # else nothing to record, and no read-back for it
                        sent += self.webhooks.record(session, job.id, WebhookEvent.started)
        for companion in taken:
            self.announce(companion.job.id)
        self.webhooks.send(sent)
        return taken, room, not ended

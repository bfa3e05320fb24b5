"""The sweeper: the last safety net for jobs whose message was lost.

It runs in each worker's main process and, every DAIKON_SWEEP_INTERVAL_SECONDS, publishes again
(1) queued jobs never confirmed published (the API died between commit and publish), and
(2) running jobs whose lease lapsed a whole DAIKON_LEASE_SECONDS ago, once per lapsed lease
(their worker is gone and their message may sit unacked in the broker until its visibility
timeout, e.g. after the broker connection dropped mid-job), and
(3) jobs stuck longer than DAIKON_STALE_JOB_SECONDS: queued with a message the broker lost, or
running under a lease that lapsed long ago. Its threshold is above the broker's visibility
timeout (checked in Settings), so it only acts once the broker has had its chance to redeliver.
Each job is taken by one sweeper only (a conditional UPDATE), and a second message is harmless.

Each round it also applies retention (`purge_once`, db/retention.py): ended jobs past their
period (DAIKON_RETAIN_*_HOURS) lose their rows, then their storage objects, a bounded batch a
round; a crash between the two is finished by the next round.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from daikon.contract import JobStatus
from db import jobs, retention
from db.models import utcnow
from db.session import session_scope
from server.celery_config import publish_job
from server.settings import Settings
from server.storage import ImageStore, make_store

log = logging.getLogger(__name__)


def sweep_once(app: Celery, settings: Settings, sessions: sessionmaker[Session]) -> int:
    """Publish every job that needs it now; the number published."""
    now = utcnow()
    with session_scope(sessions) as session:
        taken = jobs.take_for_republish(
            session=session,
            unpublished_before=now - timedelta(seconds=settings.worker.republish_after_seconds),
            stale_before=now - timedelta(seconds=settings.worker.stale_job_seconds),
            # A whole lease past its end: its holder is gone (a live one renews every third).
            lapsed_before=now - timedelta(seconds=settings.worker.lease_seconds),
        )
    published = 0
    for job in taken:
        try:
            publish_job(app, settings, job_id=job.job_id, model=job.model, priority=job.priority)
        except Exception as e:  # the broker is down: hand the job back for the next round
            log.warning("sweeper: could not publish job %s (%s); will try again", job.job_id, e)
            with session_scope(sessions) as session:
                jobs.mark_unpublished(session=session, job_id=job.job_id)
            continue
        published += 1
        log.warning("sweeper: published job %s again (its message may have been lost)", job.job_id)
    return published


def retention_periods(settings: Settings) -> dict[JobStatus, timedelta]:
    """Each ended status's period; a status kept forever (0) has none."""
    hours = settings.retention
    periods = {
        JobStatus.canceled: hours.retain_canceled_hours,
        JobStatus.failed: hours.retain_failed_hours,
        JobStatus.succeeded: hours.retain_succeeded_hours,
    }
    return {status: timedelta(hours=h) for status, h in periods.items() if h > 0}


@dataclass(frozen=True)
class Purged:
    jobs: int  # rows deleted this round
    objects: int  # storage objects deleted this round (this round's and earlier rounds')
    left: int  # objects still waiting (storage failed, or more than one batch)


def purge_once(
    settings: Settings,
    sessions: sessionmaker[Session],
    store: ImageStore,
    *,
    now: datetime | None = None,
) -> Purged:
    """One round of retention: delete expired jobs' rows (recording their objects), then
    delete the recorded objects whose grace is over (retention.OBJECT_GRACE: rows deleted in
    an earlier round, or left by a crash or a storage outage), at most DAIKON_RETENTION_BATCH
    jobs and four times as many objects. `now`: the time the round acts at (tests)."""
    now = now or utcnow()
    batch = settings.retention.retention_batch
    periods = retention_periods(settings)
    expired = retention.Expired(0, 0)
    if periods:
        with session_scope(sessions) as session:
            expired = retention.expire(session=session, periods=periods, now=now, limit=batch)
    with session_scope(sessions) as session:
        pending = retention.take_deletions(session=session, limit=batch * 4, now=now)
    done: list[int] = []
    try:
        for item in pending:
            store.delete(item.key)  # a missing object is no error: it is what we want
            done.append(item.id)
    except Exception as e:  # storage down: the rest wait for the next round
        log.warning("retention: could not delete stored objects (%s); will try again", e)
    finally:
        if done:
            with session_scope(sessions) as session:
                retention.forget_deletions(session=session, ids=done)
    if expired.jobs or done:
        log.info(
            "retention: deleted %d expired jobs and %d stored objects", expired.jobs, len(done)
        )
    return Purged(expired.jobs, len(done), len(pending) - len(done))


class Sweeper:
    def __init__(
        self,
        app: Celery,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: ImageStore | None = None,
    ):
        self.app, self.settings, self.sessions = app, settings, sessions
        self._store = store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="daikon-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.worker.sweep_interval_seconds):
            try:
                sweep_once(self.app, self.settings, self.sessions)
            except Exception as e:  # database or broker down: try again next round
                log.warning("sweeper: %s", e)
            try:
                if self._store is None:
                    self._store = make_store(self.settings, create_bucket=False)
                purge_once(self.settings, self.sessions, self._store)
            except Exception as e:  # database or storage down: try again next round
                log.warning("retention: %s", e)

"""The lease: a running job is held by one worker while that worker keeps renewing it.

A worker that dies stops renewing; once the lease lapses another worker takes the job over
(db/jobs.py: acquire). The renewing runs on a thread, beside the pipeline on the main thread.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from sqlalchemy.orm import Session, sessionmaker

from db import jobs
from db.session import session_scope

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Raised from the step callback when this worker no longer holds the job's lease."""


def same_host_owner_alive(owner: str) -> bool:
    """Whether the worker process named "host:pid" may still be alive. On this host we can
    tell (a killed pool process frees its job at once); elsewhere only its lease can."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LeaseKeeper:
    """Renews the leases of the jobs a worker runs (one, or a batch) from a thread while the
    pipeline runs on the main thread; a job whose lease is lost is marked, the others go on."""

    def __init__(
        self, sessions: sessionmaker[Session], job_ids: list[str], worker: str, seconds: float
    ):
        self.sessions, self.worker, self.seconds = sessions, worker, seconds
        self._lost = {job_id: threading.Event() for job_id in job_ids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{job_ids[0]}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def lost(self, job_id: str) -> bool:
        return self._lost[job_id].is_set()

    def _loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            for job_id, lost in self._lost.items():
                if lost.is_set():
                    continue
                try:
                    with session_scope(self.sessions) as session:
                        held = jobs.renew_lease(
                            session=session,
                            job_id=job_id,
                            worker=self.worker,
                            lease_seconds=self.seconds,
                        )
                except Exception as e:  # the database is down: keep trying while it lasts
                    log.warning("could not renew the lease of job %s: %s", job_id, e)
                    continue
                if not held:
                    lost.set()
            if all(lost.is_set() for lost in self._lost.values()):
                return

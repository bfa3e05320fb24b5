"""Confirming published jobs in batches: `enqueued_at` is the outbox's "published" mark
(db/jobs.py). Setting it with its own transaction after every publish cost a submission a
second commit; one thread per API process sets it for every job published meanwhile, in one
UPDATE, a few milliseconds later. A mark that is lost (the process dies first, the database is
briefly unreachable) costs what the outbox already allows: the sweeper publishes that job once
more after DAIKON_REPUBLISH_AFTER_SECONDS, and the claim runs it once."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time

from sqlalchemy.orm import Session, sessionmaker

from db import jobs
from db.session import session_scope

log = logging.getLogger("daikon.api")
BATCH_MAX = 500
GATHER_SECONDS = 0.02


class EnqueuedMarks:
    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions
        self._pending: list[str] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, job_id: str) -> None:
        """Mark `job_id` published, soon."""
        with self._cond:
            self._pending.append(job_id)
            if self._thread is None or self._pid != os.getpid():  # none yet, or forked
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="enqueued-marks", daemon=True
                )
                self._thread.start()
                atexit.register(self.flush)
            self._cond.notify()

    def flush(self) -> None:
        """Write every pending mark now (also at exit: a clean stop loses none)."""
        with self._cond:
            batch, self._pending = self._pending, []
        for start in range(0, len(batch), BATCH_MAX):
            chunk = batch[start : start + BATCH_MAX]
            try:
                with session_scope(self.sessions) as session:
                    jobs.mark_enqueued_many(session=session, job_ids=chunk)
            except Exception as e:  # the sweeper publishes these once more: harmless
                log.warning("could not mark %d published jobs: %s", len(chunk), e)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
            time.sleep(GATHER_SECONDS)  # let the submissions in flight join this batch
            self.flush()

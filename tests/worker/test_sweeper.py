"""The sweeper against a broker that refuses, then accepts: nothing it took is dropped."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, update

from db import jobs
from db.models import Job, utcnow
from db.session import make_session_factory, session_scope
from server.settings import Settings
from tests.factories import make_job
from worker.sweeper import sweep_once


class Broker:
    def __init__(self) -> None:
        self.up = False
        self.sent: list[str] = []

    def send_task(self, name: str, args: list[Any], **_: Any) -> None:
        if not self.up:
            raise ConnectionError("Error 111 connecting to the broker. Connection refused.")
        self.sent.append(args[0])


def test_a_job_the_sweeper_could_not_publish_is_taken_again(db_engine: Engine) -> None:
    sessions = make_session_factory(db_engine)
    settings = Settings(lease_seconds=5, republish_after_seconds=1)
    with session_scope(sessions) as s:
        job_id = make_job(s).id  # its worker died mid-job while the broker was down
        jobs.claim(session=s, job_id=job_id, worker="gone:1", lease_seconds=-60)
        s.execute(
            update(Job).where(Job.id == job_id).values(enqueued_at=utcnow() - timedelta(minutes=5))
        )
    broker = Broker()
    sweep_once(broker, settings, sessions)  # type: ignore[arg-type]
    assert broker.sent == []
    broker.up = True
    sweep_once(broker, settings, sessions)  # type: ignore[arg-type]
    assert broker.sent.count(job_id) == 1  # taken again, although the first take failed
    sweep_once(broker, settings, sessions)  # type: ignore[arg-type]
    assert broker.sent.count(job_id) == 1  # and published once
    with session_scope(sessions) as s:
        s.delete(s.get(Job, job_id))

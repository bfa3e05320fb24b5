"""Webhook delivery against real receivers on loopback and a real database, run in-process with
a controllable clock: the whole retry schedule is driven in milliseconds, with no sleeping.
The API (in-process) raises the events and lists the attempts, as a client would see them."""

from __future__ import annotations

import email.utils
import ipaddress
import itertools
import json
import random
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import WebhookVerificationError

from daikon.contract import WebhookEvent
from daikon.webhooks import DeliveryStatus
from db import deliveries, jobs
from db.deliveries import Outbox
from db.session import session_scope
from server.job_view import EventRenderer, Links
from server.storage import LocalStore
from tests.apps import authed
from tests.receiver import Reply, receiver
from tests.webhook_rig import BODY, Rig, make_rig
from worker.executor import JobExecutor, Outcome
from worker.job_webhooks import JobWebhooks
from worker.runtime import ModelLoadError


@pytest.fixture
def rig(request: pytest.FixtureRequest, make_app, queue_name: str) -> Rig:  # type: ignore[no-untyped-def]
    overrides: dict[str, Any] = {
        "webhook_queue": f"{queue_name}-wh",
        "webhook_allow_hosts": "127.0.0.1",
        "webhook_timeout_seconds": 2.0,
    }
    if getattr(request, "param", "sqlite") == "postgres":
        overrides["database_url"] = request.getfixturevalue("postgres_url")
    return make_rig(make_app(**overrides))


@pytest.fixture
def other() -> Iterator[Any]:
    """A second receiver: a redirect target that must never be reached."""
    with receiver() as r:
        yield r


@pytest.mark.parametrize("rig", ["sqlite", "postgres"], indirect=True)
def test_a_receiver_failing_three_times_gets_one_success_with_one_webhook_id(
    rig: Rig, other: Any
) -> None:
    secret = rig.secret()
    script = [Reply(500), Reply(503), Reply(302, {"Location": other.url()}), Reply(200)]
    with receiver(*script) as r:
        d = rig.event(r.url())
        assert rig.deliverer.deliver(d) is DeliveryStatus.pending  # 500
        assert [p[0] for p in rig.published] == [d]  # 5 s: a broker countdown
        assert rig.deliverer.deliver(d) is None  # a duplicate message early: nothing sent
        rig.clock.advance(5)
        assert rig.pump() == [DeliveryStatus.pending]  # 503; 5 min is the dispatcher's
        assert rig.published == []
        rig.clock.advance(299)
        assert rig.pump() == [] and len(r.received) == 2
        rig.clock.advance(1)
        assert rig.pump() == [DeliveryStatus.pending]  # 302: not followed, a failure
        rig.clock.advance(1800)
        assert rig.pump() == [DeliveryStatus.delivered]
        rig.clock.advance(100 * 3600)
        assert rig.pump() == [] and rig.deliverer.deliver(d) is None

        assert len(r.received) == 4 and other.connections == 0
        assert {m.id for m in r.received} == {d} and len({m.body for m in r.received}) == 1
        payloads = [m.verify(secret) for m in r.received]
    job = rig.client.get(f"/v1/jobs/{payloads[0]['data']['id']}").get_json()
    assert payloads[0]["type"] == "job.canceled" and payloads[0]["data"] == job

    listed = rig.delivery(d)
    assert (listed["status"], listed["attempt_count"], listed["next_attempt_at"]) == (
        "delivered",
        4,
        None,
    )
    log = listed["attempts"]
    assert [a["status_code"] for a in log] == [500, 503, 302, 200]
    assert [a["attempt"] for a in log] == [1, 2, 3, 4] and all(a["error"] is None for a in log)
    starts = [datetime.fromisoformat(a["started_at"]) for a in log]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    for gap, planned in zip(gaps, [5, 300, 1800], strict=True):
        assert planned <= gap < planned + 2
    assert log[-1]["next_attempt_at"] is None and log[0]["next_attempt_at"] is not None


def test_the_whole_schedule_with_jitter_then_failed(rig: Rig) -> None:
    rig.deliverer.rng = random.Random(11)
    with receiver(default=Reply(500, body=b"down")) as r:
        d = rig.event(r.url())
        rig.deliverer.deliver(d)
        for _ in range(12):
            rig.pump()
            state = rig.delivery(d)
            if state["status"] != "pending":
                break
            due = datetime.fromisoformat(state["next_attempt_at"])
            rig.clock.advance((due - rig.clock()).total_seconds() + 1)
        assert len(r.received) == 8 and {m.id for m in r.received} == {d}
    state = rig.delivery(d)
    assert (state["status"], state["attempt_count"], state["last_status_code"]) == (
        "failed",
        8,
        500,
    )
    starts = [datetime.fromisoformat(a["started_at"]) for a in state["attempts"]]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    for gap, planned in zip(gaps, [5, 300, 1800, 7200, 18000, 36000, 36000], strict=True):
        assert planned <= gap <= planned * 1.1 + 2
    assert len({round(g / p, 3) for g, p in zip(gaps[2:5], [1800, 7200, 18000], strict=True)}) > 1
    assert (starts[-1] - starts[0]) >= timedelta(hours=27)
    # A loopback receiver is reached through the allowlist: its answer's length, not its text.
    first = state["attempts"][0]
    assert (first["response_excerpt"], first["response_bytes"]) == (None, len("down"))


def test_410_disables_the_url_until_an_admin_redelivers(rig: Rig) -> None:
    with receiver(Reply(410), Reply(200)) as r:
        first = rig.event(r.url())
        assert rig.deliverer.deliver(first) is DeliveryStatus.disabled
        assert rig.published == [] and rig.pump() == []
        second = rig.event(r.url())  # a later event to the same URL is recorded, not sent
        assert rig.deliverer.deliver(second) is None and len(r.received) == 1
        state = rig.delivery(second)
        assert (state["status"], state["attempt_count"]) == ("disabled", 0)
        assert "410" in state["last_error"]

        again = authed(rig.app).post(f"/v1/admin/webhooks/{first}/redeliver")
        assert again.status_code == 202 and again.get_json()["status"] == "pending"
        assert rig.deliverer.deliver(first) is DeliveryStatus.delivered
        assert [m.id for m in r.received] == [first, first]
        assert rig.delivery(first)["attempt_count"] == 2
        third = rig.event(r.url())  # the URL is enabled again
        assert rig.delivery(third)["status"] == "pending"


def test_429_and_503_retry_after_postpone_the_next_attempt(rig: Rig) -> None:
    later = rig.clock() + timedelta(seconds=3600 + 7200)
    script = [
        Reply(429, {"Retry-After": "3600"}),
        Reply(503, {"Retry-After": email.utils.format_datetime(later, usegmt=True)}),
        Reply(200),
    ]
    with receiver(*script) as r:
        d = rig.event(r.url())
        assert rig.deliverer.deliver(d) is DeliveryStatus.pending
        assert rig.published == []  # an hour away: the database holds it, not the broker
        rig.clock.advance(3595)
        assert rig.pump() == []
        rig.clock.advance(6)
        assert rig.pump() == [DeliveryStatus.pending]  # 503 until `later`, not 5 min
        rig.clock.advance(7190)
        assert rig.pump() == []
        rig.clock.advance(12)
        assert rig.pump() == [DeliveryStatus.delivered] and len(r.received) == 3


def test_a_name_rebound_to_loopback_is_refused_without_connecting(make_app, queue_name) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(make_app(webhook_queue=f"{queue_name}-wh"))  # no allowlist
    rig.deliverer.resolver = lambda host, port: [ipaddress.ip_address("127.0.0.1")]
    with receiver() as r:
        # Passed at submit (the name did not resolve then); now it resolves to loopback.
        d = rig.event(f"http://rebind.example.invalid:{r.port}/hook")
        assert rig.deliverer.deliver(d) is DeliveryStatus.pending
        # Allowed when submitted, no longer allowed when delivered.
        allowed = make_rig(
            make_app(webhook_queue=f"{queue_name}-wh", webhook_allow_hosts="127.0.0.1")
        )
        literal = allowed.event(r.url())
        assert rig.deliverer.deliver(literal) is DeliveryStatus.pending
        assert r.connections == 0 and r.received == []
    rebound = rig.delivery(d)["attempts"][0]
    assert rebound["status_code"] is None and "127.0.0.1" not in rebound["error"]
    assert rebound["error"].startswith("refused: rebind.example.invalid resolves to a loopback")
    assert "loopback" in allowed.delivery(literal)["attempts"][0]["error"]


def test_answers_are_read_only_up_to_a_cap_and_a_hanging_receiver_times_out(rig: Rig) -> None:
    huge = b"x" * 2_000_000
    with receiver(Reply(200, body=huge), Reply(200, delay=5)) as r:
        d = rig.event(r.url())
        assert rig.deliverer.deliver(d) is DeliveryStatus.delivered
        attempt = rig.delivery(d)["attempts"][0]
        assert (attempt["response_excerpt"], attempt["response_bytes"]) == (None, 4096)

        rig.deliverer.settings = rig.deliverer.settings.evolve(webhook_timeout_seconds=0.5)
        slow = rig.event(r.url())
        assert rig.deliverer.deliver(slow) is DeliveryStatus.pending
    attempt = rig.delivery(slow)["attempts"][0]
    assert attempt["error"] == "timed out after 0.5 s" and attempt["duration_ms"] < 1500


def test_after_a_rotation_both_secrets_sign_until_the_overlap_ends(rig: Rig) -> None:
    with receiver() as r:
        old = rig.secret()
        rig.deliverer.deliver(rig.event(r.url()))
        new = rig.secret()
        rig.deliverer.deliver(rig.event(r.url()))
        rig.clock.advance(24 * 3600 + 60)  # past the overlap
        rig.deliverer.deliver(rig.event(r.url()))
        before, during, after = r.wait_for(3)
    assert len(before.headers["webhook-signature"].split()) == 1 and before.verify(old)
    assert len(during.headers["webhook-signature"].split()) == 2
    assert during.verify(old) == during.verify(new)
    assert after.verify(new)
    with pytest.raises(WebhookVerificationError):
        after.verify(old)


def test_dispatchers_never_share_an_attempt_and_a_lost_one_comes_back(rig: Rig) -> None:
    twin = make_rig(rig.app, webhook_allow_hosts="127.0.0.1")
    twin.clock = twin.deliverer.clock = rig.clock
    with receiver() as r:
        d = rig.event(r.url())  # its broker message is never consumed here: "lost"
        rig.clock.advance(60)
        assert rig.deliverer.dispatch() == []  # the message may still be on its way
        rig.clock.advance(61)
        assert (rig.deliverer.dispatch(), twin.deliverer.dispatch()) == ([d], [])

        # A worker claims the attempt and dies before sending: the lease runs out, and the
        # dispatcher hands the delivery on.
        with session_scope(rig.app.extensions["daikon"].sessions) as s:
            deliveries.claim_attempt(
                session=s, delivery_id=d, now=rig.clock(), lease=timedelta(seconds=32)
            )
        assert twin.deliverer.deliver(d) is None and twin.deliverer.dispatch() == []
        rig.clock.advance(121)
        assert twin.deliverer.dispatch() == [d] and twin.pump() == [DeliveryStatus.delivered]

        # The same due attempt, claimed by eight threads at once, is sent once.
        e = rig.event(r.url())
        results: list[DeliveryStatus | None] = []
        threads = [
            threading.Thread(target=lambda: results.append(rig.deliverer.deliver(e)))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count(DeliveryStatus.delivered) == 1 and results.count(None) == 7
        assert [m.id for m in r.received] == [d, e]


def test_a_failed_job_sends_started_and_failed_recorded_with_its_state(
    rig: Rig, tmp_path: Path
) -> None:
    svc = rig.app.extensions["daikon"]
    published: list[str] = []
    hooks = JobWebhooks(
        outbox=Outbox(EventRenderer(Links("", svc.store, svc.signing_key, 60)), published.append),
        publish_progress=lambda *a: None,
    )

    def broken(model: str) -> Any:
        raise ModelLoadError("cannot load pipeline '/nowhere'")

    events = ["job.started", "job.failed"]
    r = rig.client.post(
        "/v1/jobs",
        json={**BODY, "webhook_url": "https://93.184.215.14/h", "webhook_events": events},
    )
    job_id = r.get_json()["id"]
    executor = JobExecutor(
        sessions=svc.sessions,
        store=LocalStore(tmp_path),
        runtime=broken,
        worker_name="w",
        webhooks=hooks,
    )
    assert executor.run(job_id) is Outcome.failed
    assert executor.run(job_id) is Outcome.skipped  # a redelivered message adds no event
    listed = rig.listing(job_id)
    assert [d["event"] for d in listed] == ["job.started", "job.failed"]
    assert published == [d["id"] for d in listed]
    with session_scope(svc.sessions) as s:
        bodies = [deliveries.get(session=s, delivery_id=d["id"]).payload for d in listed]
        job = jobs.get(session=s, job_id=job_id)
    started, failed = (json.loads(b) for b in bodies)
    assert started["data"]["status"] == "running" and started["data"]["progress"]["step"] == 0
    assert failed["data"]["status"] == "failed"
    assert failed["data"]["error"]["code"] == "model_load_failed"
    assert failed["timestamp"] == job.finished_at.isoformat().replace("+00:00", "Z")
    assert WebhookEvent(failed["type"]) is WebhookEvent.failed


def test_a_backlog_is_dispatched_in_batches_within_one_tick(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker.webhooks.deliver.DISPATCH_BATCH", 2)
    with receiver() as r:
        lost = {rig.event(r.url()) for _ in range(5)}  # their messages never arrive
        rig.clock.advance(121)
        assert set(rig.deliverer.dispatch()) == lost and len(rig.published) == 5
        assert rig.pump() == [DeliveryStatus.delivered] * 5
        assert {m.id for m in r.received} == lost


def test_every_loopback_spelling_is_refused_at_delivery_without_a_connection(
    make_app, queue_name: str
) -> None:  # type: ignore[no-untyped-def]
    # Accepted when submitted (an allowlist trusted loopback then); delivered by a worker whose
    # settings trust nothing.
    trusting = make_rig(
        make_app(webhook_queue=f"{queue_name}-wh", webhook_allow_hosts="127.0.0.0/8,::1,localhost")
    )
    strict = make_rig(trusting.app, webhook_allow_hosts="")
    spellings = [
        "127.0.0.1",
        "2130706433",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "127.1",
        "[::ffff:127.0.0.1]",
        "[::1]",
        "localhost",
        "LocalHost.",
    ]
    with receiver() as r:
        ids = {h: trusting.event(f"http://{h}:{r.port}/hook") for h in spellings}
        outcomes = {h: strict.deliverer.deliver(d) for h, d in ids.items()}
        assert r.connections == 0
    assert outcomes == dict.fromkeys(spellings, DeliveryStatus.pending)
    errors = {h: trusting.delivery(d)["attempts"][0]["error"] for h, d in ids.items()}
    assert all(e.startswith("refused: ") and "loopback" in e for e in errors.values()), errors

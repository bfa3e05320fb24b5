"""Fair webhook delivery: the slots of endpoints and tenants and the circuit breaker, against
the real Redis (worker/webhooks/gate.py), and the deliverer with them against real receivers on
loopback (some that accept and never answer) and a real database, on a controllable clock."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import redis

from daikon.webhooks import DeliveryStatus
from db import deliveries
from db.session import session_scope
from tests.receiver import hanging, receiver
from tests.webhook_rig import Rig, make_rig
from worker.webhooks.deliver import GIVE_UP_AFTER
from worker.webhooks.gate import BUSY_RETRY_CAP_SECONDS, Endpoint, Gates, Outcome, Verdict

NOW = 1_800_000_000.0


@pytest.fixture
def gates(redis_client: redis.Redis, queue_name: str) -> Gates:
    return Gates(
        client=redis_client,
        namespace=f"{queue_name}-wh",
        endpoint_slots=2,
        tenant_slots=3,
        lease=45.0,
        busy_retry=2.0,
        failures=3,
        open_seconds=30.0,
        max_open_seconds=100.0,
    )


def ep(tenant: str, port: int) -> Endpoint:
    return Endpoint.of(tenant, f"https://hooks.example.com:{port}/path?x=1")


def test_endpoints_are_a_tenants_origin() -> None:
    a = Endpoint.of("t1", "https://Hooks.Example.com/a")
    assert a == Endpoint.of("t1", "https://hooks.example.com.:443/b?c=d")
    assert a.origin == "https://hooks.example.com:443"
    assert a != Endpoint.of("t2", "https://hooks.example.com/a")  # never shared by tenants
    assert a != Endpoint.of("t1", "http://hooks.example.com/a")
    assert Endpoint.of("t1", "http://[::1]:99999/x").origin == "http://[::1]:99999/x"  # unreadable


def test_slots_are_capped_per_endpoint_and_per_tenant_and_given_back(gates: Gates) -> None:
    one, two, three = ep("a", 1), ep("a", 2), ep("a", 3)
    first, second = gates.enter(one, who="d1", now=NOW), gates.enter(one, who="d2", now=NOW)
    assert (first.verdict, second.verdict) == (Verdict.go, Verdict.go)
    third = gates.enter(one, who="d3", now=NOW)
    assert (third.verdict, third.why) == (Verdict.busy, "endpoint")
    assert gates.held(one, now=NOW) == (2, 2)
    other = gates.enter(two, who="d4", now=NOW)  # the tenant's third slot
    assert other.verdict is Verdict.go and gates.held(two, now=NOW) == (1, 3)
    full = gates.enter(three, who="d5", now=NOW)
    assert (full.verdict, full.why) == (Verdict.busy, "tenant")
    elsewhere = gates.enter(ep("b", 1), who="d6", now=NOW)  # another tenant is not held up
    assert elsewhere.verdict is Verdict.go

    assert gates.leave(one, first, Outcome.answered, now=NOW) == "closed"
    assert gates.leave(one, first, Outcome.answered, now=NOW) == "closed"  # twice: no harm
    assert gates.held(one, now=NOW) == (1, 2)
    assert gates.enter(three, who="d5", now=NOW).verdict is Verdict.go
    assert gates.leave(one, third, Outcome.answered, now=NOW) == "unchanged"  # held nothing
    assert gates.held(one, now=NOW) == (1, 3)


def test_a_dead_workers_slots_come_back_when_their_lease_ends(gates: Gates) -> None:
    one = ep("a", 1)
    for who in ("d1", "d2"):  # taken by a worker that dies: never given back
        assert gates.enter(one, who=who, now=NOW).verdict is Verdict.go
    assert gates.enter(one, who="d3", now=NOW + 44).verdict is Verdict.busy
    assert gates.held(one, now=NOW + 45) == (0, 0)
    assert gates.enter(one, who="d3", now=NOW + 45.5).verdict is Verdict.go


def test_waiters_come_back_in_turns_never_later_than_the_cap(gates: Gates) -> None:
    one = ep("a", 1)
    gates.enter(one, who="d1", now=NOW), gates.enter(one, who="d2", now=NOW)
    waits = [gates.enter(one, who=f"w{i}", now=NOW).wait for i in range(40)]
    assert waits[:4] == [2.0, 2.0, 4.0, 4.0]  # two slots: two waiters a turn
    assert waits == sorted(waits) and waits[-1] == BUSY_RETRY_CAP_SECONDS
    again = gates.enter(one, who="w0", now=NOW).wait  # a waiter asking again is one waiter
    assert again == BUSY_RETRY_CAP_SECONDS
    # Once their time has come the turns start over.
    assert gates.enter(one, who="late", now=NOW + BUSY_RETRY_CAP_SECONDS + 1).wait == 2.0


def test_the_breaker_opens_probes_backs_off_and_closes(gates: Gates) -> None:
    one = ep("a", 1)

    def attempt(outcome: Outcome, at: float) -> str:
        gate = gates.enter(one, who="d", now=at)
        assert gate.verdict is Verdict.go
        return gates.leave(one, gate, outcome, now=at)

    assert attempt(Outcome.unreachable, NOW) == "failing 1"
    assert attempt(Outcome.answered, NOW) == "closed"  # consecutive failures only
    assert [attempt(Outcome.unreachable, NOW) for _ in range(3)] == [
        "failing 1",
        "failing 2",
        "opened 30 s",
    ]
    assert gates.breaker(one).open_until == NOW + 30
    held = gates.enter(one, who="e", now=NOW + 29)
    assert (held.verdict, held.wait) == (Verdict.open, pytest.approx(1.0))
    assert gates.held(one, now=NOW + 29) == (0, 0)  # an open circuit takes no slot

    probe = gates.enter(one, who="p", now=NOW + 30)  # half-open: one probe, the others wait
    assert probe.verdict is Verdict.go and probe.probe
    others = gates.enter(one, who="q", now=NOW + 30)
    assert (others.verdict, others.why) == (Verdict.busy, "probe")
    assert gates.leave(one, probe, Outcome.unreachable, now=NOW + 35) == "opened 60 s"
    assert gates.enter(one, who="q", now=NOW + 94).verdict is Verdict.open

    probe = gates.enter(one, who="p", now=NOW + 95)
    assert gates.leave(one, probe, Outcome.unknown, now=NOW + 95) == "unchanged"  # not sent
    assert gates.breaker(one).probing is False
    probe = gates.enter(one, who="p", now=NOW + 96)
    assert probe.probe and gates.leave(one, probe, Outcome.unreachable, now=NOW + 96) == (
        "opened 100 s"  # doubled, at most the longest period
    )
    probe = gates.enter(one, who="p", now=NOW + 196)
    assert probe.probe and gates.leave(one, probe, Outcome.answered, now=NOW + 196) == "closed"
    assert gates.breaker(one).failures == 0 and gates.breaker(one).open_until is None
    after = gates.enter(one, who="r", now=NOW + 196)
    assert after.verdict is Verdict.go and not after.probe
    assert gates.breaker(ep("a", 2)).failures == 0  # each endpoint its own circuit


def test_a_probe_whose_worker_died_lets_the_next_one_probe(gates: Gates) -> None:
    one = ep("a", 1)
    for _ in range(3):
        gate = gates.enter(one, who="d", now=NOW)
        gates.leave(one, gate, Outcome.unreachable, now=NOW)
    assert gates.enter(one, who="p", now=NOW + 30).probe  # never comes back
    assert gates.enter(one, who="q", now=NOW + 74).why == "probe"
    assert gates.enter(one, who="q", now=NOW + 76).probe


def test_without_redis_the_gates_let_attempts_through(queue_name: str) -> None:
    dead = redis.Redis(port=1, socket_connect_timeout=0.5)
    gates = Gates(
        client=dead,
        namespace=queue_name,
        endpoint_slots=1,
        tenant_slots=1,
        lease=5,
        busy_retry=1,
        failures=1,
        open_seconds=1,
        max_open_seconds=1,
    )
    gate = gates.enter(ep("a", 1), who="d", now=NOW)
    assert gate.verdict is Verdict.go and not gate.tracked
    assert gates.leave(ep("a", 1), gate, Outcome.unreachable, now=NOW) == "unchanged"


# --- the deliverer with its gates ------------------------------------------------------------


@pytest.fixture
def rig(make_app, queue_name: str) -> Rig:  # type: ignore[no-untyped-def]
    app = make_app(webhook_queue=f"{queue_name}-wh", webhook_allow_hosts="127.0.0.1")
    return make_rig(
        app,
        webhook_allow_hosts="127.0.0.1",
        webhook_timeout_seconds=5.0,
        webhook_first_byte_timeout_seconds=0.3,
        webhook_breaker_failures=2,
        webhook_breaker_open_seconds=600.0,
        webhook_tenant_concurrency=2,
    )


def stored(rig: Rig, delivery_id: str) -> Any:
    with session_scope(rig.app.extensions["daikon"].sessions) as s:
        return deliveries.get(session=s, delivery_id=delivery_id)


def test_a_hanging_receiver_gives_its_thread_back_at_the_first_byte_timeout_and_is_backed_off(
    rig: Rig,
) -> None:
    with hanging(1) as h:
        url = h.url(0)
        first, second, third = rig.event(url), rig.event(url), rig.event(url)
        assert rig.deliverer.deliver(first) is DeliveryStatus.pending
        before = rig.clock()
        assert rig.deliverer.deliver(second) is DeliveryStatus.pending  # the circuit opens
        after = rig.clock()
        assert [a["error"] for d in (first, second) for a in rig.delivery(d)["attempts"]] == [
            "no answer within 0.3 s",
            "no answer within 0.3 s",
        ]
        # An open circuit: put back unsent to when it half-opens, no attempt spent.
        assert rig.deliverer.deliver(third) is DeliveryStatus.pending
        assert h.total_accepted() == 2
        state = rig.delivery(third)
        assert (state["status"], state["attempt_count"], state["attempts"]) == ("pending", 0, [])
        due = datetime.fromisoformat(state["next_attempt_at"])
        assert before + timedelta(seconds=600) <= due <= after + timedelta(seconds=661)
        assert third not in [p[0] for p in rig.published]  # the dispatcher's, not a countdown
        rig.clock.advance(599)  # the retries of the first two are due: put back as well
        assert DeliveryStatus.pending in rig.pump() and h.total_accepted() == 2
        assert [rig.delivery(d)["attempt_count"] for d in (first, second, third)] == [1, 1, 0]


def test_after_the_open_period_one_probe_goes_and_its_answer_closes_the_circuit(
    rig: Rig,
) -> None:
    with receiver() as r:
        url = r.url()
        earliest = rig.event(url)  # due first: it will be the probe
        gates = rig.deliverer.gates
        assert gates is not None
        endpoint = Endpoint.of(stored(rig, earliest).tenant_id, url)
        for _ in range(2):  # two attempts without an answer (made by other workers)
            gate = gates.enter(endpoint, who="x", now=rig.clock().timestamp())
            gates.leave(endpoint, gate, Outcome.unreachable, now=rig.clock().timestamp())
        held = [earliest, *(rig.event(url) for _ in range(3))]
        assert [rig.deliverer.deliver(d) for d in held] == [DeliveryStatus.pending] * 4
        assert r.received == [] and all(stored(rig, d).attempts == 0 for d in held)
        rig.clock.advance(599)
        assert rig.pump() == [] and r.received == []
        rig.clock.advance(62)
        assert rig.pump() == [DeliveryStatus.delivered] * 4
        assert [m.id for m in r.received] == held  # the probe first, then the others
    assert gates.breaker(endpoint).open_until is None
    assert all(rig.delivery(d)["attempt_count"] == 1 for d in held)  # none spent waiting


def test_a_busy_tenant_puts_a_delivery_back_unspent_and_it_goes_once_a_slot_is_free(
    rig: Rig,
) -> None:
    with receiver() as r:
        url = r.url()
        d = rig.event(url)
        tenant = stored(rig, d).tenant_id
        gates = rig.deliverer.gates
        assert gates is not None
        now = rig.clock().timestamp()
        # Two attempts of this tenant in flight elsewhere (other endpoints, other workers).
        taken = [(Endpoint.of(tenant, f"http://127.0.0.1:{p}/"), f"x{p}") for p in (1, 2)]
        gates_held = [(e, gates.enter(e, who=w, now=now)) for e, w in taken]
        assert rig.deliverer.deliver(d) is DeliveryStatus.pending
        state = rig.delivery(d)
        assert (state["attempt_count"], state["attempts"], r.received) == (0, [], [])
        (published, at) = rig.published[-1]
        assert published == d and at > rig.clock()  # back by a broker countdown, seconds away
        assert rig.deliverer.deliver(d) is None  # not due before then
        for e, gate in gates_held:
            gates.leave(e, gate, Outcome.answered, now=now)
        rig.clock.advance(5)
        assert rig.pump() == [DeliveryStatus.delivered]
        assert [m.id for m in r.received] == [d]
    assert rig.delivery(d)["attempt_count"] == 1


def test_a_fire_once_event_the_gates_hold_is_dropped_with_a_reason_not_counted_unrendered(
    rig: Rig,
) -> None:
    with receiver() as r:
        url = r.url()
        d = rig.event(url)
        gates = rig.deliverer.gates
        assert gates is not None
        endpoint = Endpoint.of(stored(rig, d).tenant_id, url)
        now = rig.clock().timestamp()
        held = [gates.enter(endpoint, who=f"x{i}", now=now) for i in range(2)]
        with session_scope(rig.app.extensions["daikon"].sessions) as s:
            s.execute(
                deliveries.update(deliveries.WebhookDelivery)
                .where(deliveries.WebhookDelivery.id == d)
                .values(max_attempts=1)
            )
        assert rig.deliverer.deliver(d) is DeliveryStatus.failed
        for gate in held:
            gates.leave(endpoint, gate, Outcome.answered, now=now)
        assert r.received == []
    state = rig.delivery(d)
    assert (state["status"], state["attempt_count"]) == ("failed", 0)
    assert state["last_error"] == "not sent: the endpoint has every delivery slot taken"
    with session_scope(rig.app.extensions["daikon"].sessions) as s:
        assert deliveries.count_unrendered(session=s) == 0


def test_a_delivery_whose_endpoint_stays_unreachable_is_given_up_after_the_schedules_span(
    rig: Rig,
) -> None:
    with hanging(1) as h:
        url = h.url(0)
        d = rig.event(url)
        gates = rig.deliverer.gates
        assert gates is not None
        endpoint = Endpoint.of(stored(rig, d).tenant_id, url)
        rig.clock.advance(GIVE_UP_AFTER.total_seconds() - 300)
        for _ in range(2):
            gate = gates.enter(endpoint, who="x", now=rig.clock().timestamp())
            gates.leave(endpoint, gate, Outcome.unreachable, now=rig.clock().timestamp())
        assert rig.deliverer.deliver(d) is DeliveryStatus.failed
        assert h.total_accepted() == 0
    state = rig.delivery(d)
    assert (state["status"], state["attempt_count"]) == ("failed", 0)
    assert state["last_error"].startswith("not sent: the endpoint http://127.0.0.1:")
    assert state["last_error"].endswith("gave no answer: its circuit is open")

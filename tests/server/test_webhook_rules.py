"""The webhook rules that need no service: the retry schedule and its jitter, what each answer
leads to, signatures against the Standard Webhooks test vector, which addresses are refused in
which spelling, and the progress throttle."""

from __future__ import annotations

import base64
import ipaddress
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from daikon.contract import WebhookEvent
from daikon.webhooks import DeliveryStatus
from db.deliveries import Outbox
from db.models import Job
from server.job_view import EventRenderer, Links
from server.settings import Settings
from server.storage import LocalStore
from server.webhooks import signing
from server.webhooks.safety import Allowlist, UnsafeDestination, blocked_reason, literal_ip, parse
from worker.job_webhooks import JobWebhooks
from worker.webhooks.retry_schedule import SCHEDULE, decide, next_delay, parse_retry_after


class Edge:
    """A random source pinned to one end of every range."""

    def __init__(self, end: str):
        self.end = end

    def uniform(self, a: float, b: float) -> float:
        return a if self.end == "low" else b


# --- schedule -------------------------------------------------------------------------------


def test_eight_attempts_over_at_least_27_hours_even_with_the_least_jitter() -> None:
    low = [next_delay(n, Edge("low")) for n in range(8)]
    high = [next_delay(n, Edge("high")) for n in range(8)]
    assert low == [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    assert high == pytest.approx([d * 1.1 for d in low])
    assert len(SCHEDULE) == 8 and sum(low) >= 27 * 3600


def test_jitter_spreads_retries_later_never_earlier() -> None:
    rng = random.Random(4)
    delays = [next_delay(2, rng) for _ in range(500)]
    assert all(300 <= d <= 330 for d in delays)
    assert max(delays) - min(delays) > 20  # receivers that failed together are spread out


@pytest.mark.parametrize(
    ("status", "attempts_done", "retry_after", "expected"),
    [
        (200, 1, None, (DeliveryStatus.delivered, None)),
        (204, 8, None, (DeliveryStatus.delivered, None)),
        (410, 1, None, (DeliveryStatus.disabled, None)),
        (500, 1, None, (DeliveryStatus.pending, 5)),
        (302, 2, None, (DeliveryStatus.pending, 300)),  # redirects are failures
        (None, 3, None, (DeliveryStatus.pending, 1800)),  # network error
        (404, 7, None, (DeliveryStatus.pending, 36000)),
        (500, 8, None, (DeliveryStatus.failed, None)),  # the eighth attempt was the last
        (429, 1, 120.0, (DeliveryStatus.pending, 120)),  # Retry-After beats a shorter wait
        (503, 3, 60.0, (DeliveryStatus.pending, 1800)),  # ...but never shortens one
        (500, 1, 120.0, (DeliveryStatus.pending, 5)),  # only 429 and 503 carry it
        (429, 1, 10**9, (DeliveryStatus.pending, 24 * 3600)),  # capped at a day
    ],
)
def test_what_each_answer_leads_to(
    status: int | None,
    attempts_done: int,
    retry_after: float | None,
    expected: tuple[DeliveryStatus, int | None],
) -> None:
    got = decide(
        status_code=status,
        retry_after=retry_after,
        attempts_done=attempts_done,
        max_attempts=8,
        rng=Edge("low"),
    )
    assert (got.status, got.delay) == expected


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after("Wed, 25 Nov 2026 12:30:00 GMT", now) == 1800
    assert parse_retry_after("Wed, 25 Nov 2026 11:00:00 GMT", now) == 0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None


# --- signatures -----------------------------------------------------------------------------


def test_signatures_match_the_standard_webhooks_test_vector() -> None:
    header = signing.signature_header(
        ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        '{"test": 2432232314}',
    )
    assert header == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_each_active_secret_signs_and_either_one_verifies() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    assert old.startswith("whsec_") and len(base64.b64decode(old[6:])) == 32 and old != new
    body = '{"type":"job.succeeded"}'
    now = int(datetime.now(UTC).timestamp())
    headers = signing.headers([new, old], signing.new_message_id(), now, body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers) == {"type": "job.succeeded"}
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)


# --- destinations ---------------------------------------------------------------------------

BLOCKED = {
    "127.0.0.1": "loopback",
    "10.0.0.1": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "100.64.0.1": "not globally routable",  # carrier-grade NAT
    "169.254.169.254": "link-local",  # cloud metadata
    "0.0.0.0": "unspecified",
    "224.0.0.1": "multicast",
    "240.0.0.1": "reserved",
    "::1": "loopback",
    "fe80::1": "link-local",
    "fc00::1": "private",
    "ff02::1": "multicast",
    "::ffff:127.0.0.1": "loopback",
    "::ffff:169.254.169.254": "link-local",
    "2002:7f00:1::": "loopback",  # 6to4 of 127.0.0.1
    "64:ff9b::a00:1": "private",  # NAT64 of 10.0.0.1
}


@pytest.mark.parametrize(("address", "kind"), BLOCKED.items())
def test_internal_addresses_are_refused_with_their_reason(address: str, kind: str) -> None:
    reason = blocked_reason(ipaddress.ip_address(address))
    assert reason is not None and kind in reason


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("012.1", "10.0.0.1"),
        ("::ffff:7f00:1", "::ffff:127.0.0.1"),
        ("daikon.example", None),
        ("1.face", None),  # a name, not a number
    ],
)
def test_every_ip_spelling_is_read_as_the_address_it_reaches(
    host: str, address: str | None
) -> None:
    ip = literal_ip(host)
    assert (str(ip) if ip else None) == (str(ipaddress.ip_address(address)) if address else None)


def test_allowlist_trusts_names_addresses_and_ranges_only() -> None:
    allow = Allowlist.parse(["localhost", "127.0.0.1", "10.1.0.0/16", "[::1]"])
    assert allow.allows_host("LOCALHOST") and not allow.allows_host("localhost.evil.test")
    assert allow.allows_ip(ipaddress.ip_address("10.1.2.3"))
    assert allow.allows_ip(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert allow.allows_ip(ipaddress.ip_address("::1"))
    assert not allow.allows_ip(ipaddress.ip_address("10.2.0.1"))
    assert parse("http://localhost:9/x", allow).allowed_host
    with pytest.raises(UnsafeDestination, match="loopback name"):
        parse("http://api.localhost/x", allow)
    with pytest.raises(ValueError, match="DAIKON_WEBHOOK_ALLOW_HOSTS"):
        Settings(webhook_allow_hosts="10.0.0.0/33")


# --- progress throttle ----------------------------------------------------------------------


def test_progress_events_go_out_at_most_every_half_second(tmp_path: Path) -> None:
    t = [0.0]
    sent: list[tuple[str, int, int]] = []
    hooks = JobWebhooks(
        outbox=Outbox(EventRenderer(Links("", LocalStore(tmp_path), b"k", 60)), lambda _: None),
        publish_progress=lambda job_id, step, total, _at: sent.append((job_id, step, total)),
        clock=lambda: t[0],
    )
    job = Job(
        id="j1",
        tenant_id="t",
        webhook_url="https://h.example/x",
        webhook_events=[WebhookEvent.progress.value],
    )
    on_step = hooks.progress_hook(job)
    assert on_step is not None
    for step in range(1, 21):  # a step every 0.1 s for 2 s
        t[0] = step / 10
        on_step(step, 20)
    assert [s for _, s, _ in sent] == [1, 6, 11, 16]
    unsubscribed = Job(
        id="j2",
        tenant_id="t",
        webhook_url="https://h.example/x",
        webhook_events=[WebhookEvent.succeeded.value],
    )
    assert hooks.progress_hook(unsubscribed) is None


def test_webhook_ids_are_unique_and_safe_to_sign() -> None:
    ids = {signing.new_message_id() for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("msg_") and "." not in i for i in ids)

"""Attacks on the API process itself, against the real server (gunicorn with gunicorn.conf.py,
as `make run` serves it): a flood that leaks stream slots, one tenant taking every slot, bodies
the server parses, and slow clients that hold threads. No worker: jobs stay queued, so their
event streams stay open."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, suppress
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from chaos.floods import chunked_head, slow_bodies, timed, upload_head
from chaos.harness import raw_http
from tests.stack import ADMIN_KEY, gunicorn_api, settings_for

pytestmark = pytest.mark.e2e
CAP, PER_TENANT = 6, 3


@dataclass
class Api:
    base: str

    def tenant(self, name: str) -> requests.Session:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        r = requests.post(
            f"{self.base}/v1/admin/tenants", json={"name": name}, headers=admin, timeout=10
        )
        assert r.status_code == 201, r.text
        r = requests.post(
            f"{self.base}/v1/admin/tenants/{r.json()['id']}/keys",
            json={},
            headers=admin,
            timeout=10,
        )
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {r.json()['key']}"
        return http

    def job(self, http: requests.Session) -> str:
        r = http.post(f"{self.base}/v1/jobs", json={"prompt": "waits"}, timeout=10)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_url: str, tiny_models) -> Iterator[Api]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("hardening")
    settings = settings_for(tmp, redis_url, tiny_models)
    with gunicorn_api(
        settings,
        tmp / "gunicorn.log",
        DAIKON_MAX_LONG_REQUESTS=str(CAP),
        DAIKON_MAX_LONG_REQUESTS_PER_TENANT=str(PER_TENANT),
        DAIKON_OPENAI_WAIT_SECONDS="1",
        DAIKON_API_THREADS="16",
        DAIKON_REQUEST_READ_TIMEOUT_SECONDS="20",
    ) as base:
        yield Api(base)


def open_stream(http: requests.Session, url: str) -> requests.Response:
    r = http.get(url, stream=True, timeout=30)
    if r.status_code == 200:
        assert next(r.iter_lines(decode_unicode=True)) == "id: 1"  # live, not just headers
    return r


def open_streams(http: requests.Session, url: str, n: int, stack: ExitStack) -> None:
    """n open streams. A stream whose client went away holds its slot until the server next
    writes to it (a keep-alive within about 10 s), so a refusal is retried; the streams that
    opened stay open meanwhile, so retrying never makes new holders."""
    deadline = time.monotonic() + 60
    opened = 0
    while opened < n:
        r = open_stream(http, url)
        if r.status_code == 200:
            stack.callback(r.close)
            opened += 1
            continue
        r.close()
        assert time.monotonic() < deadline, (r.status_code, r.text)
        time.sleep(1)


def test_head_floods_and_clients_gone_early_give_every_stream_slot_back(api: Api) -> None:
    a, b, c = api.tenant("flood-a"), api.tenant("flood-b"), api.tenant("flood-c")
    events = f"{api.base}/v1/jobs/{api.job(a)}/events"
    for _ in range(200):  # the attack: each HEAD took a slot the body never gave back
        r = a.head(events, timeout=10)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    request = (
        f"GET {events.removeprefix(api.base)} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: {a.headers['Authorization']}\r\n\r\n"
    ).encode()
    for _ in range(50):  # gone before the first byte
        with closing(socket.create_connection(("127.0.0.1", int(api.base.rsplit(":", 1)[1])))) as s:
            s.sendall(request)

    with ExitStack() as held:
        # Every slot came back: tenant a gets its whole share, and no more.
        open_streams(a, events, PER_TENANT, held)
        over = a.get(events, timeout=10)
        assert over.status_code == 503 and over.json()["error"]["code"] == "too_many_streams"
        assert f"this tenant has {PER_TENANT} open event streams" in over.json()["error"]["message"]
        # ... and a wait of a's on the OpenAI route is refused the same way, creating nothing.
        waited = a.post(f"{api.base}/v1/images/generations", json={"prompt": "x"}, timeout=10)
        assert waited.status_code == 503 and waited.json()["error"]["code"] == "too_many_waiting"
        assert len(a.get(f"{api.base}/v1/jobs", timeout=10).json()["jobs"]) == 1
        # Another tenant still has its own share; the process's cap holds for all together.
        b_events = f"{api.base}/v1/jobs/{api.job(b)}/events"
        open_streams(b, b_events, CAP - PER_TENANT, held)
        full = c.get(f"{api.base}/v1/jobs/{api.job(c)}/events", timeout=10)
        assert full.status_code == 503
        assert full.json()["error"]["message"].startswith("too many open event streams")
    # Closed streams free their slots too: c can stream now.
    with ExitStack() as held:
        open_streams(c, f"{api.base}/v1/jobs/{api.job(c)}/events", PER_TENANT, held)


def raw(api: Api, data: bytes) -> tuple[int, bytes]:
    return raw_http(int(api.base.rsplit(":", 1)[1]), data)


CHUNKED = (
    b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    + ADMIN_KEY.encode()
    + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    b"Connection: close\r\n\r\n"
)


def test_malformed_and_oversized_chunked_bodies_are_client_errors(api: Api) -> None:
    status, body = raw(api, CHUNKED + b"zz\r\n{}\r\n0\r\n\r\n")
    assert status == 400 and b'"code":"bad_request"' in body and b"chunk" in body.lower()
    big = b'{"prompt":"' + b"a" * 70_000 + b'"}'
    status, body = raw(api, CHUNKED + f"{len(big):x}\r\n".encode() + big + b"\r\n0\r\n\r\n")
    assert status == 413 and b"request_entity_too_large" in body
    fine = b'{"prompt":"a chunked job"}'
    status, body = raw(api, CHUNKED + f"{len(fine):x}\r\n".encode() + fine + b"\r\n0\r\n\r\n")
    assert status == 202 and b"a chunked job" in body


def test_three_hundred_slow_clients_do_not_stop_ordinary_requests(api: Api) -> None:
    """16 threads: the stock gthread worker answered none of these while the sockets trickled
    (each held a thread), nor for about 2 s per socket once they stopped (its graceful close
    lingers on the main loop)."""
    port = int(api.base.rsplit(":", 1)[1])
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    for s in slow[:150]:  # a request head, a byte at a time
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    for s in slow[150:]:  # a whole request, then never closing (the linger attack)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(1.0):
            for s in slow[:150]:
                with suppress(OSError):
                    s.sendall(b"X")

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        for _ in range(30):
            r = requests.get(f"{api.base}/healthz", timeout=10)
            assert r.status_code == 200
            time.sleep(0.2)
    finally:
        stop.set()
        sender.join()
    # The slow heads are closed once DAIKON_REQUEST_READ_TIMEOUT_SECONDS (20) have passed.
    deadline = time.monotonic() + 90
    for s in slow[:150]:
        s.settimeout(max(1.0, deadline - time.monotonic()))
        with suppress(ConnectionResetError):
            assert s.recv(1024) == b""
        s.close()
    for s in slow[150:]:
        s.close()


def test_slow_bodies_hold_no_thread_and_wait_for_no_refused_request(api: Api) -> None:
    """16 threads; 300 of tenant a's submissions send their head and part of a body, then a byte
    a second (half chunked, half a 4 MB upload with 40 KiB sent), and 50 more come with a bad
    key. The stock worker held a thread per socket: nothing else was answered. Now tenant b's
    polls and /readyz answer throughout, the bad keys are refused before their bodies, and the
    chunked trickles are dropped once their deadline passes."""
    port = int(api.base.rsplit(":", 1)[1])
    a, b = api.tenant("slow-a"), api.tenant("slow-b")
    key_a = a.headers["Authorization"].removeprefix("Bearer ")
    polled = f"{api.base}/v1/jobs/{api.job(b)}"
    readyz = f"{api.base}/readyz"
    probes = [lambda: b.get(polled, timeout=10), lambda: requests.get(readyz, timeout=10)]
    before = timed(probes, 1).statuses  # /readyz: 503 here, no worker runs
    with slow_bodies(port) as flood:
        trickling = flood.open(chunked_head(key_a), 150)
        flood.open(upload_head(key_a), 150)
        refused = flood.open(upload_head("dk_not_a_key"), 50)
        during = timed(probes, 15)
        assert during.failures == [] and during.statuses == before * 15, during.describe()
        # Refused from the head alone: the 40 KiB sent are all they ever sent.
        assert flood.closed_by_server(refused, 30) == 50
        assert len(flood.answered) == 50
        assert all(r.startswith(b"HTTP/1.1 401") for r in flood.answered)
        assert all(b"invalid_api_key" in r for r in flood.answered)
        # Past DAIKON_REQUEST_READ_TIMEOUT_SECONDS (20) the chunked trickles are closed.
        assert flood.closed_by_server(trickling, 120) == 150
        print(f"\nslow bodies: b's polls and /readyz during the flood: {during.describe()}")
    assert b.get(polled, timeout=10).status_code == 200


def test_an_upload_over_a_limit_is_refused_before_its_body(api: Api) -> None:
    """A tenant at its active-job limit, a body past a route's size: answered from the head."""
    port = int(api.base.rsplit(":", 1)[1])
    c = api.tenant("busy-c")
    key = c.headers["Authorization"].removeprefix("Bearer ")
    too_big = (
        b"POST /v1/webhooks/secret HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: 100000\r\n\r\n".encode()
    )
    framing = (b"Transfer-Encoding: chunked", b"Content-Length: 70000")
    json_too_big = chunked_head(key).replace(*framing)
    with slow_bodies(port) as flood:
        for head in (too_big, json_too_big):
            flood.open(head, 1)
        assert flood.closed_by_server(flood.sockets, 30) == 2
    statuses = [r.split(b"\r\n")[0] for r in flood.answered]
    assert statuses == [b"HTTP/1.1 413 Request Entity Too Large"] * 2
    assert all(b"request_entity_too_large" in r for r in flood.answered)


def test_what_arriving_bodies_hold_is_bounded_and_given_back(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, tiny_models: Any
) -> None:
    """DAIKON_REQUEST_BUFFER_BYTES of 1 MiB: three uploads holding 300 KiB each fit, a fourth
    body is answered 503 server_busy unread; once the three are gone their bytes are free."""
    tmp = tmp_path_factory.mktemp("budget")
    settings = settings_for(tmp, redis_url, tiny_models)
    with gunicorn_api(
        settings, tmp / "gunicorn.log", DAIKON_REQUEST_BUFFER_BYTES=str(1024 * 1024)
    ) as base:
        port = int(base.rsplit(":", 1)[1])
        with slow_bodies(port) as flood:
            holding = flood.open(upload_head(ADMIN_KEY, sent=300 * 1024), 3)
            time.sleep(1)  # let the server read them
            over = flood.open(upload_head(ADMIN_KEY, sent=300 * 1024), 1)
            assert flood.closed_by_server(over, 30) == 1
            assert flood.answered[0].startswith(b"HTTP/1.1 503")
            assert b"server_busy" in flood.answered[0]
            assert flood.closed_by_server(holding, 1) == 0  # still arriving, unanswered
            for s in holding:
                s.close()
            flood.sockets = []
        again = socket.create_connection(("127.0.0.1", port), timeout=10)
        with closing(again):
            again.sendall(upload_head(ADMIN_KEY, declared=300 * 1024 + 200, sent=300 * 1024))
            again.sendall(b"\0" * 200)
            reply = again.recv(65536)
        # The whole upload arrived and reached the app (a bad multipart body: its own 4xx).
        assert reply.startswith(b"HTTP/1.1 4") and b"server_busy" not in reply, reply[:200]


def read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """One HTTP answer from a kept-alive connection: its head, and its body by Content-Length
    (b"" heads when the server closed without answering)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b"", b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed mid-answer"
        body += chunk
    return head, body


def test_an_answer_that_keeps_the_connection_alive_answers_the_next_request(api: Api) -> None:
    """A request refused before its body was read (here a JSON body over the route's 64 KiB,
    sent whole) leaves that body unread. Whichever way it is refused, an answer that says
    keep-alive must be followed by an answer to the next request on the connection (gunicorn
    alone drains at most 64 KiB and then closes: a client reusing the connection met a close
    without an answer)."""
    port = int(api.base.rsplit(":", 1)[1])
    body = b'{"prompt":"' + b"a" * 70_000 + b'"}'
    post = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + ADMIN_KEY.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    kept_alive = 0
    for _ in range(20):
        with closing(socket.create_connection(("127.0.0.1", port), timeout=20)) as sock:
            sock.sendall(post)
            head, answer = read_answer(sock)
            assert head.startswith(b"HTTP/1.1 413") and b"request_entity_too_large" in answer
            if b"connection: close" in head.lower():
                continue  # refused from its head (the body had not all arrived): closed, fine
            kept_alive += 1
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head, _ = read_answer(sock)
            assert head.startswith(b"HTTP/1.1 200"), head or "closed without an answer"
    assert kept_alive > 0  # the path under test was taken

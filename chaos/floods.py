"""Floods of slow clients, shared by `make abuse` and the tests that keep them fixed: sockets that
send a request head and part of a body, then a byte a second, never finishing, and what other
clients see meanwhile. Loopback only; every flood is bounded in sockets and time."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import requests

BOUNDARY = "daikonflood"


def chunked_head(key: str) -> bytes:
    """A JSON job whose chunked body never ends: a first chunk, then the flood's trickle."""
    return (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        '100000\r\n{"prompt": "'
    ).encode()


def upload_head(key: str, declared: int = 4_000_000, sent: int = 40 * 1024) -> bytes:
    """A multipart edit announcing a body of `declared` bytes, of which `sent` come at once."""
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + part + b"\0" * (sent - len(part))


@dataclass
class Flood:
    """Open sockets, each fed a byte a second until the flood ends."""

    port: int
    sockets: list[socket.socket] = field(default_factory=list)
    answered: list[bytes] = field(default_factory=list)  # what a socket got back, if anything
    _stop: threading.Event = field(default_factory=threading.Event)

    def open(self, first: bytes, n: int) -> list[socket.socket]:
        opened = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            s.sendall(first)
            opened.append(s)
        self.sockets += opened
        return opened

    def trickle(self) -> None:
        while not self._stop.wait(1.0):
            for s in self.sockets:
                with suppress(OSError):
                    s.send(b"a", socket.MSG_DONTWAIT)

    def closed_by_server(self, sockets: list[socket.socket], timeout: float) -> int:
        """How many of `sockets` the server answered or closed within `timeout` seconds."""
        deadline, done = time.monotonic() + timeout, 0
        for s in sockets:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                reply = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                reply = b""  # reset: closed
            done += 1
            if reply:
                self.answered.append(reply)
        return done


@contextmanager
def slow_bodies(port: int) -> Iterator[Flood]:
    flood = Flood(port)
    sender = threading.Thread(target=flood.trickle, daemon=True)
    sender.start()
    try:
        yield flood
    finally:
        flood._stop.set()
        sender.join()
        for s in flood.sockets:
            s.close()


@dataclass
class Latencies:
    seconds: list[float]  # of the requests answered
    failures: list[str]  # the requests not answered: their exceptions
    statuses: list[int]  # of the answers, in order

    def describe(self) -> str:
        if not self.seconds:
            return f"none answered ({len(self.failures)} failed)"
        ms = sorted(1000 * s for s in self.seconds)
        p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
        return (
            f"{len(ms)} answered, {len(self.failures)} failed, p50 {statistics.median(ms):.0f} "
            f"ms, p95 {p95:.0f} ms, max {ms[-1]:.0f} ms"
        )


def timed(requests_: list[Callable[[], requests.Response]], rounds: int) -> Latencies:
    """Each of `requests_` `rounds` times (their own timeouts): how long each answer took."""
    found = Latencies([], [], [])
    for _ in range(rounds):
        for send in requests_:
            started = time.monotonic()
            try:
                r = send()
            except requests.RequestException as e:
                found.failures.append(type(e).__name__)
                continue
            found.seconds.append(time.monotonic() - started)
            found.statuses.append(r.status_code)
        time.sleep(0.1)
    return found

"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 in a thread that records
every request and connection and answers from a script; `verify` checks a request with the
official Standard Webhooks library, as a Daikon user's receiver would; `hanging` gives
receivers that accept and never answer."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0  # seconds before answering


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def verify(self, secret: str) -> dict[str, Any]:
        """The payload, if the signature verifies with this secret (raises otherwise)."""
        payload: dict[str, Any] = Webhook(secret).verify(self.body, self.headers)
        return payload


class Receiver:
    """Answers with `replies` in order, then `default`; or, with `reply_for`, by request."""

    def __init__(
        self,
        *replies: Reply,
        default: Reply | None = None,
        reply_for: Callable[[Received, list[Received]], Reply] | None = None,
    ):
        self.script = list(replies)
        self.default = default or Reply()
        self.reply_for = reply_for
        self.received: list[Received] = []
        self.connections = 0
        self._lock = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with outer._lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    got = Received(self.path, headers, body, time.time())
                    if outer.reply_for is not None:
                        reply = outer.reply_for(got, list(outer.received))
                    else:
                        reply = outer.script.pop(0) if outer.script else outer.default
                    outer.received.append(got)
                    outer._lock.notify_all()
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:  # the client gave up (timeouts, capped reads)
                    pass

            def log_message(self, *_: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def process_request(self, request: Any, client_address: Any) -> None:
                with outer._lock:
                    outer.connections += 1
                super().process_request(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        return self.wait_until(lambda got: len(got) >= count, timeout, f"{count} webhooks")

    def wait_until(
        self, done: Callable[[list[Received]], bool], timeout: float = 30.0, what: str = ""
    ) -> list[Received]:
        with self._lock:
            if not self._lock.wait_for(lambda: done(self.received), timeout):
                raise AssertionError(f"never got {what or 'there'}: {len(self.received)} came")
            return list(self.received)

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def receiver(
    *replies: Reply,
    default: Reply | None = None,
    reply_for: Callable[[Received, list[Received]], Reply] | None = None,
) -> Iterator[Receiver]:
    r = Receiver(*replies, default=default, reply_for=reply_for).start()
    try:
        yield r
    finally:
        r.stop()


class Hanging:
    """Receivers that accept a connection, read what is sent and never answer: `count`
    listening sockets on 127.0.0.1, served by one thread, keeping one record of how many
    connections they hold open at once (all together, and each)."""

    def __init__(self, count: int):
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self.listeners = []
        for _ in range(count):
            sock = socket.create_server(("127.0.0.1", 0), backlog=64)
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, None)
            self.listeners.append(sock)
        self.ports = [int(s.getsockname()[1]) for s in self.listeners]
        self.accepted: Counter[int] = Counter()  # port -> connections accepted
        self.open: Counter[int] = Counter()  # port -> connections open now
        self.most_open = 0  # the most connections open at once, all ports together
        self.most_open_each = 0  # the most open at once on one port
        self.bodies: list[bytes] = []  # what came in, each read as it arrived
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, i: int, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.ports[i]}{path}"

    def total_accepted(self) -> int:
        with self._lock:
            return self.accepted.total()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if key.data is None:  # a listener
                    with contextlib.suppress(OSError):
                        conn, _addr = sock.accept()
                        conn.setblocking(False)
                        port = int(sock.getsockname()[1])
                        self._selector.register(conn, selectors.EVENT_READ, port)
                        with self._lock:
                            self.accepted[port] += 1
                            self.open[port] += 1
                            self.most_open = max(self.most_open, self.open.total())
                            self.most_open_each = max(self.most_open_each, self.open[port])
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    with self._lock:
                        self.bodies.append(data)
                    continue
                self._selector.unregister(sock)  # the client gave up: it holds nothing now
                sock.close()
                with self._lock:
                    self.open[key.data] -= 1

    def start(self) -> Hanging:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for key in list(self._selector.get_map().values()):
            with contextlib.suppress(OSError):
                key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()


@contextmanager
def hanging(count: int) -> Iterator[Hanging]:
    h = Hanging(count).start()
    try:
        yield h
    finally:
        h.stop()

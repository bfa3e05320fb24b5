"""gunicorn's threaded worker, hardened against slow clients (slowloris, slow bodies).

The stock `gthread` worker hands a connection to a thread that then blocks in the parser until
the request head and, later, the body have arrived, so a few hundred sockets that send a head
or a body slowly hold every thread and stall the API. Here no thread ever waits on a client:

- Each time a socket is readable, a short task reads what it holds without blocking (`Arrival`)
  and gives the connection back to gunicorn's poller until the whole request, head and body,
  has arrived. Its end is found by h11 (Content-Length and chunked framing alike), so a chunked
  body is waited for too. Only then is the connection handed to the thread that runs the app,
  with the bytes put back in front of gunicorn's parser: it never reads the socket for them.
- Every byte arrives under a deadline: the head within DAIKON_REQUEST_READ_TIMEOUT_SECONDS of the
  first byte, the body at DAIKON_REQUEST_BODY_MIN_BYTES_PER_SECOND on top of that. A late
  request is dropped; so, sooner, is a client that sends nothing for gunicorn's keep-alive
  timeout before its first byte, or for the read timeout once its request has begun.
- A body is never awaited for a request that would be refused anyway: once the head is in and
  the body is not, `api.admission` checks the route's size limit, the caller's key and the
  tenant's limits, and a refusal is answered at once (413, 401, 429) without reading the body.
- What all connections of a process hold while they arrive is bounded
  (DAIKON_REQUEST_BUFFER_BYTES): past it a new body is answered 503, never buffered.

It also never lingers on the main loop: the stock worker closes a finished connection
"gracefully" (half-close, then read until the peer closes, up to 2 s) on the thread that runs
the poller, so a few clients that never close stall every connection of the process. Here one
closer thread lingers on all such sockets at once, without blocking on any, and a connection
closed for being too slow is dropped at once.

Used by gunicorn.conf.py (`worker_class`); TLS connections (gunicorn's own `certfile`, which
Daikon does not use) go the stock way.
"""

from __future__ import annotations

import queue
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import h11
from gunicorn.workers import gthread

from api import admission
from server.settings import Settings

# More than a request head may be (gunicorn refuses heads past about 8 KiB anyway).
HEAD_LIMIT = 64 * 1024
# What one readiness event reads at most, so that one fast upload cannot monopolise a task.
READ_LIMIT = 256 * 1024
_CLOSED = object()  # handle() already dropped or answered the connection


class Budget:
    """The bytes every arriving request of this process holds, bounded; taken and given back
    under a lock (readiness tasks run on many threads)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.held + n > self.limit:
                return False
            self.held += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.held -= n


class Arrival:
    """One request as it arrives: its raw bytes (handed to gunicorn's parser once complete)
    and h11's view of their framing (where the head ends, how long the body is, whether a
    chunked body has ended)."""

    def __init__(self, now: float) -> None:
        self.first_seen = now
        self.data = bytearray()
        self.framing = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
        self.head: h11.Request | None = None
        self.body_bytes = 0
        self.declared: int | None = None  # Content-Length, when the head gave one
        self.complete = False
        self.admitted = False  # the body may be awaited (api.admission said yes)
        self.limit: int | None = None  # the largest body the route takes (from admission)

    def feed(self, chunk: bytes) -> None:
        """Take bytes; raises h11.RemoteProtocolError for a request that cannot be framed."""
        self.data += chunk
        if self.complete:
            return  # what follows belongs to the next (pipelined) request
        self.framing.receive_data(chunk)
        while True:
            event = self.framing.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.head = event
                length = _header(event, b"content-length")
                self.declared = int(length) if length is not None else None
            elif isinstance(event, h11.Data):
                self.body_bytes += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.complete = True
                return

    def deadline(self, read_timeout: float, min_rate: float) -> float:
        """When the request must have arrived: the head's allowance, plus the body's size (the
        declared one, else what has come so far) at the minimum rate."""
        body = self.declared if self.declared is not None else self.body_bytes
        return self.first_seen + read_timeout + body / min_rate

    def wants_continue(self) -> bool:
        """The client waits for `100 Continue` before it sends the body (RFC 9110 10.1.1)."""
        expect = _header(self.head, b"expect") if self.head is not None else None
        return expect is not None and expect.lower() == b"100-continue" and not self.body_bytes


def _header(head: h11.Request | None, name: bytes) -> bytes | None:
    if head is None:
        return None
    return next((value for key, value in head.headers if key == name), None)


LINGER_SECONDS = 2.0  # as gunicorn's graceful close
LINGER_DRAIN_BYTES = 64 * 1024


class Closer:
    """Closes finished connections gracefully (RFC 9112 section 9.6: half-close, read what the
    client still sends until it closes, then close, so unread bytes never turn into a reset
    that cuts the last answer short), for every socket at once on one thread."""

    def __init__(self) -> None:
        self._new: queue.SimpleQueue[tuple[socket.socket, int]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="daikon-closer", daemon=True)
        self._thread.start()

    def close(self, sock: socket.socket, drain: int = LINGER_DRAIN_BYTES) -> None:
        """Half-close now; read and discard up to `drain` bytes the client still sends (a
        refused request's body: the client reads the answer once it has sent it)."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        self._new.put((sock, drain))

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        open_until: dict[socket.socket, tuple[float, int]] = {}  # deadline, bytes still to drain
        while True:
            while not self._new.empty():
                sock, drain = self._new.get()
                selector.register(sock, selectors.EVENT_READ)
                open_until[sock] = (time.monotonic() + LINGER_SECONDS, drain)
            for key, _ in selector.select(timeout=0.1 if open_until else 0.5):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                deadline, left = open_until[sock]
                open_until[sock] = (deadline, left - len(data))
                if not data or left - len(data) <= 0:
                    open_until[sock] = (0.0, 0)  # done: closed below
            now = time.monotonic()
            for sock, (deadline, _) in list(open_until.items()):
                if deadline <= now:
                    selector.unregister(sock)
                    sock.close()
                    del open_until[sock]


class SlowClientSafeWorker(gthread.ThreadWorker):  # type: ignore[misc]
    def init_process(self) -> None:
        self.closer = Closer()
        settings = Settings()
        api = settings.api
        self.read_timeout = api.request_read_timeout_seconds
        self.min_rate = float(api.request_body_min_bytes_per_second)
        self.budget = Budget(api.request_buffer_bytes)
        self.max_drain = admission.largest_body(settings)
        super().init_process()  # loads the app (load_wsgi), then runs the worker's loop

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.admit: Callable[[dict[str, Any]], admission.Decision] = admission.for_app(self.wsgi)

    def handle(self, conn: Any) -> Any:
        if self.cfg.is_ssl:
            return super().handle(conn)
        try:
            return self._arrive(conn)
        except Exception:
            self.log.exception("error while receiving a request")
            return self._drop(conn)

    def _arrive(self, conn: Any) -> Any:
        """One readiness event: read, then hand over, answer, drop, or wait for more."""
        arrival: Arrival | None = getattr(conn, "daikon_arrival", None)
        now = time.monotonic()
        if arrival is None:
            arrival = conn.daikon_arrival = Arrival(now)
        try:
            if conn.parser is not None:  # a kept-alive connection's read-ahead comes first
                self._take(conn, arrival, conn.parser.unreader.take_buffered())
            closed = self._read(conn, arrival)
        except h11.RemoteProtocolError as e:
            return self._refuse(conn, admission.malformed(str(e)))
        except MemoryError:
            return self._refuse(conn, admission.busy())
        if arrival.complete:
            return self._hand_over(conn, arrival)
        if closed:
            return self._drop(conn)  # the client closed (or reset) before its request ended
        if now > arrival.deadline(self.read_timeout, self.min_rate):
            self.log.info(
                "closing a connection whose request did not arrive in time (%d bytes in %.0f s)",
                len(arrival.data),
                now - arrival.first_seen,
            )
            return self._drop(conn)
        if arrival.head is not None and not arrival.admitted:
            decision = self.admit(self._environ(conn, arrival.head))
            if decision.refusal is not None:
                return self._refuse(conn, decision.refusal, arrival)
            arrival.admitted, arrival.limit = True, decision.body_limit
            if arrival.wants_continue():
                conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if arrival.limit is not None and max(arrival.body_bytes, arrival.declared or 0) > (
            arrival.limit
        ):
            return self._refuse(conn, admission.too_large(arrival.limit), arrival)
        conn.data_ready = False
        return gthread._DEFER  # back to the poller: no thread waits for this client

    def _read(self, conn: Any, arrival: Arrival) -> bool:
        """Read what the socket holds now (up to READ_LIMIT), never waiting; True when the
        client closed or reset the connection."""
        read = 0
        while read < READ_LIMIT and not arrival.complete:
            try:
                chunk = conn.sock.recv(min(65536, READ_LIMIT - read), socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            except OSError:
                return True
            if not chunk:
                return True
            self._take(conn, arrival, chunk)
            read += len(chunk)
        return False

    def _take(self, conn: Any, arrival: Arrival, chunk: bytes) -> None:
        if not chunk:
            return
        if not self.budget.take(len(chunk)):
            raise MemoryError
        conn.daikon_held = getattr(conn, "daikon_held", 0) + len(chunk)
        arrival.feed(chunk)

    def _release(self, conn: Any) -> None:
        """Give back what the connection's arrival held; on every path that ends it."""
        self.budget.give(getattr(conn, "daikon_held", 0))
        conn.daikon_held = 0
        conn.daikon_arrival = None

    def _hand_over(self, conn: Any, arrival: Arrival) -> Any:
        """The whole request is here: gunicorn parses it from memory on this thread."""
        self._release(conn)
        conn.init()  # gunicorn's parser for the connection, if it has none yet
        conn.parser.unreader.unread(bytes(arrival.data))
        conn.data_ready = True  # nothing more to wait for on the socket
        return super().handle(conn)

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        """Whether the connection serves another request. gunicorn drains a body the app did
        not read (a refusal answered before reading) from the socket, at most 64 KiB, and
        closes past that although its answer said keep-alive: a client reusing the connection
        then meets a close without an answer. Here the whole request was in memory before the
        app ran (_hand_over), so its unread rest is discarded from memory, whatever its size."""
        if not keepalive or conn.parser is None:
            return False
        if not self.cfg.is_ssl:  # every plain request came whole through _hand_over
            done = conn.parser.finish_body(deadline=time.monotonic() + 1.0, max_bytes=sys.maxsize)
            return bool(done)
        return bool(super()._keepalive_after(conn, keepalive))

    def _environ(self, conn: Any, head: h11.Request) -> dict[str, Any]:
        """A WSGI environ of the head alone, for api.admission (it reads no body)."""
        path, _, query = head.target.partition(b"?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": head.method.decode("latin-1"),
            "PATH_INFO": path.decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_NAME": "daikon",
            "SERVER_PORT": "0",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": str(conn.client[0]) if conn.client else "",
            "wsgi.url_scheme": "http",
        }
        for name, value in head.headers:
            key = name.decode("latin-1").upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = value.decode("latin-1")
            else:
                environ[f"HTTP_{key}"] = value.decode("latin-1")
        return environ

    def _refuse(self, conn: Any, answer: bytes, arrival: Arrival | None = None) -> object:
        """Answer without reading the rest of the request, then close gracefully: what the
        client still sends of the body it announced is read and discarded (up to the largest
        body any route takes), so that its answer is not lost to a reset."""
        self._release(conn)
        declared = arrival.declared if arrival is not None and arrival.declared else 0
        drain = LINGER_DRAIN_BYTES + min(declared, self.max_drain)
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(self.read_timeout)  # a client that does not read is dropped
            conn.sock.sendall(answer)
        except OSError:
            conn.close()
            return _CLOSED
        conn.sock.settimeout(None)
        self.closer.close(conn.sock, drain)
        return _CLOSED

    def _drop(self, conn: Any) -> object:
        """Close at once, no linger: nothing was answered that a reset could cut short."""
        self._release(conn)
        conn.close()
        return _CLOSED

    def murder_pending(self) -> None:
        """gunicorn closes connections silent for its keep-alive timeout; what they held
        while arriving is given back."""
        waiting = list(self.pending_conns)
        super().murder_pending()
        still = set(map(id, self.pending_conns))
        for conn in waiting:
            if id(conn) not in still:
                self._release(conn)

    def finish_request(self, conn: Any, fs: Any) -> None:
        """On the main loop. A connection to close goes to the closer (the graceful close
        lingers up to 2 s); everything else is gunicorn's own."""
        if fs.cancelled() or fs.exception() is not None:
            self._release(conn)
            return super().finish_request(conn, fs)
        result = fs.result()
        if result is _CLOSED:
            self.nr_conns -= 1
            return None
        if result is gthread._DEFER and getattr(conn, "daikon_held", 0) > 0:
            super().finish_request(conn, fs)
            # Mid-request, a pause of the read timeout is allowed (gunicorn's keep-alive timeout,
            # 2 s, is for a connection that has sent nothing yet); the deadline still holds.
            conn.timeout = time.monotonic() + self.read_timeout
            return None
        if result is gthread._DEFER or result or not self.alive:
            return super().finish_request(conn, fs)
        self.nr_conns -= 1
        self.closer.close(conn.sock)
        return None

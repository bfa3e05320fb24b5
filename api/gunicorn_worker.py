"""gunicorn's threaded worker, hardened against slow clients (slowloris).

The stock `gthread` worker hands a connection to a thread as soon as its first bytes arrive;
the thread then blocks in the parser until the whole request head is in, so a few hundred
sockets that send their headers a byte at a time hold every thread and stall the API. Here a
thread first peeks at what the socket holds: unless the request head (and a body announced by
Content-Length) has fully arrived, the connection goes straight back to gunicorn's own poller,
which wakes it when more bytes come, holding no thread meanwhile. A connection whose request
has not arrived within DAIKON_REQUEST_READ_TIMEOUT_SECONDS of its first byte is closed, as is
one that sends nothing (gunicorn's keep-alive timeout).

Bodies are waited for only up to BODY_WAIT_BYTES (what the kernel's receive buffer surely holds
unread; a Daikon job body is a few KiB), and a chunked body not at all: its end cannot be told
without decoding it. Run behind a proxy that buffers whole requests (nginx does by default) if
clients may send large or chunked bodies slowly; see compose.yaml.

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
import re
import selectors
import socket
import threading
import time
from typing import Any

from gunicorn.workers import gthread

from daikon.settings import Settings

HEAD_END = b"\r\n\r\n"
# More than a request head may be (gunicorn refuses heads past about 8 KiB anyway).
HEAD_LIMIT = 64 * 1024
BODY_WAIT_BYTES = 32 * 1024
PEEK_LIMIT = HEAD_LIMIT + BODY_WAIT_BYTES
_CLOSED = object()  # handle() already dropped the connection
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,9})[ \t]*\r\n", re.IGNORECASE)


def request_ready(data: bytes) -> bool:
    """Whether `data` holds a whole request head, and the body its Content-Length announces
    (up to BODY_WAIT_BYTES of it)."""
    end = data.find(HEAD_END)
    if end < 0:
        return len(data) >= HEAD_LIMIT  # too much for a head: let the parser refuse it
    length = _CONTENT_LENGTH.search(data[: end + 2])
    if length is None:
        return True
    body = len(data) - (end + len(HEAD_END))
    return body >= min(int(length[1]), BODY_WAIT_BYTES)


LINGER_SECONDS = 2.0  # as gunicorn's graceful close
LINGER_DRAIN_BYTES = 64 * 1024


class Closer:
    """Closes finished connections gracefully (RFC 9112 section 9.6: half-close, read what the
    client still sends until it closes, then close, so unread bytes never turn into a reset
    that cuts the last answer short), for every socket at once on one thread."""

    def __init__(self) -> None:
        self._new: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="daikon-closer", daemon=True)
        self._thread.start()

    def close(self, sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        self._new.put(sock)

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        open_until: dict[socket.socket, tuple[float, int]] = {}  # deadline, bytes drained
        while True:
            while not self._new.empty():
                sock = self._new.get()
                selector.register(sock, selectors.EVENT_READ)
                open_until[sock] = (time.monotonic() + LINGER_SECONDS, 0)
            for key, _ in selector.select(timeout=0.1 if open_until else 0.5):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                deadline, drained = open_until[sock]
                open_until[sock] = (deadline, drained + len(data))
                if not data or drained + len(data) >= LINGER_DRAIN_BYTES:
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
        self.read_timeout = Settings().api.request_read_timeout_seconds
        super().init_process()

    def handle(self, conn: Any) -> Any:
        if self.cfg.is_ssl:
            return super().handle(conn)
        first_seen = getattr(conn, "daikon_first_seen", None)
        now = time.monotonic()
        if first_seen is None:
            first_seen = conn.daikon_first_seen = now
        buffered = b""
        if conn.parser is not None:  # a kept-alive connection may hold read-ahead bytes
            buffered = conn.parser.unreader.buf.getvalue()
        try:
            peeked = conn.sock.recv(PEEK_LIMIT, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            peeked = None
        except OSError:
            return self._drop(conn)  # reset by the client
        if peeked == b"" and not buffered:
            return self._drop(conn)  # the client closed the connection
        if request_ready(buffered + (peeked or b"")):
            conn.daikon_first_seen = None  # the next request on this connection starts afresh
            return super().handle(conn)
        if now - first_seen > self.read_timeout:
            self.log.info("closing a connection whose request did not arrive within %.0f s",
                          self.read_timeout)  # fmt: skip
            return self._drop(conn)
        conn.data_ready = False
        return gthread._DEFER  # back to the poller: no thread waits for this client

    @staticmethod
    def _drop(conn: Any) -> object:
        """Close at once, no linger: nothing was answered that a reset could cut short."""
        conn.close()
        return _CLOSED

    def finish_request(self, conn: Any, fs: Any) -> None:
        """On the main loop. A connection to close goes to the closer (the graceful close
        lingers up to 2 s); everything else is gunicorn's own."""
        if fs.cancelled() or fs.exception() is not None:
            return super().finish_request(conn, fs)
        result = fs.result()
        if result is _CLOSED:
            self.nr_conns -= 1
            return None
        if result is gthread._DEFER or result or not self.alive:
            return super().finish_request(conn, fs)
        self.nr_conns -= 1
        self.closer.close(conn.sock)
        return None

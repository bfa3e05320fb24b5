"""A real TCP proxy for tests, between a client and the API, that the test can cut: `sever()`
closes every open connection mid-stream, and `drop_response_to(prefix)` forwards the next
request starting with `prefix` but closes the client's connection instead of answering (the
server did the work; the client never heard). It records every request head it forwarded."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress


class Proxy:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[tuple[float, bytes]] = []  # (when, the first chunk: its head)
        self.responses: list[bytes] = []  # the first chunk of each answer passed on
        self._drops: list[bytes] = []
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sever(self) -> int:
        """Cut every open connection now; how many were cut."""
        with self._lock:
            conns = list(self._open)
            self._open.clear()
        for s in conns:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        return len(conns)

    def drop_response_to(self, prefix: bytes) -> None:
        with self._lock:
            self._drops.append(prefix)

    def heads(self, prefix: bytes) -> list[bytes]:
        with self._lock:
            return [r for _, r in self.requests if r.startswith(prefix)]

    def times(self, prefix: bytes) -> list[float]:
        """When each request starting with `prefix` came (time.monotonic())."""
        with self._lock:
            return [t for t, r in self.requests if r.startswith(prefix)]

    def answered(self, prefix: bytes) -> int:
        """How many answers starting with `prefix` (b"HTTP/1.1 429") were passed on."""
        with self._lock:
            return sum(r.startswith(prefix) for r in self.responses)

    def close(self) -> None:
        self._stopped = True
        self.listener.close()
        self.sever()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._open.update((client, upstream))
            pair = _Pair()
            threading.Thread(target=self._up, args=(client, upstream, pair), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, pair), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, pair: _Pair) -> None:
        """client -> upstream; notes request heads and which answer to swallow."""
        with suppress(OSError):
            while data := client.recv(65536):
                if data[:8].split(b" ")[0] in (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD"):
                    with self._lock:
                        self.requests.append((time.monotonic(), data))
                        for prefix in self._drops:
                            if data.startswith(prefix):
                                self._drops.remove(prefix)
                                pair.swallow = True
                                break
                upstream.sendall(data)
        self._close(client, upstream)

    def _down(self, upstream: socket.socket, client: socket.socket, pair: _Pair) -> None:
        """upstream -> client; an answer to swallow closes the client's connection instead."""
        with suppress(OSError):
            while data := upstream.recv(65536):
                if pair.swallow:
                    break
                if data.startswith(b"HTTP/"):
                    with self._lock:
                        self.responses.append(data)
                client.sendall(data)
        self._close(client, upstream)

    def _close(self, *socks: socket.socket) -> None:
        for s in socks:
            with self._lock:
                self._open.discard(s)
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class _Pair:
    swallow = False


@contextmanager
def proxy_to(base_url: str) -> Iterator[Proxy]:
    """A proxy in front of http://127.0.0.1:<port>."""
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    p = Proxy(port)
    with closing(p):
        yield p

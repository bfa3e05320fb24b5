"""One webhook POST, connected to an address that was checked, never to one a second DNS
lookup picks: the socket is opened here to the validated IP and handed to http.client, which
sends the original Host (and, for https, SNI and certificate checks on the host name).

Redirects are never followed and at most READ_LIMIT bytes of the answer are read. Three
deadlines bound an attempt: connecting (TCP and TLS), the answer's first byte once the request
is sent (a receiver that accepts and never answers gives its thread back then), and the whole
attempt, however slowly a receiver trickles bytes.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from server.webhooks import safety
from worker.webhooks.retry_schedule import parse_retry_after

READ_LIMIT = 4096
EXCERPT_LIMIT = 1024
ERROR_LIMIT = 255
USER_AGENT = "Daikon-Webhooks/1"


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str | None  # None exactly when an HTTP answer came back
    # The start of the answer's body, at most EXCERPT_LIMIT characters; None from a receiver
    # reached through the allowlist (it may be an internal service a tenant must not read).
    excerpt: str | None
    retry_after: float | None  # seconds, from Retry-After
    duration_ms: int
    address: str | None  # the IP connected to, or the one refused (operators only)
    refused: bool = False  # stopped by the destination checks: nothing was sent
    body_bytes: int | None = None  # how much of the answer was read (at most READ_LIMIT)


def _short(text: str) -> str:
    return text if len(text) <= ERROR_LIMIT else text[: ERROR_LIMIT - 1] + "…"


def _excerpt(raw: bytes) -> str:
    """At most EXCERPT_LIMIT bytes of UTF-8, without NULs (PostgreSQL text refuses them)."""
    text = raw[:EXCERPT_LIMIT].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    return text.encode()[:EXCERPT_LIMIT].decode("utf-8", errors="ignore")


@dataclass(frozen=True)
class Timeouts:
    """Seconds: the whole attempt, connecting, and from the request sent to the answer's first
    byte. A phase's own bound never outlasts the whole attempt's."""

    total: float
    connect: float | None = None
    first_byte: float | None = None


def _describe(e: BaseException, timed_out: bool, timeout: float, phase: str = "") -> str:
    if timed_out:
        return f"timed out after {timeout:g} s"
    if isinstance(e, TimeoutError | socket.timeout):
        return phase or f"timed out after {timeout:g} s"
    if isinstance(e, socket.gaierror):
        return f"DNS lookup failed: {e.strerror or e}"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {e.verify_message or e}"
    if isinstance(e, ssl.SSLError):
        return f"TLS error: {e.reason or e}"
    if isinstance(e, http.client.HTTPException):
        return f"invalid HTTP answer: {type(e).__name__}"
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def answer_excerpt(dest: safety.Destination, peer: safety.Address | None, raw: bytes) -> str | None:
    """What the attempt log may show of an answer. A receiver reached only because the
    operator trusts it (an allowlisted name, or an address that is internal) may be an
    internal service, and the log is the tenant's to read: nothing of it, only its length."""
    if dest.allowed_host or peer is None or safety.blocked_reason(peer) is not None:
        return None
    return _excerpt(raw) or None


def _connect(
    dest: safety.Destination, addresses: list[safety.Address], deadline: float
) -> socket.socket:
    """A connection to the first address that answers before `deadline` (the connect
    timeout's, for all of them together)."""
    last: OSError | None = None
    for ip in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        try:
            return socket.create_connection((str(ip), dest.port), timeout=remaining)
        except OSError as e:
            last = e
    raise last or OSError("no address to connect to")


class _Phase:
    """Which deadline a socket timeout belongs to, for the attempt log: a phase's own bound,
    or the whole attempt's when that comes first."""

    def __init__(self, deadline: float, total: float):
        self.deadline, self.total = deadline, total
        self.text = ""

    def enter(self, sock: socket.socket | None, bound: float | None, text: str) -> float:
        """Arm `sock` (if any) for a phase of at most `bound` seconds; the seconds armed."""
        remaining = max(0.001, self.deadline - time.monotonic())
        if bound is not None and bound < remaining:
            self.text, seconds = text.format(bound), bound
        else:
            self.text, seconds = f"timed out after {self.total:g} s", remaining
        if sock is not None:
            sock.settimeout(seconds)
        return seconds


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float | Timeouts,
    allow: safety.Allowlist,
    resolver: safety.Resolver = safety.system_resolver,
    tls: ssl.SSLContext | None = None,
    now: datetime | None = None,
) -> AttemptResult:
    """POST body to url. Never raises for anything the receiver or the network does."""
    bounds = timeout if isinstance(timeout, Timeouts) else Timeouts(timeout)
    timeout = bounds.total
    started = time.monotonic()
    deadline = started + timeout
    phase = _Phase(deadline, timeout)

    def done(
        *,
        status_code: int | None = None,
        error: str | None = None,
        excerpt: str | None = None,
        retry_after: float | None = None,
        address: str | None = None,
        refused: bool = False,
        body_bytes: int | None = None,
    ) -> AttemptResult:
        ms = int((time.monotonic() - started) * 1000)
        return AttemptResult(
            status_code,
            error and _short(error),
            excerpt,
            retry_after,
            ms,
            address,
            refused,
            body_bytes,
        )

    try:
        dest = safety.parse(url, allow)
        addresses = safety.resolve(dest, allow, resolver)
    except safety.UnsafeDestination as e:
        refused_ip = str(e.address) if e.address is not None else None
        return done(error=f"refused: {e}", address=refused_ip, refused=True)
    except (OSError, UnicodeError) as e:
        return done(error=_describe(e, False, timeout))

    sock: socket.socket | None = None
    address: str | None = None
    timed_out = threading.Event()

    def abort() -> None:
        # The deadline passed mid-exchange: unblock whatever read or write is waiting.
        timed_out.set()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(timeout, abort)
    watchdog.daemon = True
    watchdog.start()
    conn: http.client.HTTPConnection | None = None
    try:
        connect_for = phase.enter(None, bounds.connect, "no connection within {:g} s")
        sock = _connect(dest, addresses, min(deadline, time.monotonic() + connect_for))
        phase.enter(sock, bounds.connect, "no connection within {:g} s")  # TLS's handshake
        address = str(sock.getpeername()[0]).split("%", 1)[0]
        peer = safety.literal_ip(address)
        reason = None if dest.allowed_host or peer is None else safety.refusal(peer, allow)
        if reason:  # what we reached is not what we checked: never send to it
            return done(
                error=f"refused: the address reached is {reason}", address=address, refused=True
            )
        if dest.scheme == "https":
            context = tls or ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=dest.host)
            conn = http.client.HTTPSConnection(dest.host, dest.port, timeout=timeout)
        else:
            conn = http.client.HTTPConnection(dest.host, dest.port, timeout=timeout)
        conn.sock = sock  # connected above; http.client only writes the Host header from host
        phase.enter(sock, bounds.first_byte, "no answer within {:g} s")
        conn.request(
            "POST",
            dest.target,
            body=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "Connection": "close",
                **headers,
            },
        )
        response = conn.getresponse()
        phase.enter(sock, None, "")  # the rest of the answer: the whole attempt's deadline
        raw = response.read(READ_LIMIT)
        excerpt = answer_excerpt(dest, peer, raw)
        retry_after = parse_retry_after(response.getheader("Retry-After"), now or datetime.now(UTC))
        return done(
            status_code=response.status,
            excerpt=excerpt,
            retry_after=retry_after,
            address=address,
            body_bytes=len(raw),
        )
    except Exception as e:
        return done(error=_describe(e, timed_out.is_set(), timeout, phase.text), address=address)
    finally:
        watchdog.cancel()
        if conn is not None:
            conn.close()
        elif sock is not None:
            sock.close()

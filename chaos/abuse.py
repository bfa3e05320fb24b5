"""`python -m chaos.abuse` (`make abuse`): replay the attacks of a hostile or careless tenant
against `make run`'s real stack (the launcher with its embedded valkey, SQLite, local storage,
gunicorn API, worker and webhook worker on the shapes models), and print one line per attack:
what it expected and what it saw.

Everything goes to 127.0.0.1, every flood is bounded in count and time, and the run stops by
itself (about 3 minutes). Exits non-zero when any attack got through.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from chaos import abuse_uploads
from chaos.harness import ROOT, free_port, raw_http, wait_for
from server import keys

HUGE = {"prompt": "x", "width": 1024, "height": 1024, "steps": 150, "candidates": 16, "top_k": 16}
# At the CPU's limit (4 megapixel-steps is the default): 16 candidates in 4 chunks, ~a minute.
LONG = {"prompt": "a red circle", "steps": 150, "candidates": 16, "top_k": 1}
QUICK = {"prompt": "a red circle", "steps": 4, "candidates": 2, "top_k": 1}


@dataclass
class Line:
    name: str
    expected: str
    saw: str = ""
    ok: bool = False

    def text(self) -> str:
        return (
            f"abuse | {self.name:<28} {'OK  ' if self.ok else 'FAIL'} expected: "
            f"{self.expected}; saw: {self.saw}"
        )


@dataclass
class Stack:
    base: str
    data: Path
    admin: requests.Session
    tenants: dict[str, requests.Session] = field(default_factory=dict)
    log_path: Path | None = None

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def tenant(self, name: str) -> requests.Session:
        if name not in self.tenants:
            t = self.admin.post(f"{self.base}/v1/admin/tenants", json={"name": name}, timeout=10)
            key = self.admin.post(
                f"{self.base}/v1/admin/tenants/{t.json()['id']}/keys", json={}, timeout=10
            ).json()["key"]
            http = requests.Session()
            http.headers["Authorization"] = f"Bearer {key}"
            self.tenants[name] = http
        return self.tenants[name]

    def submit(self, http: requests.Session, body: dict[str, Any]) -> requests.Response:
        return http.post(f"{self.base}/v1/jobs", json=body, timeout=10)

    def job(self, http: requests.Session, job_id: str) -> dict[str, Any]:
        return dict(http.get(f"{self.base}/v1/jobs/{job_id}", timeout=10).json())

    def count(self, http: requests.Session) -> int:
        total, cursor = 0, None
        while True:
            params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            page = http.get(f"{self.base}/v1/jobs", params=params, timeout=10).json()
            total += len(page["jobs"])
            if not page["has_more"]:
                return total
            cursor = page["next_cursor"]

    def raw(self, data: bytes) -> tuple[int, bytes]:
        return raw_http(self.port, data)


@contextmanager
def make_run(
    work: Path, admin_key: str | None = None, log_name: str = "run.log"
) -> Iterator[Stack]:
    """`python -m server.launcher` as a new user starts it: no service URLs, no models set
    (with `admin_key`: as restarted with DAIKON_ADMIN_KEY set, on the same data directory)."""
    port = free_port()
    unset = (
        "REDIS_URL",
        "DATABASE_URL",
        "DAIKON_ADMIN_KEY",
        "DAIKON_MODEL",
        "DAIKON_CLIP_MODEL",
        "DAIKON_WEBHOOK_ALLOW_HOSTS",
        "DAIKON_WEBHOOK_ALLOW_TENANTS",
    )
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(DAIKON_DATA_DIR=str(work / "data"), DAIKON_PORT=str(port), DAIKON_TORCH_THREADS="1")
    # As make run allows (loopback receivers for the admin's tenant), plus the two tenants of
    # hanging-webhook-receivers: on this machine their receivers can only be on loopback.
    env["DAIKON_WEBHOOK_ALLOW_TENANTS"] = "admin,hook-flooder,hook-victim"
    if admin_key is not None:
        env["DAIKON_ADMIN_KEY"] = admin_key
    log_path = work / log_name
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.launcher"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        key_file = work / "data" / "admin.key"
        wait_for(lambda: key_file.exists() and proc.poll() is None, 90, "the admin key")
        admin = requests.Session()
        admin.headers["Authorization"] = f"Bearer {admin_key or key_file.read_text().strip()}"
        wait_for(
            lambda: requests.get(f"{base}/readyz", timeout=3).status_code == 200,
            120,
            "make run to be ready",
        )
        # The worker publishes the model's limits once it has loaded it.
        wait_for(
            lambda: admin.get(f"{base}/v1/models", timeout=5).json()["models"][0]["limits"],
            120,
            "the model's limits",
        )
        yield Stack(base, work / "data", admin, log_path=log_path)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


# --- the attacks ----------------------------------------------------------------------------

Attack = Callable[[Stack], Line]


def error_code(r: requests.Response) -> str:
    try:
        return f"{r.status_code} {r.json()['error']['code']}"
    except Exception:
        return f"{r.status_code} (not the JSON error shape)"


def refused(
    name: str,
    expected: str,
    status: int,
    code: str,
    send: Callable[[Stack, requests.Session], requests.Response],
) -> Attack:
    """An attack answered by one refusal that leaves nothing behind."""

    def attack(stack: Stack) -> Line:
        http = stack.tenant("mallory")
        before = stack.count(http)
        r = send(stack, http)
        left = stack.count(http) - before
        saw = f"{error_code(r)}, {left} jobs created"
        return Line(name, expected, saw, error_code(r) == f"{status} {code}" and left == 0)

    return attack


def deep_json(stack: Stack, http: requests.Session) -> requests.Response:
    nested = '{"a":' * 950 + "1" + "}" * 950
    return http.post(
        f"{stack.base}/v1/jobs",
        data=f'{{"prompt":"x","metadata":{nested}}}',
        headers={"Content-Type": "application/json"},
        timeout=10,
    )


def raw_json(body: str) -> Callable[[Stack, requests.Session], requests.Response]:
    def send(stack: Stack, http: requests.Session) -> requests.Response:
        return http.post(
            f"{stack.base}/v1/jobs",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
            timeout=10,
        )

    return send


def json_body(body: dict[str, Any]) -> Callable[[Stack, requests.Session], requests.Response]:
    return lambda stack, http: http.post(f"{stack.base}/v1/jobs", json=body, timeout=10)


def chunked(stack: Stack, body: bytes, *, malformed: bool = False) -> tuple[int, bytes]:
    key = stack.tenant("mallory").headers["Authorization"]
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    framed = b"zz\r\n" if malformed else f"{len(body):x}\r\n".encode()
    return stack.raw(head + framed + body + b"\r\n0\r\n\r\n")


def malformed_chunked(stack: Stack) -> Line:
    status, body = chunked(stack, b'{"prompt":"x"}', malformed=True)
    return Line(
        "malformed-chunked-body",
        "400 bad_request",
        f"{status} {body[:60]!r}",
        status == 400 and b"bad_request" in body,
    )


def chunked_over_limit(stack: Stack) -> Line:
    status, body = chunked(stack, b'{"prompt":"' + b"a" * 70_000 + b'"}')
    return Line(
        "chunked-body-over-limit",
        "413 request_entity_too_large",
        f"{status} {body[:60]!r}",
        status == 413,
    )


def long_last_event_id(stack: Stack) -> Line:
    http = stack.tenant("mallory")
    job_id = stack.submit(http, QUICK).json()["id"]
    http.post(f"{stack.base}/v1/jobs/{job_id}/cancel", timeout=10)
    r = http.get(
        f"{stack.base}/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "9" * 5000}, timeout=30
    )
    done = "event: done" in r.text
    return Line(
        "last-event-id-5000-digits",
        "200, the stream from the start",
        f"{r.status_code}, done event {'sent' if done else 'missing'}",
        r.status_code == 200 and done,
    )


def held(name: str, expected: str, check: Callable[[Stack], tuple[bool, str]]) -> Attack:
    def attack(stack: Stack) -> Line:
        ok, saw = check(stack)
        return Line(name, expected, saw, ok)

    return attack


def other_tenants_job(stack: Stack) -> tuple[bool, str]:
    victim = stack.submit(stack.tenant("victim"), QUICK).json()["id"]
    http = stack.tenant("mallory")
    answers = [
        http.get(f"{stack.base}/v1/jobs/{victim}", timeout=10),
        http.post(f"{stack.base}/v1/jobs/{victim}/cancel", timeout=10),
        http.get(f"{stack.base}/v1/jobs/{victim}/events", timeout=10),
    ]
    codes = [a.status_code for a in answers]
    return codes == [404, 404, 404], f"get/cancel/events {codes}"


def tampered_image_url(stack: Stack) -> tuple[bool, str]:
    http = stack.tenant("mallory")
    job_id = stack.submit(http, QUICK).json()["id"]
    wait_for(lambda: stack.job(http, job_id)["status"] == "succeeded", 120, "a quick job")
    url = stack.job(http, job_id)["images"][0]["url"]
    good = requests.get(url, timeout=10).status_code
    bad = requests.get(url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB"), timeout=10)
    traversal = requests.get(
        f"{stack.base}/v1/jobs/..%2f..%2fsecret.key/images/1?expires=1&sig=x", timeout=10
    )
    ok = good == 200 and bad.status_code == 404 and traversal.status_code == 404
    return ok, f"signed {good}, tampered {bad.status_code}, traversal {traversal.status_code}"


def ssrf(stack: Stack) -> tuple[bool, str]:
    http = stack.tenant("mallory")
    codes = []
    # (make run trusts loopback, for local receivers: those spellings are refused elsewhere)
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:10.0.0.1]/",
        "http://0xa9fea9fe/",
        "http://[fd00::1]/",
        "http://192.168.1.1:6379/",
    ):
        codes.append(error_code(stack.submit(http, {**QUICK, "webhook_url": url})))
    return set(codes) == {"422 invalid_request"}, ", ".join(codes)


def data_dir(stack: Stack) -> tuple[bool, str]:
    loose = []
    for path in [stack.data, *stack.data.rglob("*")]:
        want = 0o700 if path.is_dir() else 0o600
        if path.stat().st_mode & 0o777 != want:
            loose.append(f"{path.relative_to(stack.data.parent)} {oct(path.stat().st_mode)}")
    n = sum(1 for _ in stack.data.rglob("*"))
    return not loose, f"{n} entries, loose: {loose[:3] or 'none'}"


def valkey_password(stack: Stack) -> tuple[bool, str]:
    assert stack.log_path is not None
    try:
        redis.Redis(port=valkey_port(stack), socket_timeout=3).ping()
        return False, "an unauthenticated PING was answered"
    except redis.AuthenticationError as e:
        leaked = valkey_secret(stack) in stack.log_path.read_text(errors="replace")
        return not leaked, f"{type(e).__name__}; password {'in' if leaked else 'not in'} logs"


def secret_at_rest(stack: Stack) -> tuple[bool, str]:
    http = stack.tenant("mallory")
    secret = http.post(f"{stack.base}/v1/webhooks/secret", json={}, timeout=10).json()["secret"]
    with closing(sqlite3.connect(stack.data / "daikon.db")) as db:
        stored = [row[0] for row in db.execute("SELECT secret FROM webhook_secrets")]
    clear = [s for s in stored if not s.startswith("fernet:") or secret in s]
    return not clear, f"{len(stored)} stored, {len(clear)} readable"


class _Internal(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = b"internal admin page: db password hunter2"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


def internal_answer(stack: Stack) -> tuple[bool, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Internal)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        http_ = stack.admin  # make run trusts loopback receivers for the admin's tenant alone
        hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
        job_id = stack.submit(http_, {**QUICK, "webhook_url": hook}).json()["id"]
        url = f"{stack.base}/v1/jobs/{job_id}/webhooks"

        def attempted() -> list[dict[str, Any]]:
            deliveries = http_.get(url, timeout=10).json()["deliveries"]
            return [a for d in deliveries for a in d["attempts"]]

        wait_for(lambda: bool(attempted()), 120, "a webhook attempt")
        attempt = attempted()[0]
    finally:
        server.shutdown()
    ok = attempt["response_excerpt"] is None and attempt["response_bytes"] == 40
    return ok, f"excerpt {attempt['response_excerpt']!r}, bytes {attempt['response_bytes']}"


def stream_slots(stack: Stack) -> list[Line]:
    """HEADs and clients gone early must give their slots back; no tenant gets them all."""
    a, b, c = stack.tenant("flood-a"), stack.tenant("flood-b"), stack.tenant("flood-c")
    lines = []
    job_a = stack.submit(a, QUICK).json()["id"]
    events = f"{stack.base}/v1/jobs/{job_a}/events"
    heads = [a.head(events, timeout=10).status_code for _ in range(250)]
    gone = (
        f"GET /v1/jobs/{job_a}/events HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: {a.headers['Authorization']}\r\n\r\n"
    ).encode()
    for _ in range(100):
        with closing(socket.create_connection(("127.0.0.1", stack.port))) as s:
            s.sendall(gone)
    stream = b.get(
        f"{stack.base}/v1/jobs/{stack.submit(b, QUICK).json()['id']}/events", timeout=120
    )
    wait = c.post(
        f"{stack.base}/v1/images/generations", json={"prompt": "a red circle"}, timeout=120
    )
    ok = set(heads) == {200} and stream.status_code == 200 and wait.status_code == 200
    lines.append(
        Line(
            "head-and-gone-early-flood",
            "other tenants still stream and wait",
            f"250 HEAD {sorted(set(heads))}, 100 gone early; then a stream "
            f"{stream.status_code}, an OpenAI wait {wait.status_code}",
            ok,
        )
    )
    return lines


def busy_worker(stack: Stack) -> list[Line]:
    """With the worker on a long job: one tenant's streams are capped, its queued cost is
    capped, a job too large is refused, and a cancel frees the worker."""
    lines = []
    a, b = stack.tenant("flood-a"), stack.tenant("budget-b")
    blocker = stack.submit(stack.tenant("blocker"), LONG).json()["id"]
    wait_for(
        lambda: (
            (stack.job(stack.tenant("blocker"), blocker).get("progress") or {}).get("step", 0) >= 2
        ),
        120,
        "the long job to run",
    )
    queued_a = stack.submit(a, LONG).json()["id"]  # waits behind the blocker: streams stay open
    events = f"{stack.base}/v1/jobs/{queued_a}/events"
    opened: list[requests.Response] = []
    refusals: list[requests.Response] = []
    for _ in range(60):
        r = a.get(events, stream=True, timeout=30)
        (opened if r.status_code == 200 else refusals).append(r)
    b_streams = [
        b.get(
            events.replace(queued_a, stack.submit(b, QUICK).json()["id"]), stream=True, timeout=30
        )
        for _ in range(10)
    ]
    messages = {r.json()["error"]["message"][:40] for r in refusals}
    ok = (
        len(opened) <= 50
        and refusals
        and all(error_code(r) == "503 too_many_streams" for r in refusals)
        and all(r.status_code == 200 for r in b_streams)
    )
    lines.append(
        Line(
            "one-tenant-takes-all-streams",
            "at most 25 per API process (2), the rest 503, another tenant still streams",
            f"{len(opened)} open, {len(refusals)} refused {sorted(messages)}, other "
            f"tenant {[r.status_code for r in b_streams].count(200)}/10 open",
            bool(ok),
        )
    )
    for r in opened + b_streams:
        r.close()

    before = stack.count(b)
    big = {"prompt": "a red circle", "width": 256, "height": 256, "candidates": 4, "steps": 15}
    answers = [stack.submit(b, big) for _ in range(60)]
    accepted = [r.json()["id"] for r in answers if r.status_code == 202]
    over = [r for r in answers if r.status_code != 202]
    ok = bool(over) and all(error_code(r) == "429 too_much_queued_work" for r in over)
    lines.append(
        Line(
            "queue-the-whole-model",
            "429 too_much_queued_work past 200 megapixel-steps a tenant",
            f"{len(accepted)} accepted (3.93 each), then {sorted({error_code(r) for r in over})}",
            ok,
        )
    )
    for job_id in accepted:
        b.post(f"{stack.base}/v1/jobs/{job_id}/cancel", timeout=10)
    assert stack.count(b) - before == len(accepted)

    progress = redis.Redis(port=valkey_port(stack), password=valkey_secret(stack))

    def step() -> int:
        return int(progress.hget(keys.progress(blocker), "step") or 0)  # type: ignore[arg-type]

    canceled_at = time.monotonic()
    stack.tenant("blocker").post(f"{stack.base}/v1/jobs/{blocker}/cancel", timeout=10)
    at_cancel = step()
    wait_for(lambda: stack.job(a, queued_a)["status"] != "queued", 120, "the next job to start")
    freed = time.monotonic() - canceled_at
    after = step()
    a.post(f"{stack.base}/v1/jobs/{queued_a}/cancel", timeout=10)
    lines.append(
        Line(
            "cancel-a-16-candidate-job",
            "at most one more step of one chunk, then the next job",
            f"{after - at_cancel} more steps; the next job started {freed:.1f} s after the cancel",
            after - at_cancel <= 1,
        )
    )
    return lines


# --- priority (issue 21, item 7) ------------------------------------------------------------


def priority_above_cap(stack: Stack) -> tuple[bool, str]:
    """A tenant asks for priority 9 with no admin's leave: refused, naming priority."""
    http = stack.tenant("mallory")
    before = stack.count(http)
    r = stack.submit(http, {**QUICK, "priority": 9})
    left = stack.count(http) - before
    param = r.json().get("error", {}).get("param") if r.status_code == 422 else None
    ok = error_code(r) == "422 invalid_request" and param == "priority" and left == 0
    return ok, f"{error_code(r)} naming {param}, {left} jobs created"


def dashboard_form(stack: Stack) -> tuple[requests.Session, str]:
    """A browser signed in to the dashboard with make run's admin key; its CSRF token."""
    token = re.compile(r'name="csrf_token" value="([^"]+)"')
    browser = requests.Session()
    form = browser.get(f"{stack.base}/admin/login", timeout=10).text
    key = (stack.data / "admin.key").read_text().strip()
    found = token.search(form)
    assert found is not None, "the sign-in form has a CSRF token"
    browser.post(
        f"{stack.base}/admin/login",
        timeout=10,
        allow_redirects=False,
        data={"key": key, "csrf_token": found.group(1)},
    )
    page = browser.get(f"{stack.base}/admin/", timeout=10).text
    return browser, token.search(page).group(1)  # type: ignore[union-attr]


def pause_resume_order(stack: Stack) -> list[Line]:
    """The model's queue paused on the dashboard: one tenant queues 7 priority-5 jobs, then a
    tenant an admin allowed 9 queues one at 9; the messages come back every few seconds while
    paused. After the resume the priority-9 job starts first and every job starts at the place
    its position said."""
    low, high = stack.tenant("prio-low"), stack.tenant("prio-high")
    tenants = stack.admin.get(f"{stack.base}/v1/admin/tenants", timeout=10).json()["tenants"]
    high_id = next(t["id"] for t in tenants if t["name"] == "prio-high")
    stack.admin.put(
        f"{stack.base}/v1/admin/tenants/{high_id}/limits", json={"max_priority": 9}, timeout=10
    ).raise_for_status()
    model = stack.admin.get(f"{stack.base}/v1/models", timeout=10).json()["models"][0]["name"]
    browser, token = dashboard_form(stack)
    pause = browser.post(
        f"{stack.base}/admin/queues/{model}/pause",
        timeout=10,
        data={"csrf_token": token},
        allow_redirects=False,
    )
    owners: dict[str, requests.Session] = {}
    try:
        for _ in range(7):
            owners[stack.submit(low, QUICK).json()["id"]] = low
        urgent = stack.submit(high, {**QUICK, "priority": 9}).json()["id"]
        owners[urgent] = high
        time.sleep(8)  # the messages come back, paused, a few times each
        positions = {j: stack.job(http, j)["queue_position"] for j, http in owners.items()}
    finally:
        resume = browser.post(
            f"{stack.base}/admin/queues/{model}/resume",
            timeout=10,
            data={"csrf_token": token},
            allow_redirects=False,
        )
    finished = lambda: all(stack.job(h, j)["status"] == "succeeded" for j, h in owners.items())  # noqa: E731
    wait_for(finished, 300, "the jobs after the resume")
    started = sorted(owners, key=lambda j: stack.job(owners[j], j)["started_at"])
    by_position = sorted(owners, key=positions.__getitem__)
    ok = (
        pause.status_code == resume.status_code == 303
        and started[0] == urgent
        and started == by_position
    )
    return [
        Line(
            "pause-resume-order",
            "the priority-9 job starts first, every job at the place its position said",
            f"pause/resume {pause.status_code}/"
            f"{resume.status_code}; priority 9 started #{started.index(urgent) + 1} of 8 "
            f"(position {positions[urgent]}); start order = positions: "
            f"{started == by_position}",
            ok,
        )
    ]


def valkey_port(stack: Stack) -> int:
    assert stack.log_path is not None
    printed = stack.log_path.read_text(errors="replace")
    return int(printed.split("embedded valkey on 127.0.0.1:", 1)[1].split(",", 1)[0])


def valkey_secret(stack: Stack) -> str:
    return (stack.data / "valkey.password").read_text().strip()


def trickle(socks: list[socket.socket], stop: threading.Event) -> None:
    while not stop.wait(1.0):
        for s in socks:
            with suppress(OSError):
                s.sendall(b"X")


def slow_clients(stack: Stack) -> list[Line]:
    lines = []
    for name, opening in (
        ("300-slow-header-clients", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"),
        (
            "300-clients-never-closing",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
    ):
        socks = [socket.create_connection(("127.0.0.1", stack.port)) for _ in range(300)]
        for s in socks:
            s.sendall(opening)
        stop = threading.Event()
        if b"\r\n\r\n" not in opening:  # a head that never ends: a byte a second
            threading.Thread(target=trickle, args=(socks, stop), daemon=True).start()
        answered = 0
        for _ in range(25):
            with suppress(requests.RequestException):
                answered += requests.get(f"{stack.base}/healthz", timeout=5).status_code == 200
            time.sleep(0.2)
        stop.set()
        for s in socks:
            s.close()
        lines.append(
            Line(name, "ordinary requests answered (25 of 25)", f"{answered} of 25", answered == 25)
        )
    return lines


def arrivals_receiver(came: list[float]) -> http.server.ThreadingHTTPServer:
    """A receiver on loopback that answers at once and notes when each webhook came."""

    class Arrivals(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            came.append(time.monotonic())
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Arrivals)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def hanging_receivers(stack: Stack) -> tuple[bool, str]:
    """Tenant A aims 32 webhooks at 16 receivers that accept and never answer (listening
    sockets nobody reads: the kernel completes the connection, no answer ever comes); tenant
    B's webhook, queued after them, must still arrive at once (before: after 28.8 s, 8 shared
    threads held 15 s each)."""
    a, b = stack.tenant("hook-flooder"), stack.tenant("hook-victim")
    came: list[float] = []
    server = arrivals_receiver(came)
    holes = [socket.create_server(("127.0.0.1", 0), backlog=64) for _ in range(16)]
    events = ["job.canceled", "job.succeeded", "job.failed"]
    body = {
        "prompt": "a red circle",
        "steps": 100,
        "candidates": 4,
        "top_k": 1,
        "webhook_events": events,
    }

    def event(http_: requests.Session, url: str) -> str:
        r = stack.submit(http_, {**body, "webhook_url": url})
        if r.status_code != 202:
            raise AssertionError(f"a webhook to {url} refused: {error_code(r)}")
        job_id = str(r.json()["id"])
        http_.post(f"{stack.base}/v1/jobs/{job_id}/cancel", timeout=10)
        return job_id

    def b_latency(count: int) -> float:
        sent = time.monotonic()
        event(b, f"http://127.0.0.1:{server.server_address[1]}/hook")
        wait_for(lambda: len(came) >= count, 90, "tenant B's webhook")
        return came[count - 1] - sent

    try:
        alone = b_latency(1)
        a_jobs = [
            event(a, f"http://127.0.0.1:{holes[i % 16].getsockname()[1]}/hook") for i in range(32)
        ]
        flooded = b_latency(2)
        listed = [
            d
            for j in a_jobs
            for d in a.get(f"{stack.base}/v1/jobs/{j}/webhooks", timeout=10).json()["deliveries"]
        ]
    finally:
        server.shutdown()
        for hole in holes:
            hole.close()
    spent = sum(d["attempt_count"] for d in listed)
    waiting = sum(d["status"] == "pending" and d["attempt_count"] == 0 for d in listed)
    ok = len(listed) == 32 and spent < 32
    return ok, (
        f"B's webhook {alone * 1000:.0f} ms alone, {flooded * 1000:.0f} ms behind A's 32 "
        f"to hanging receivers; A's attempts spent by then {spent}, {waiting} waiting "
        "unspent"
    )


# --- the dashboard and the access log (issue 21, items 4 and 8) -----------------------------

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_dashboards: dict[str, tuple[requests.Session, str]] = {}


def admin_key_of(stack: Stack) -> str:
    return str(stack.admin.headers["Authorization"]).removeprefix("Bearer ")


def sign_in(stack: Stack, next_: str = "") -> tuple[requests.Session, requests.Response]:
    """A browser's sign-in to the dashboard with the admin key: its cookies, and the answer."""
    browser = requests.Session()
    form = browser.get(f"{stack.base}/admin/login", timeout=10)
    token = CSRF.search(form.text)
    assert token, form.text[:200]
    form_data = {"key": admin_key_of(stack), "csrf_token": token[1], "next": next_}
    r = browser.post(f"{stack.base}/admin/login", data=form_data, timeout=10, allow_redirects=False)
    return browser, r


def dashboard(stack: Stack) -> tuple[requests.Session, str]:
    """One signed-in dashboard browser for these attacks (sign-ins are rate limited), and its
    CSRF token."""
    if stack.base not in _dashboards:
        browser, r = sign_in(stack)
        assert r.status_code == 303, r.text[:200]
        page = browser.get(f"{stack.base}/admin/", timeout=10)
        token = CSRF.search(page.text)
        assert token, page.text[:200]
        _dashboards[stack.base] = (browser, token[1])
    return _dashboards[stack.base]


def rows(stack: Stack, table: str) -> int:
    with closing(sqlite3.connect(stack.data / "daikon.db")) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def odd_dashboard_queries(stack: Stack) -> tuple[bool, str]:
    browser, _ = dashboard(stack)
    paths = [
        "/admin/usage?to=0001-01-01",
        "/admin/jobs?from=9999-12-31T23:59-01:00",
        "/admin/jobs?to=9999-12-31T23:59-01:00",
        "/admin/audit?before=" + "9" * 30,
        "/admin/usage?from=9999-06-01",
        "/admin/audit?before=" + "9" * 4000,
        "/admin/jobs?cursor=abc",
        "/admin/jobs?cursor=WyI5OTk5LTEyLTMxVDIzOjU5LTAxOjAwIiwieCJd",
    ]
    codes = [browser.get(stack.base + p, timeout=10).status_code for p in paths]
    ok = codes == [422] * len(paths)
    return ok, f"{len(paths)} odd queries: {sorted(set(codes))} (none 500)" if ok else str(codes)


def next_crlf(stack: Stack) -> tuple[bool, str]:
    before = rows(stack, "dashboard_sessions")
    answers = [
        sign_in(stack, target)[1]
        for target in ("/admin/\r\nSet-Cookie: daikon_admin=x", "https://evil.example/admin/")
    ]
    left = rows(stack, "dashboard_sessions") - before
    cookies = sum("daikon_admin=" in r.headers.get("Set-Cookie", "") for r in answers)
    codes = [r.status_code for r in answers]
    ok = codes == [400, 400] and left == 0 and cookies == 0
    return ok, f"{codes}, {left} sessions written, {cookies} cookies set"


def notice_injection(stack: Stack) -> tuple[bool, str]:
    browser, _ = dashboard(stack)
    crafted = "Your key was revoked: sign in at https://evil.example/admin"
    shown = [
        crafted in browser.get(f"{stack.base}{path}", params={"notice": crafted}, timeout=10).text
        for path in ("/admin/", "/admin/queues", "/admin/tenants")
    ]
    return not any(shown), f"crafted notice shown on {sum(shown)} of {len(shown)} pages"


def pause_unknown_model(stack: Stack) -> tuple[bool, str]:
    browser, token = dashboard(stack)
    r = browser.post(
        f"{stack.base}/admin/queues/no-such-model/pause",
        data={"csrf_token": token},
        timeout=10,
        allow_redirects=False,
    )
    paused = rows(stack, "paused_models")
    return r.status_code == 404 and paused == 0, f"{r.status_code}, {paused} paused models"


def signed_url_in_access_log(stack: Stack) -> tuple[bool, str]:
    assert stack.log_path is not None
    http = stack.tenant("mallory")
    job_id = stack.submit(http, QUICK).json()["id"]
    wait_for(lambda: stack.job(http, job_id)["status"] == "succeeded", 120, "a quick job")
    url = stack.job(http, job_id)["images"][0]["url"]
    sig = url.rsplit("sig=", 1)[1]
    fetched = requests.get(url, timeout=10).status_code
    path = f"/v1/jobs/{job_id}/images/1"
    log_path = stack.log_path
    assert log_path is not None
    wait_for(lambda: path in log_path.read_text(errors="replace"), 30, "the access log line")
    log = log_path.read_text(errors="replace")
    lines = [line for line in log.splitlines() if f"GET {path}" in line]
    leaked = sig in log
    ok = fetched == 200 and bool(lines) and not leaked
    shown = lines[0].split('"')[1] if lines else "no line"
    where = "in" if leaked else "not in"
    return ok, f"fetched {fetched}; logged as {shown!r}; signature {where} the log"


def loopback_webhook_other_tenant(stack: Stack) -> tuple[bool, str]:
    hook = "http://127.0.0.1:9/hook"
    tenant = error_code(stack.submit(stack.tenant("mallory"), {**QUICK, "webhook_url": hook}))
    own = stack.submit(stack.admin, {**QUICK, "webhook_url": hook})
    if own.status_code == 202:
        stack.admin.post(f"{stack.base}/v1/jobs/{own.json()['id']}/cancel", timeout=10)
    ok = tenant == "422 invalid_request" and own.status_code == 202
    return ok, f"a tenant {tenant}, the admin's own tenant {own.status_code}"


ROTATED_KEY = "dk_admin_rotated_" + "r" * 32


def old_key_session(work: Path, browser: requests.Session, token: str) -> Line:
    """After make run restarts with another DAIKON_ADMIN_KEY (same data directory), the
    session opened with the old key loads no page and creates no tenant."""
    with make_run(work, admin_key=ROTATED_KEY, log_name="run-rotated.log") as stack:
        # The browser kept its cookie (cookies are per host, not per port: the new port gets it).
        page = browser.get(f"{stack.base}/admin/tenants", timeout=10, allow_redirects=False)
        made = browser.post(
            f"{stack.base}/admin/tenants",
            timeout=10,
            allow_redirects=False,
            data={"csrf_token": token, "name": "made-with-old-key"},
        )
        names = {
            t["name"]
            for t in stack.admin.get(f"{stack.base}/v1/admin/tenants", timeout=10).json()["tenants"]
        }
    created = "made-with-old-key" in names
    ok = page.status_code == 302 and made.status_code == 401 and not created
    return Line(
        "old-admin-key-session",
        "after a restart with a new key: page 302 to the sign-in, create 401, nothing created",
        f"page {page.status_code}, create "
        f"{made.status_code}, tenant {'created' if created else 'not created'}",
        ok,
    )


def noise_png(side: int) -> bytes:
    """An incompressible PNG: what stores the most bytes per upload."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, format="PNG")
    return buf.getvalue()


def storage_quota(stack: Stack) -> list[Line]:
    """A tenant with a small quota set by the admin uploads edits until refused (403
    storage_quota_exceeded, nothing stored); then retention deletes its canceled edits'
    inputs (the real sweep on the stack's database and folder, with a one-second period) and
    the bytes come back."""
    from db.session import make_engine, make_session_factory
    from server.settings import Settings
    from server.storage import LocalStore
    from worker.sweeper import purge_once

    name = f"hoarder-{os.getpid()}"
    tenant = stack.admin.post(f"{stack.base}/v1/admin/tenants", json={"name": name}, timeout=10)
    tenant_id = tenant.json()["id"]
    key = stack.admin.post(
        f"{stack.base}/v1/admin/tenants/{tenant_id}/keys", json={}, timeout=10
    ).json()["key"]
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    # ~48 KiB: three fit under the quota, the fourth does not (small enough to stay clear of
    # the multipart parser's 64 KiB buffer, issue 21 item 3, whatever the noise).
    picture = noise_png(128)
    quota = 150_000
    stack.admin.put(
        f"{stack.base}/v1/admin/tenants/{tenant_id}/storage-quota",
        json={"storage_quota_bytes": quota},
        timeout=10,
    )
    images = stack.data / "images"

    def files() -> int:
        return sum(1 for p in images.rglob("*") if p.is_file()) if images.exists() else 0

    def edit() -> requests.Response:
        body = {"prompt": "a red circle", "mode": "image", "steps": 4, "candidates": 1}
        parts: dict[str, tuple[str | None, bytes, str]] = {
            "request": (None, json.dumps(body).encode(), "application/json"),
            "image": ("noise.png", picture, "image/png"),
        }
        return http.post(f"{stack.base}/v1/jobs", files=parts, timeout=30)

    accepted: list[str] = []
    refusal: requests.Response | None = None
    for _ in range(8):
        before_files, before_jobs = files(), stack.count(http)
        r = edit()
        if r.status_code != 202:
            refusal = r
            break
        accepted.append(r.json()["id"])
        http.post(f"{stack.base}/v1/jobs/{accepted[-1]}/cancel", timeout=10)  # keeps its input
    usage = http.get(f"{stack.base}/v1/usage", timeout=10).json()
    left_files, left_jobs = files() - before_files, stack.count(http) - before_jobs
    code = error_code(refusal) if refusal is not None else "never refused"
    lines = [
        Line(
            "storage-quota",
            "403 storage_quota_exceeded after 3 uploads, nothing stored, usage shows the bytes",
            f"{len(accepted)} accepted, then {code}; {left_files} files and {left_jobs} "
            f"jobs left by the refusal; usage {usage['stored_bytes']} of "
            f"{usage['storage_quota_bytes']} bytes",
            code == "403 storage_quota_exceeded"
            and len(accepted) == 3
            and left_files == 0
            and left_jobs == 0
            and 0 < usage["stored_bytes"] <= quota,
        )
    ]

    # Retention: the canceled edits (and their inputs) go, and so do their bytes. A period of
    # a second for every status (this runs last: the other attacks' jobs may go too), after a
    # pause that lets the worker drop what it was running when the cancels came.
    time.sleep(5)
    second = 1 / 3600
    settings = Settings().evolve(
        data_dir=stack.data,
        retain_canceled_hours=second,
        retain_failed_hours=second,
        retain_succeeded_hours=second,
    )
    engine = make_engine(settings.sqlalchemy_url)
    try:
        done = purge_once(settings, make_session_factory(engine), LocalStore(images))
    finally:
        engine.dispose()
    after = http.get(f"{stack.base}/v1/usage", timeout=10).json()["stored_bytes"]
    again = edit()
    if again.status_code == 202:
        http.post(f"{stack.base}/v1/jobs/{again.json()['id']}/cancel", timeout=10)
    # The rows are gone: every API process answers 404 once its finished-job cache (30 s)
    # lets go; the objects outlive the rows by their grace (90 s), then the stack's own
    # worker sweeper deletes them.
    t0 = time.monotonic()

    def polls() -> set[int]:
        return {http.get(f"{stack.base}/v1/jobs/{j}", timeout=10).status_code for j in accepted}

    with suppress(TimeoutError):
        wait_for(lambda: polls() == {404}, 60, "the deleted jobs to answer 404", poll=1.0)
    answered_404 = time.monotonic() - t0
    gone = polls()
    with suppress(TimeoutError):
        wait_for(
            lambda: not any((images / j).exists() for j in accepted),
            180,
            "the worker's sweeper to delete the inputs",
            poll=1.0,
        )
    inputs_left = [j for j in accepted if (images / j).exists()]
    lines.append(
        Line(
            "retention-deletes-canceled-input",
            "canceled edits 404, inputs deleted "
            "by the worker's sweeper, bytes back, the tenant may upload again",
            f"sweep deleted {done.jobs} jobs; usage {after} bytes; next upload "
            f"{again.status_code}; polls {sorted(gone)} after {answered_404:.0f} s; "
            f"{len(inputs_left)} input folders left after "
            f"{time.monotonic() - t0:.0f} s",
            gone == {404} and not inputs_left and after == 0 and again.status_code == 202,
        )
    )
    return lines


SINGLE: list[Attack] = [
    refused(
        "deeply-nested-json", "400 invalid_json, nothing created", 400, "invalid_json", deep_json
    ),
    refused(
        "lone-surrogate-prompt",
        "400 invalid_json, nothing created",
        400,
        "invalid_json",
        raw_json('{"prompt": "a\\ud800b"}'),
    ),
    refused(
        "lone-surrogate-metadata",
        "400 invalid_json, nothing created",
        400,
        "invalid_json",
        raw_json('{"prompt": "x", "metadata": {"n": "\\ud800"}}'),
    ),
    refused(
        "number-1e400",
        "400 invalid_json, nothing created",
        400,
        "invalid_json",
        raw_json('{"prompt": "x", "metadata": {"a": 1e400}}'),
    ),
    refused(
        "nan-guidance",
        "400 invalid_json, nothing created",
        400,
        "invalid_json",
        raw_json('{"prompt": "x", "guidance_scale": NaN}'),
    ),
    refused(
        "zero-width-prompt",
        "422 invalid_request, nothing created",
        422,
        "invalid_request",
        json_body({"prompt": "\u200b\u200c\u200d"}),
    ),
    refused(
        "nul-in-prompt",
        "400 invalid_json, nothing created",
        400,
        "invalid_json",
        json_body({"prompt": "a\u0000b"}),
    ),
    refused(
        "body-over-limit",
        "413, nothing created",
        413,
        "request_entity_too_large",
        json_body({"prompt": "a" * 70_000}),
    ),
    refused(
        "largest-job-allowed-before",
        "422 job_too_large, nothing created",
        422,
        "job_too_large",
        json_body(HUGE),
    ),
    malformed_chunked,
    chunked_over_limit,
    long_last_event_id,
    held("other-tenants-job", "404 for get, cancel and events", other_tenants_job),
    held("signed-image-urls", "signed 200, tampered and traversal 404", tampered_image_url),
    held("ssrf-webhook-addresses", "422 for metadata, private, mapped, hex and ULA", ssrf),
    held("data-dir-permissions", "dirs 0700, files 0600", data_dir),
    held(
        "embedded-valkey-password",
        "NOAUTH without the password, which is in no log",
        valkey_password,
    ),
    held("webhook-secret-at-rest", "every stored secret encrypted", secret_at_rest),
    held("internal-webhook-answer", "attempt log: length only, no excerpt", internal_answer),
    held(
        "hanging-webhook-receivers",
        "another tenant's webhook arrives; A's queue of 32 hanging deliveries is not ahead of it",
        hanging_receivers,
    ),
    held("dashboard-odd-queries", "422 naming the parameter, never 500", odd_dashboard_queries),
    held("next-crlf-sign-in", "400 before the sign-in: no session row, no cookie", next_crlf),
    held("notice-injection", "a crafted ?notice= is shown nowhere", notice_injection),
    held("pause-unknown-model", "404, nothing paused", pause_unknown_model),
    held(
        "signed-url-in-access-log",
        "fetched 200, the signature in no log line",
        signed_url_in_access_log,
    ),
    held(
        "tenant-loopback-webhook",
        "422 for a tenant, 202 for the admin's own tenant",
        loopback_webhook_other_tenant,
    ),
    held("priority-above-cap", "422 naming priority, nothing created", priority_above_cap),
]


def _lines(attack: Callable[[Any], list[abuse_uploads.Result]]) -> Callable[[Stack], list[Line]]:
    def group(stack: Stack) -> list[Line]:
        return [Line(name, expected, saw, ok) for name, expected, saw, ok in attack(stack)]

    group.__name__ = attack.__name__
    return group


UPLOAD_GROUPS = [
    _lines(a)
    for a in (
        abuse_uploads.slow_bodies_flood,
        abuse_uploads.scan_bombs,
        abuse_uploads.uploads_at_the_limit,
    )
]


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="daikon-abuse-"))
    started = time.monotonic()
    lines: list[Line] = []
    old_session: tuple[requests.Session, str] | None = None
    try:
        with make_run(work) as stack:
            print(
                f"abuse | make run up in {time.monotonic() - started:.0f} s at {stack.base}; "
                f"work dir {work}",
                flush=True,
            )
            for attack in SINGLE:
                try:
                    line = attack(stack)
                except Exception as e:
                    line = Line(
                        getattr(attack, "__name__", "attack"),
                        "no crash",
                        f"{type(e).__name__}: {e}",
                    )
                lines.append(line)
                print(line.text(), flush=True)
            for group in (
                stream_slots,
                busy_worker,
                pause_resume_order,
                slow_clients,
                *UPLOAD_GROUPS,
                storage_quota,
            ):
                try:
                    found = group(stack)
                except Exception as e:
                    found = [Line(group.__name__, "no crash", f"{type(e).__name__}: {e}")]
                for line in found:
                    lines.append(line)
                    print(line.text(), flush=True)
            old_session = dashboard(stack)
        # Last: make run again on the same data, with another admin key.
        try:
            line = old_key_session(work, *old_session)
        except Exception as e:
            line = Line("old-admin-key-session", "no crash", f"{type(e).__name__}: {e}")
        lines.append(line)
        print(line.text(), flush=True)
    except Exception as e:
        print(f"abuse | the stack failed: {type(e).__name__}: {e}", flush=True)
        lines.append(Line("stack", "make run starts", str(e)))
    failed = [line for line in lines if not line.ok]
    verdict = "PASSED" if not failed else "FAILED"
    print(
        f"abuse | {verdict}: {len(lines) - len(failed)} of {len(lines)} attacks held in "
        f"{time.monotonic() - started:.0f} s",
        flush=True,
    )
    if failed:
        print(f"abuse | logs kept in {work}", flush=True)
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

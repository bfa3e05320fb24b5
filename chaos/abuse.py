"""`python -m chaos.abuse` (`make abuse`): replay the attacks of a hostile or careless tenant
against `make run`'s real stack (the launcher with its embedded valkey, SQLite, local storage,
gunicorn API, worker and webhook worker on the shapes models), and print one line per attack:
what it expected and what it saw.

Everything goes to 127.0.0.1, every flood is bounded in count and time, and the run stops by
itself (about 3 minutes). Exits non-zero when any attack got through.
"""

from __future__ import annotations

import http.server
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

from chaos.harness import ROOT, free_port, raw_http, wait_for

HUGE = {"prompt": "x", "width": 1024, "height": 1024, "steps": 150, "candidates": 16,
        "top_k": 16}  # fmt: skip
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
        return (f"abuse | {self.name:<28} {'OK  ' if self.ok else 'FAIL'} expected: "
                f"{self.expected}; saw: {self.saw}")  # fmt: skip


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
            key = self.admin.post(f"{self.base}/v1/admin/tenants/{t.json()['id']}/keys",
                                  json={}, timeout=10).json()["key"]  # fmt: skip
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
def make_run(work: Path) -> Iterator[Stack]:
    """`python -m daikon.launcher` as a new user starts it: no service URLs, no models set."""
    port = free_port()
    unset = ("REDIS_URL", "DATABASE_URL", "DAIKON_ADMIN_KEY", "DAIKON_MODEL", "DAIKON_CLIP_MODEL",
             "DAIKON_WEBHOOK_ALLOW_HOSTS")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(DAIKON_DATA_DIR=str(work / "data"), DAIKON_PORT=str(port),
               DAIKON_TORCH_THREADS="1")  # fmt: skip
    log_path = work / "run.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "daikon.launcher"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        key_file = work / "data" / "admin.key"
        wait_for(lambda: key_file.exists() and proc.poll() is None, 90, "the admin key")
        admin = requests.Session()
        admin.headers["Authorization"] = f"Bearer {key_file.read_text().strip()}"
        wait_for(lambda: requests.get(f"{base}/readyz", timeout=3).status_code == 200, 120,
                 "make run to be ready")  # fmt: skip
        # The worker publishes the model's limits once it has loaded it.
        wait_for(lambda: admin.get(f"{base}/v1/models", timeout=5).json()["models"][0]["limits"],
                 120, "the model's limits")  # fmt: skip
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


def refused(name: str, expected: str, status: int, code: str,
            send: Callable[[Stack, requests.Session], requests.Response]) -> Attack:  # fmt: skip
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
    return http.post(f"{stack.base}/v1/jobs", data=f'{{"prompt":"x","metadata":{nested}}}',
                     headers={"Content-Type": "application/json"}, timeout=10)  # fmt: skip


def raw_json(body: str) -> Callable[[Stack, requests.Session], requests.Response]:
    def send(stack: Stack, http: requests.Session) -> requests.Response:
        return http.post(f"{stack.base}/v1/jobs", data=body.encode(),
                         headers={"Content-Type": "application/json"}, timeout=10)  # fmt: skip

    return send


def json_body(body: dict[str, Any]) -> Callable[[Stack, requests.Session], requests.Response]:
    return lambda stack, http: http.post(f"{stack.base}/v1/jobs", json=body, timeout=10)


def chunked(stack: Stack, body: bytes, *, malformed: bool = False) -> tuple[int, bytes]:
    key = stack.tenant("mallory").headers["Authorization"]
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n").encode()  # fmt: skip
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
    return Line("chunked-body-over-limit", "413 request_entity_too_large",
                f"{status} {body[:60]!r}", status == 413)  # fmt: skip


def long_last_event_id(stack: Stack) -> Line:
    http = stack.tenant("mallory")
    job_id = stack.submit(http, QUICK).json()["id"]
    http.post(f"{stack.base}/v1/jobs/{job_id}/cancel", timeout=10)
    r = http.get(f"{stack.base}/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "9" * 5000},
                 timeout=30)  # fmt: skip
    done = "event: done" in r.text
    return Line("last-event-id-5000-digits", "200, the stream from the start",
                f"{r.status_code}, done event {'sent' if done else 'missing'}",
                r.status_code == 200 and done)  # fmt: skip


def held(name: str, expected: str, check: Callable[[Stack], tuple[bool, str]]) -> Attack:
    def attack(stack: Stack) -> Line:
        ok, saw = check(stack)
        return Line(name, expected, saw, ok)

    return attack


def other_tenants_job(stack: Stack) -> tuple[bool, str]:
    victim = stack.submit(stack.tenant("victim"), QUICK).json()["id"]
    http = stack.tenant("mallory")
    answers = [http.get(f"{stack.base}/v1/jobs/{victim}", timeout=10),
               http.post(f"{stack.base}/v1/jobs/{victim}/cancel", timeout=10),
               http.get(f"{stack.base}/v1/jobs/{victim}/events", timeout=10)]  # fmt: skip
    codes = [a.status_code for a in answers]
    return codes == [404, 404, 404], f"get/cancel/events {codes}"


def tampered_image_url(stack: Stack) -> tuple[bool, str]:
    http = stack.tenant("mallory")
    job_id = stack.submit(http, QUICK).json()["id"]
    wait_for(lambda: stack.job(http, job_id)["status"] == "succeeded", 120, "a quick job")
    url = stack.job(http, job_id)["images"][0]["url"]
    good = requests.get(url, timeout=10).status_code
    bad = requests.get(url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB"), timeout=10)
    traversal = requests.get(f"{stack.base}/v1/jobs/..%2f..%2fsecret.key/images/1?expires=1&sig=x",
                             timeout=10)  # fmt: skip
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
        http_ = stack.tenant("mallory")
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
    gone = (f"GET /v1/jobs/{job_a}/events HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {a.headers['Authorization']}\r\n\r\n").encode()  # fmt: skip
    for _ in range(100):
        with closing(socket.create_connection(("127.0.0.1", stack.port))) as s:
            s.sendall(gone)
    stream = b.get(f"{stack.base}/v1/jobs/{stack.submit(b, QUICK).json()['id']}/events",
                   timeout=120)  # fmt: skip
    wait = c.post(f"{stack.base}/v1/images/generations", json={"prompt": "a red circle"},
                  timeout=120)  # fmt: skip
    ok = set(heads) == {200} and stream.status_code == 200 and wait.status_code == 200
    lines.append(Line("head-and-gone-early-flood", "other tenants still stream and wait",
                      f"250 HEAD {sorted(set(heads))}, 100 gone early; then a stream "
                      f"{stream.status_code}, an OpenAI wait {wait.status_code}", ok))  # fmt: skip
    return lines


def busy_worker(stack: Stack) -> list[Line]:
    """With the worker on a long job: one tenant's streams are capped, its queued cost is
    capped, a job too large is refused, and a cancel frees the worker."""
    lines = []
    a, b = stack.tenant("flood-a"), stack.tenant("budget-b")
    blocker = stack.submit(stack.tenant("blocker"), LONG).json()["id"]
    wait_for(lambda: (stack.job(stack.tenant("blocker"), blocker).get("progress") or {})
             .get("step", 0) >= 2, 120, "the long job to run")  # fmt: skip
    queued_a = stack.submit(a, LONG).json()["id"]  # waits behind the blocker: streams stay open
    events = f"{stack.base}/v1/jobs/{queued_a}/events"
    opened: list[requests.Response] = []
    refusals: list[requests.Response] = []
    for _ in range(60):
        r = a.get(events, stream=True, timeout=30)
        (opened if r.status_code == 200 else refusals).append(r)
    b_streams = [b.get(events.replace(queued_a, stack.submit(b, QUICK).json()["id"]),
                       stream=True, timeout=30) for _ in range(10)]  # fmt: skip
    messages = {r.json()["error"]["message"][:40] for r in refusals}
    ok = (len(opened) <= 50 and refusals and all(error_code(r) == "503 too_many_streams"
          for r in refusals) and all(r.status_code == 200 for r in b_streams))  # fmt: skip
    lines.append(Line("one-tenant-takes-all-streams", "at most 25 per API process (2), the rest "
                      "503, another tenant still streams",
                      f"{len(opened)} open, {len(refusals)} refused {sorted(messages)}, other "
                      f"tenant {[r.status_code for r in b_streams].count(200)}/10 open",
                      bool(ok)))  # fmt: skip
    for r in opened + b_streams:
        r.close()

    before = stack.count(b)
    big = {"prompt": "a red circle", "width": 256, "height": 256, "candidates": 4, "steps": 15}
    answers = [stack.submit(b, big) for _ in range(60)]
    accepted = [r.json()["id"] for r in answers if r.status_code == 202]
    over = [r for r in answers if r.status_code != 202]
    ok = bool(over) and all(error_code(r) == "429 too_much_queued_work" for r in over)
    lines.append(Line("queue-the-whole-model", "429 too_much_queued_work past 200 "
                      "megapixel-steps a tenant", f"{len(accepted)} accepted (3.93 each), then "
                      f"{sorted({error_code(r) for r in over})}", ok))  # fmt: skip
    for job_id in accepted:
        b.post(f"{stack.base}/v1/jobs/{job_id}/cancel", timeout=10)
    assert stack.count(b) - before == len(accepted)

    progress = redis.Redis(port=valkey_port(stack), password=valkey_secret(stack))

    def step() -> int:
        return int(progress.hget(f"daikon:progress:{blocker}", "step") or 0)  # type: ignore[arg-type]

    canceled_at = time.monotonic()
    stack.tenant("blocker").post(f"{stack.base}/v1/jobs/{blocker}/cancel", timeout=10)
    at_cancel = step()
    wait_for(lambda: stack.job(a, queued_a)["status"] != "queued", 120, "the next job to start")
    freed = time.monotonic() - canceled_at
    after = step()
    a.post(f"{stack.base}/v1/jobs/{queued_a}/cancel", timeout=10)
    lines.append(Line("cancel-a-16-candidate-job", "at most one more step of one chunk, then "
                      "the next job", f"{after - at_cancel} more steps; the next job started "
                      f"{freed:.1f} s after the cancel", after - at_cancel <= 1))  # fmt: skip
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
    browser.post(f"{stack.base}/admin/login", timeout=10, allow_redirects=False,
                 data={"key": key, "csrf_token": token.search(form).group(1)})  # type: ignore[union-attr]  # fmt: skip
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
    stack.admin.put(f"{stack.base}/v1/admin/tenants/{high_id}/limits",
                    json={"max_priority": 9}, timeout=10).raise_for_status()  # fmt: skip
    model = stack.admin.get(f"{stack.base}/v1/models", timeout=10).json()["models"][0]["name"]
    browser, token = dashboard_form(stack)
    pause = browser.post(f"{stack.base}/admin/queues/{model}/pause", timeout=10,
                         data={"csrf_token": token}, allow_redirects=False)  # fmt: skip
    owners: dict[str, requests.Session] = {}
    try:
        for _ in range(7):
            owners[stack.submit(low, QUICK).json()["id"]] = low
        urgent = stack.submit(high, {**QUICK, "priority": 9}).json()["id"]
        owners[urgent] = high
        time.sleep(8)  # the messages come back, paused, a few times each
        positions = {j: stack.job(http, j)["queue_position"] for j, http in owners.items()}
    finally:
        resume = browser.post(f"{stack.base}/admin/queues/{model}/resume", timeout=10,
                              data={"csrf_token": token}, allow_redirects=False)  # fmt: skip
    finished = lambda: all(stack.job(h, j)["status"] == "succeeded" for j, h in owners.items())  # noqa: E731
    wait_for(finished, 300, "the jobs after the resume")
    started = sorted(owners, key=lambda j: stack.job(owners[j], j)["started_at"])
    by_position = sorted(owners, key=positions.__getitem__)
    ok = (pause.status_code == resume.status_code == 303 and started[0] == urgent
          and started == by_position)  # fmt: skip
    return [Line("pause-resume-order", "the priority-9 job starts first, every job at the "
                 "place its position said", f"pause/resume {pause.status_code}/"
                 f"{resume.status_code}; priority 9 started #{started.index(urgent) + 1} of 8 "
                 f"(position {positions[urgent]}); start order = positions: "
                 f"{started == by_position}", ok)]  # fmt: skip


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
        ("300-clients-never-closing", b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close"
                                      b"\r\n\r\n"),
    ):  # fmt: skip
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
        lines.append(Line(name, "ordinary requests answered (25 of 25)",
                          f"{answered} of 25", answered == 25))  # fmt: skip
    return lines


SINGLE: list[Attack] = [
    refused("deeply-nested-json", "400 invalid_json, nothing created", 400, "invalid_json",
            deep_json),
    refused("lone-surrogate-prompt", "400 invalid_json, nothing created", 400, "invalid_json",
            raw_json('{"prompt": "a\\ud800b"}')),
    refused("lone-surrogate-metadata", "400 invalid_json, nothing created", 400, "invalid_json",
            raw_json('{"prompt": "x", "metadata": {"n": "\\ud800"}}')),
    refused("number-1e400", "400 invalid_json, nothing created", 400, "invalid_json",
            raw_json('{"prompt": "x", "metadata": {"a": 1e400}}')),
    refused("nan-guidance", "400 invalid_json, nothing created", 400, "invalid_json",
            raw_json('{"prompt": "x", "guidance_scale": NaN}')),
    refused("zero-width-prompt", "422 invalid_request, nothing created", 422, "invalid_request",
            json_body({"prompt": "\u200b\u200c\u200d"})),
    refused("nul-in-prompt", "400 invalid_json, nothing created", 400, "invalid_json",
            json_body({"prompt": "a\u0000b"})),
    refused("body-over-limit", "413, nothing created", 413, "request_entity_too_large",
            json_body({"prompt": "a" * 70_000})),
    refused("largest-job-allowed-before", "422 job_too_large, nothing created", 422,
            "job_too_large", json_body(HUGE)),
    malformed_chunked,
    chunked_over_limit,
    long_last_event_id,
    held("other-tenants-job", "404 for get, cancel and events", other_tenants_job),
    held("signed-image-urls", "signed 200, tampered and traversal 404", tampered_image_url),
    held("ssrf-webhook-addresses", "422 for metadata, private, mapped, hex and ULA", ssrf),
    held("data-dir-permissions", "dirs 0700, files 0600", data_dir),
    held("embedded-valkey-password", "NOAUTH without the password, which is in no log",
         valkey_password),
    held("webhook-secret-at-rest", "every stored secret encrypted", secret_at_rest),
    held("internal-webhook-answer", "attempt log: length only, no excerpt", internal_answer),
    held("priority-above-cap", "422 naming priority, nothing created", priority_above_cap),
]  # fmt: skip


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="daikon-abuse-"))
    started = time.monotonic()
    lines: list[Line] = []
    try:
        with make_run(work) as stack:
            print(f"abuse | make run up in {time.monotonic() - started:.0f} s at {stack.base}; "
                  f"work dir {work}", flush=True)  # fmt: skip
            for attack in SINGLE:
                try:
                    line = attack(stack)
                except Exception as e:
                    line = Line(getattr(attack, "__name__", "attack"), "no crash",
                                f"{type(e).__name__}: {e}")  # fmt: skip
                lines.append(line)
                print(line.text(), flush=True)
            for group in (stream_slots, busy_worker, pause_resume_order, slow_clients):
                try:
                    found = group(stack)
                except Exception as e:
                    found = [Line(group.__name__, "no crash", f"{type(e).__name__}: {e}")]
                for line in found:
                    lines.append(line)
                    print(line.text(), flush=True)
    except Exception as e:
        print(f"abuse | the stack failed: {type(e).__name__}: {e}", flush=True)
        lines.append(Line("stack", "make run starts", str(e)))
    failed = [line for line in lines if not line.ok]
    verdict = "PASSED" if not failed else "FAILED"
    print(f"abuse | {verdict}: {len(lines) - len(failed)} of {len(lines)} attacks held in "
          f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
    if failed:
        print(f"abuse | logs kept in {work}", flush=True)
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

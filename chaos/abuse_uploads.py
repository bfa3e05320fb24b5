"""`make abuse`'s attacks on request bodies and uploaded images (issue 21, items 1-3): slow
bodies that used to hold every API thread, JPEG scan bombs that cost minutes of API CPU, and
legitimate uploads under the documented limit that were refused. Each returns lines of
(name, expected, saw, ok) for chaos/abuse.py to print; the figures go to docs/reliability.md.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from contextlib import closing
from typing import Any, Protocol

import psutil
import requests
from PIL import Image

from chaos.floods import chunked_head, slow_bodies, timed, upload_head
from chaos.payloads import noise, padded, scan_bomb

Result = tuple[str, str, str, bool]
QUICK_EDIT = {"prompt": "a red circle", "mode": "image", "steps": 4, "candidates": 1, "top_k": 1}


class Stack(Protocol):
    base: str
    port: int
    data: Any

    def tenant(self, name: str) -> requests.Session: ...
    def submit(self, http: requests.Session, body: dict[str, Any]) -> requests.Response: ...


def _key(http: requests.Session) -> str:
    return str(http.headers["Authorization"]).removeprefix("Bearer ")


def slow_bodies_flood(stack: Stack) -> list[Result]:
    """600 sockets send a head and part of a body, then a byte a second (the probe's attack):
    with a tenant's key (300 chunked, 300 uploads announcing 4 MB with 40 KiB sent), then
    with no valid key. Other tenants' polls and /readyz must keep answering."""
    a, b = stack.tenant("slow-bodies"), stack.tenant("slow-bodies-victim")
    job = stack.submit(b, {"prompt": "a red circle", "steps": 2, "candidates": 1})
    poll = f"{stack.base}/v1/jobs/{job.json()['id']}"
    probes = [
        lambda: b.get(poll, timeout=10),
        lambda: requests.get(f"{stack.base}/readyz", timeout=10),
    ]
    quiet = timed(probes, 10)
    results = []
    with slow_bodies(stack.port) as flood:
        flood.open(chunked_head(_key(a)), 300)
        flood.open(upload_head(_key(a)), 300)
        during = timed(probes, 25)
    ok = not during.failures and set(during.statuses) == {200}
    results.append(
        (
            "600-slow-bodies-with-a-key",
            "other tenants' polls and /readyz answered throughout",
            f"quiet: {quiet.describe()}; during: {during.describe()}",
            ok,
        )
    )
    with slow_bodies(stack.port) as flood:
        refused = flood.open(upload_head("dk_no_such_key"), 600)
        during = timed(probes, 25)
        closed = flood.closed_by_server(refused, 60)
    unauthorized = sum(r.startswith(b"HTTP/1.1 401") for r in flood.answered)
    ok = not during.failures and set(during.statuses) == {200} and unauthorized == 600
    results.append(
        (
            "600-slow-bodies-no-valid-key",
            "each 401 from its head, others answered throughout",
            f"{unauthorized} of {closed} answered 401 unread; during: {during.describe()}",
            ok,
        )
    )
    return results


def _api_cpu(stack: Stack) -> float:
    """CPU seconds spent so far by the API's processes (gunicorn's arbiter and its workers,
    forked with the same command line)."""
    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "gunicorn" in cmdline and f"127.0.0.1:{stack.port}" in cmdline:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


def scan_bombs(stack: Stack) -> list[Result]:
    """JPEG scan bombs of 160 KiB: refused before decoding at a few milliseconds of API CPU
    each (decoded, as before, each cost the figure printed); and a tenant allowed one submit a
    minute gets its 429 from the second bomb on, unexamined."""
    bomb = scan_bomb(13_000)
    started = time.process_time()
    Image.open(io.BytesIO(bomb)).load()
    decoded = time.process_time() - started
    http = stack.tenant("bomber")
    files = {"image": ("bomb.jpg", bomb, "image/jpeg")}
    # 1024x1024 at 2 steps: within the CPU's cost limit, so only the file can refuse it.
    job = {"prompt": "x", "mode": "image", "steps": 2, "candidates": 1, "top_k": 1}
    form = {"request": json.dumps(job)}
    before = _api_cpu(stack)
    answers = [
        http.post(f"{stack.base}/v1/jobs", files=files, data=form, timeout=30) for _ in range(20)
    ]
    per_bomb = (_api_cpu(stack) - before) / len(answers)
    codes = {f"{r.status_code} {r.json()['error']['code']}" for r in answers}
    results = [
        (
            "jpeg-scan-bombs",
            "422 too_many_scans, undecoded",
            f"20 bombs of {len(bomb) // 1024} KiB: {sorted(codes)}; API CPU "
            f"{per_bomb * 1000:.0f} ms a bomb (decoding one here: {decoded * 1000:.0f} ms)",
            codes == {"422 too_many_scans"} and per_bomb < decoded,
        )
    ]
    # A tenant limited to 1 submission a minute (an admin's setting, written here directly).
    slow = stack.tenant("bomber-limited")
    with closing(sqlite3.connect(stack.data / "daikon.db")) as db:
        db.execute("UPDATE tenants SET submits_per_minute = 1 WHERE name = 'bomber-limited'")
        db.commit()
    answers = [
        slow.post(f"{stack.base}/v1/jobs", files=files, data=form, timeout=30) for _ in range(5)
    ]
    seen = [f"{r.status_code} {r.json()['error']['code']}" for r in answers]
    results.append(
        (
            "scan-bombs-past-the-rate-limit",
            "the 2nd to 5th refused 429 before any decoding",
            ", ".join(seen),
            seen == ["422 too_many_scans"] + ["429 rate_limited"] * 4,
        )
    )
    return results


def uploads_at_the_limit(stack: Stack) -> list[Result]:
    """Noise PNG and JPEG files of exactly 4 MiB and one byte less (the documented limit), in
    both routes that take uploads: all accepted (most were 413 before)."""
    http = stack.tenant("uploader")
    limit = 4 * 1024 * 1024
    seen: list[str] = []
    ok = True
    for fmt in ("PNG", "JPEG"):
        for size in (limit, limit - 1):
            image = padded(noise((64, 64), fmt, quality=100), fmt, size)
            files = {"image": (f"a.{fmt.lower()}", image, f"image/{fmt.lower()}")}
            r = http.post(
                f"{stack.base}/v1/jobs",
                files=files,
                timeout=60,
                data={"request": str(QUICK_EDIT).replace("'", '"')},
            )
            edit = http.post(
                f"{stack.base}/v1/images/edits",
                files=files,
                timeout=120,
                data={"prompt": "a red circle"},
            )
            seen.append(f"{fmt} {size}: {r.status_code}/{edit.status_code}")
            ok = ok and r.status_code == 202 and edit.status_code == 200
    return [
        (
            "uploads-at-the-4-mib-limit",
            "accepted in /v1/jobs (202) and /v1/images/edits (200)",
            "; ".join(seen),
            ok,
        )
    ]

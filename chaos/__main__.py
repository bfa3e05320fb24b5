"""`python -m chaos` (`make chaos`): start the real processes, break them, count every job.

Exits non-zero when any scenario lost or duplicated a job or broke an expectation.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chaos import scenarios
from chaos.harness import CHAOS_SETTINGS, Cluster


def _terminated(*_: object) -> None:
    raise SystemExit(143)  # run the finally blocks: stop every process, drop the database


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminated)
    ap = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    ap.add_argument(
        "--only",
        nargs="*",
        choices=list(scenarios.SCENARIOS),
        help="run only these scenarios (default: all, in order)",
    )
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs in a row (default 20)")
    ap.add_argument("--broker-outage", type=float, default=60.0, help="seconds Redis is down")
    ap.add_argument("--db-outage", type=float, default=15.0, help="seconds the db is cut")
    ap.add_argument(
        "--storage-outage",
        type=float,
        default=8.0,
        help="seconds S3 is down within the retry window",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs) afterwards")
    ap.add_argument(
        "--busy-core",
        action="store_true",
        help="keep one core busy with another process (a loaded machine)",
    )
    args = ap.parse_args(argv)
    names = args.only or list(scenarios.SCENARIOS)
    retry_window = float(CHAOS_SETTINGS["DAIKON_STORAGE_RETRY_SECONDS"])

    work = Path(tempfile.mkdtemp(prefix="daikon-chaos-"))
    started = time.monotonic()
    print(
        f"chaos | work dir {work} (process logs); settings: "
        + " ".join(f"{k.removeprefix('DAIKON_').lower()}={v}" for k, v in CHAOS_SETTINGS.items()),
        flush=True,
    )
    results: list[scenarios.Result] = []
    cluster: Cluster | None = None
    ok = True
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy_core else None
    try:
        from tests.tiny_models import ensure_tiny_models

        models = ensure_tiny_models(work / "models")
        cluster = Cluster(work, models)
        cluster.start()
        print(
            f"chaos | stack up in {time.monotonic() - started:.1f} s: redis, moto s3, db proxy, "
            "api (gunicorn), worker (celery), each its own process",
            flush=True,
        )
        runs = {
            "kills": lambda: scenarios.kills(cluster, args.kills),
            "batch": lambda: scenarios.kill_mid_batch(cluster),
            "poison": lambda: scenarios.poison(cluster),
            "broker": lambda: scenarios.broker_down(cluster, args.broker_outage),
            "storage": lambda: scenarios.storage_down(cluster, args.storage_outage, retry_window),
            "database": lambda: scenarios.database_down(cluster, args.db_outage),
        }
        for name in names:
            try:
                result = runs[name]()
            except Exception as e:
                result = scenarios.Result(name)
                result.violations.append(f"scenario crashed: {type(e).__name__}: {e}")
            results.append(result)
            print(result.line(), flush=True)
            for v in result.violations:
                print(f"chaos |   ! {v}", flush=True)
            ok = ok and result.ok
        if len(names) == len(scenarios.SCENARIOS):
            final = scenarios.ledger(cluster)
            print(final.line(), flush=True)
            for v in final.violations:
                print(f"chaos |   ! {v}", flush=True)
            ok = ok and final.ok
    except Exception as e:
        print(f"chaos | harness failed: {type(e).__name__}: {e}", flush=True)
        ok = False
    finally:
        if busy is not None:
            busy.kill()
        if cluster is not None:
            if not ok:
                for svc in ("worker", "api"):
                    print(f"chaos | --- {svc} log tail ---\n{cluster.services[svc].log_tail(30)}")
            cluster.stop()
        if args.keep or not ok:
            print(f"chaos | logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    total = time.monotonic() - started
    print(
        f"chaos | {'PASSED' if ok else 'FAILED'}: {len(results)} scenarios in {total:.0f} s",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

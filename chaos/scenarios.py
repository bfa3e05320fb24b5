"""The chaos scenarios. Each one does real damage to the running processes, then counts what
became of every job it submitted and prints one line:

    name  submitted  succeeded  failed_with_reason  lost  duplicated  [refused]  figures

- lost: an accepted job not finished by the deadline (stuck queued or running), failed with no
  reason, succeeded with no images, or with an image row whose object does not exist.
- duplicated: a job with more images than top_k (or a rank twice), or objects in storage under
  the job's prefix that no image row references.
- refused: submissions answered with a clean 503 JSON error (nothing created): not lost.
Any other broken expectation is listed as a violation and fails the run.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import requests
from botocore.exceptions import ClientError
from sqlalchemy import text

from chaos.faults import KILL_WORKER
from chaos.harness import BUCKET, Cluster, wait_for

# The worker's line for each job that succeeded (worker/executor.py), alone, in a batch or
# answered with an earlier job's images.
SUCCEEDED_LINE = re.compile(r"job ([0-9a-f-]{36}) succeeded \((?:batch of|reused job)")

TERMINAL = ("succeeded", "failed", "canceled")
S3_PREFIX = "jobs/"


@dataclass
class Result:
    name: str
    submitted: int = 0
    succeeded: int = 0
    failed_with_reason: int = 0
    lost: int = 0
    duplicated: int = 0
    refused: int = 0
    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)  # error code -> count

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and not self.violations

    def line(self) -> str:
        fails = ",".join(f"{k}:{v}" for k, v in sorted(self.failures.items()))
        figs = " ".join(f"{k}={v}" for k, v in self.figures.items())
        return (
            f"chaos | {self.name:<16} submitted={self.submitted:<3} succeeded={self.succeeded:<3} "
            f"failed_with_reason={self.failed_with_reason}{f' ({fails})' if fails else ''} "
            f"lost={self.lost} duplicated={self.duplicated} refused_503={self.refused} {figs} "
            f"{'OK' if self.ok else 'FAIL'}"
        )


class Scenario:
    """Shared plumbing: submitting through the API, reading rows directly, counting."""

    def __init__(self, cluster: Cluster, name: str):
        self.c = cluster
        self.r = Result(name)
        self.ids: list[str] = []
        self.http = cluster.http()
        self.started = time.monotonic()

    # --- API ------------------------------------------------------------------------------
    def submit(self, expect_refusal_codes: tuple[str, ...] = (), **body: Any) -> str | None:
        """Submit; a job id when accepted, None when refused cleanly with an allowed code."""
        body = {"steps": 20, "candidates": 2, "top_k": 1, **body}
        try:
            resp = self.http.post(f"{self.c.api_url}/v1/jobs", json=body, timeout=30)
        except requests.RequestException as e:
            self.r.violations.append(f"submit: no answer ({type(e).__name__})")
            return None
        if resp.status_code == 202:
            job_id = str(resp.json()["id"])
            self.ids.append(job_id)
            self.r.submitted += 1
            return job_id
        code = self.error_code(resp)
        if resp.status_code == 503 and code in expect_refusal_codes:
            self.r.refused += 1
            return None
        self.r.violations.append(f"submit answered {resp.status_code} {code or resp.text[:80]!r}")
        return None

    @staticmethod
    def error_code(resp: requests.Response) -> str | None:
        """The JSON error shape's code; None when the body is not that shape (HTML, trace)."""
        if not resp.headers.get("Content-Type", "").startswith("application/json"):
            return None
        try:
            err = resp.json()["error"]
            assert {"type", "code", "message"} <= set(err)
            return str(err["code"])
        except Exception:
            return None

    def progress_step(self, job_id: str) -> int:
        try:
            resp = self.http.get(f"{self.c.api_url}/v1/jobs/{job_id}", timeout=5)
            return int(((resp.json().get("progress") or {}).get("step")) or 0)
        except Exception:
            return 0

    # --- database (directly, never through the proxy) ---------------------------------------
    def rows(self, ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
        ids = self.ids if ids is None else ids
        if not ids:
            return {}
        with self.c.engine.connect() as conn:
            result = conn.execute(
                text(
                    "SELECT id, status, attempts, lease_owner, error_code, error_message, "
                    "params FROM jobs WHERE id = ANY(:ids)"
                ),
                {"ids": ids},
            )
            return {r.id: dict(r._mapping) for r in result}

    def images(self, job_id: str) -> list[tuple[int, str]]:
        with self.c.engine.connect() as conn:
            result = conn.execute(
                text("SELECT rank, storage_key FROM job_images WHERE job_id = :id"),
                {"id": job_id},
            )
            return [(r.rank, r.storage_key) for r in result]

    def wait_all_terminal(self, timeout: float) -> None:
        """Until every job is finished, or none has finished for `timeout` seconds: on a loaded
        machine jobs run slowly, but a job that is lost makes no progress at all. (At most ten
        times `timeout` in all.) What is not finished by then is counted as lost."""
        last_done, quiet_since = -1, time.monotonic()
        cap = time.monotonic() + 10 * timeout

        def done() -> bool:
            nonlocal last_done, quiet_since
            rows = self.rows()
            finished = sum(str(r["status"]).lower().endswith(TERMINAL) for r in rows.values())
            if finished != last_done:
                last_done, quiet_since = finished, time.monotonic()
            return finished == len(rows) or time.monotonic() - quiet_since > timeout

        with suppress(TimeoutError):
            wait_for(done, max(0.0, cap - time.monotonic()), "every job to finish", poll=0.25)

    def running_owner(self, job_id: str) -> str | None:
        row = self.rows([job_id]).get(job_id)
        if row and status(row) == "running" and row["lease_owner"]:
            return str(row["lease_owner"])
        return None

    def running_under(self, owner: str) -> set[str]:
        """This scenario's jobs running under one worker's lease (a batch, or one job)."""
        return {
            j
            for j, r in self.rows().items()
            if status(r) == "running" and r["lease_owner"] == owner
        }

    def wait_mid_denoise(self, job_id: str, timeout: float = 60) -> str:
        """Wait until the job is at its second step or later; its lease owner (host:pid)."""
        owner: list[str] = []

        def mid() -> bool:
            o = self.running_owner(job_id)
            if o and self.progress_step(job_id) >= 2:
                owner[:] = [o]
                return True
            return False

        wait_for(mid, timeout, f"job {job_id} mid-denoise", poll=0.05)
        return owner[0]

    # --- the tally --------------------------------------------------------------------------
    def tally(self) -> Result:
        s3 = self.c.s3()
        rows = self.rows()
        for job_id in self.ids:
            row = rows.get(job_id)
            if row is None:
                self.r.lost += 1
                self.r.violations.append(f"job {job_id}: accepted but no row")
                continue
            st = status(row)
            images = self.images(job_id)
            top_k = int(row["params"].get("top_k", 1))
            keys = {k for _, k in images}
            try:
                listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{S3_PREFIX}{job_id}/")
                stored = {o["Key"] for o in listed.get("Contents", [])}
            except Exception as e:
                self.r.violations.append(f"could not list storage: {e}")
                stored = set()
            if len(images) > top_k or len({rank for rank, _ in images}) != len(images):
                self.r.duplicated += 1
                continue
            if stored - keys:
                self.r.duplicated += 1
                self.r.figures.setdefault("orphan_objects", 0)
                self.r.figures["orphan_objects"] += len(stored - keys)
                continue
            if st == "succeeded":
                missing = [k for k in keys if not object_exists(s3, k)]
                if len(images) != top_k or missing:
                    self.r.lost += 1
                    self.r.violations.append(f"job {job_id}: succeeded, images missing {missing}")
                else:
                    self.r.succeeded += 1
            elif st == "failed":
                if row["error_code"] and row["error_message"]:
                    self.r.failed_with_reason += 1
                    code = str(row["error_code"])
                    self.r.failures[code] = self.r.failures.get(code, 0) + 1
                    if images:
                        self.r.violations.append(f"job {job_id}: failed but has image rows")
                else:
                    self.r.lost += 1
            else:
                self.r.lost += 1  # queued or running after the deadline, or canceled
                self.r.figures.setdefault("stuck", []).append(f"{job_id[:8]}:{st}")
        self.r.figures["seconds"] = round(time.monotonic() - self.started, 1)
        self.http.close()
        return self.r

    def expect(self, cond: bool, message: str) -> None:
        if not cond:
            self.r.violations.append(message)

    def expect_all_succeeded(self, r: Result, what: str) -> None:
        """Every submitted job succeeded; otherwise name each one that did not, and how."""
        if r.succeeded == r.submitted:
            return
        rows = self.rows()
        others = [
            f"{j[:8]}:{status(rows[j])}"
            + (f"/{rows[j]['error_code']}" if rows[j]["error_code"] else "")
            + f" attempts={rows[j]['attempts']}"
            for j in self.ids
            if j in rows and status(rows[j]) != "succeeded"
        ]
        self.r.violations.append(
            f"expected all {r.submitted} {what} to succeed; saw {r.succeeded} succeeded, "
            f"the others: {', '.join(others) or 'no row'}"
        )


def status(row: dict[str, Any]) -> str:
    return str(row["status"]).rsplit(".", 1)[-1].lower()


def object_exists(s3: Any, key: str) -> bool:
    try:
        s3.head_object(Bucket=BUCKET, Key=key)
        return True
    except ClientError:
        return False


def kill_owner(owner: str) -> int:
    pid = int(owner.rpartition(":")[2])
    os.kill(pid, signal.SIGKILL)
    return pid


# --- (a) SIGKILL mid-denoise, 20 times -------------------------------------------------------


def kills(c: Cluster, n: int = 20) -> Result:
    sc = Scenario(c, "kill-mid-denoise")
    body: dict[str, Any] = {"steps": 40, "candidates": 2, "top_k": 2}
    for i in range(n):
        sc.submit(prompt=f"kill me once {i}", **body)
    killed: set[str] = set()
    kills_done = 0
    deadline = time.monotonic() + 60 * n
    while len(killed) < n and time.monotonic() < deadline:
        rows = sc.rows()
        target = next(
            (
                j
                for j, r in rows.items()
                if status(r) == "running"
                and j not in killed
                and r["attempts"] == 1
                and r["lease_owner"]
            ),
            None,
        )
        if target is None:
            if all(status(r) in TERMINAL for r in rows.values()):
                break
            time.sleep(0.05)
            continue
        try:
            owner = sc.wait_mid_denoise(target, timeout=30)
            batch = sc.running_under(owner)  # its batch's companions die with it
            kill_owner(owner)
            killed |= {target, *batch}
            kills_done += 1
        except (TimeoutError, ProcessLookupError):
            continue
    sc.expect(len(killed) >= n, f"only {len(killed)} of {n} jobs were killed mid-denoise")
    sc.wait_all_terminal(120)
    r = sc.tally()
    r.figures = {"kills": kills_done, "jobs_killed": len(killed), **r.figures}
    sc.expect_all_succeeded(r, "killed jobs")
    attempts = [int(x["attempts"]) for x in sc.rows().values()]
    sc.expect(all(a == 2 for a in attempts), f"expected 2 attempts per job; saw {attempts}")
    sc.expect(c.services["worker"].alive(), "expected the worker's main process alive; it died")
    return r


# --- (a2) SIGKILL mid-batch ------------------------------------------------------------------


def kill_mid_batch(c: Cluster, rounds: int = 3) -> Result:
    """Compatible jobs queue up behind a long one, so the worker runs them as one batch; the
    batch is killed mid-denoise. Every job of it must still succeed once, each after exactly
    one more attempt, alone (a retried job never joins a batch)."""
    sc = Scenario(c, "kill-mid-batch")
    body: dict[str, Any] = {"steps": 30, "candidates": 1, "top_k": 1}
    batches: list[int] = []
    killed: set[str] = set()
    for round_ in range(rounds):
        blocker = sc.submit(prompt=f"a long job ahead of batch {round_}", steps=60, candidates=1)
        if blocker is None:
            break

        def blocking(b: str = blocker) -> bool:
            return sc.running_owner(b) is not None

        with suppress(TimeoutError):
            wait_for(blocking, 60, "the blocker to run")
        group = [sc.submit(prompt=f"batch {round_} job {i}", **body) for i in range(4)]
        ids = [g for g in group if g is not None]

        def batched(ids: list[str] = ids) -> bool:
            owners = [sc.running_owner(j) for j in ids]
            return any(o is not None and owners.count(o) >= 2 for o in owners)

        try:
            wait_for(batched, 120, f"batch {round_} to run as one call", poll=0.05)
            owner = next(
                o
                for j in ids
                if (o := sc.running_owner(j)) and sum(sc.running_owner(k) == o for k in ids) >= 2
            )
            batch = sc.running_under(owner)
            sc.wait_mid_denoise(sorted(batch & set(ids))[0], timeout=60)
            kill_owner(owner)
            killed |= batch & set(ids)
            batches.append(len(batch & set(ids)))
        except (TimeoutError, ProcessLookupError, StopIteration) as e:
            sc.expect(False, f"round {round_}: no batch killed mid-denoise ({e})")
    sc.wait_all_terminal(180)
    rows = sc.rows()
    r = sc.tally()
    r.figures = {"batches_killed": batches, "jobs_killed": len(killed), **r.figures}
    sc.expect(len(batches) == rounds, f"expected {rounds} batches killed; saw {len(batches)}")
    sc.expect_all_succeeded(r, "jobs of the killed batches")
    again = {j: rows[j]["attempts"] for j in killed}
    sc.expect(
        all(a == 2 for a in again.values()),
        f"expected 2 attempts for each killed job; saw {sorted(again.values())}",
    )
    sc.expect(c.services["worker"].alive(), "expected the worker's main process alive; it died")
    return r


# --- (b) a poison input ----------------------------------------------------------------------


def poison(c: Cluster) -> Result:
    sc = Scenario(c, "poison-input")
    bad = sc.submit(prompt=f"a cat {KILL_WORKER}", steps=10)
    good = sc.submit(prompt="an ordinary cat after the poison", steps=10)
    sc.wait_all_terminal(120)
    rows = sc.rows()
    r = sc.tally()
    if bad and good:
        b = rows[bad]
        r.figures = {"poison_attempts": b["attempts"], **r.figures}
        ended = f"{status(b)}/{b['error_code']}"
        sc.expect(
            ended == "failed/worker_lost",
            f"expected the poison job failed/worker_lost; saw {ended}",
        )
        sc.expect(
            b["attempts"] == c_max_attempts(),
            f"expected the poison job to take {c_max_attempts()} attempts; saw {b['attempts']}",
        )
        sc.expect(
            status(rows[good]) == "succeeded",
            f"expected the job after the poison to succeed; saw {status(rows[good])}",
        )
    return r


def c_max_attempts() -> int:
    from chaos.harness import CHAOS_SETTINGS

    return int(CHAOS_SETTINGS["DAIKON_MAX_ATTEMPTS"])


# --- (c) broker down --------------------------------------------------------------------------


def broker_down(c: Cluster, outage: float) -> Result:
    sc = Scenario(c, "broker-down")
    first = [sc.submit(prompt=f"queued before the outage {i}", steps=30) for i in range(4)]
    if first[0]:
        sc.wait_mid_denoise(first[0])
    c.services["redis"].stop()  # SIGTERM: a clean stop; the append-only file keeps the queue
    down_at = time.monotonic()
    i = 0
    while time.monotonic() - down_at < outage:
        sc.submit(("queue_unavailable",), prompt=f"submitted during the outage {i}", steps=10)
        i += 1
        time.sleep(2)
    c.services["redis"].start()
    outage_s = time.monotonic() - down_at
    accepted_during = sc.r.submitted - len([x for x in first if x])
    for i in range(2):
        sc.submit(prompt=f"after the outage {i}", steps=10)
    back = time.monotonic()
    sc.wait_all_terminal(180)
    recovered = time.monotonic() - back
    r = sc.tally()
    r.figures = {
        "outage_s": round(outage_s),
        "accepted_during": accepted_during,
        "drained_after_s": round(recovered, 1),
        **r.figures,
    }
    sc.expect_all_succeeded(r, "accepted jobs")
    return r


# --- (d) storage down -------------------------------------------------------------------------


def storage_down(c: Cluster, short: float, retry_window: float) -> Result:
    sc = Scenario(c, "storage-down")
    s3 = c.services["s3"]
    # Within the window: stopped while the first job denoises, back before its retries end.
    within = [sc.submit(prompt=f"upload survives {i}", steps=20, top_k=2) for i in range(3)]
    if within[0]:
        sc.wait_mid_denoise(within[0])
    s3.kill()
    time.sleep(short)
    c.restart_s3()
    sc.wait_all_terminal(120)
    ok_within = sum(
        1 for r in sc.rows([x for x in within if x]).values() if status(r) == "succeeded"
    )
    # Longer than the window: the jobs fail with upload_failed and nothing is recorded.
    beyond = [sc.submit(prompt=f"upload gives up {i}", steps=10, top_k=2) for i in range(2)]
    if beyond[0]:
        sc.wait_mid_denoise(beyond[0])
    s3.kill()
    down_at = time.monotonic()
    ids = [x for x in beyond if x]
    with suppress(TimeoutError):
        wait_for(
            lambda: all(status(r) in TERMINAL for r in sc.rows(ids).values()),
            retry_window * 2 + 60,
            "the jobs to give up",
            poll=0.5,
        )
    long_outage = time.monotonic() - down_at
    c.restart_s3()
    rows = sc.rows(ids)
    r = sc.tally()
    r.figures = {
        "short_outage_s": short,
        "long_outage_s": round(long_outage),
        "retry_window_s": retry_window,
        **r.figures,
    }
    sc.expect(ok_within == len([x for x in within if x]), "a job failed within the retry window")
    for job_id, row in rows.items():
        sc.expect(
            status(row) == "failed" and row["error_code"] == "upload_failed",
            f"job {job_id} beyond the window ended {status(row)}/{row['error_code']}",
        )
        sc.expect(bool(row["error_message"]), f"job {job_id}: no reason given")
    return r


# --- (e) database connection broken -----------------------------------------------------------


def database_down(c: Cluster, outage: float) -> Result:
    sc = Scenario(c, "database-down")
    proxy = c.services["dbproxy"]
    first = [sc.submit(prompt=f"running through a db cut {i}", steps=30) for i in range(3)]
    if first[0]:
        sc.wait_mid_denoise(first[0])
    proxy.kill()  # the listener and every connection, at once
    down_at = time.monotonic()
    answers: dict[str, int] = {}
    while time.monotonic() - down_at < outage:
        sc.submit(("database_unavailable",), prompt="submitted while the db is cut", steps=10)
        if first[0]:
            resp = sc.http.get(f"{c.api_url}/v1/jobs/{first[0]}", timeout=30)
            code = sc.error_code(resp)
            key = f"{resp.status_code}:{code}" if code else f"{resp.status_code}:not-json"
            answers[key] = answers.get(key, 0) + 1
        time.sleep(1)
    proxy.start()
    back = time.monotonic()
    sc.expect(
        set(answers) == {"503:database_unavailable"}, f"GET during the cut answered {answers}"
    )
    api_back: list[float] = []

    def api_answers() -> bool:
        resp = sc.http.get(f"{c.api_url}/v1/jobs/{first[0]}", timeout=10)
        return resp.status_code == 200

    try:
        wait_for(api_answers, 30, "the API to answer again", poll=0.2)
        api_back.append(time.monotonic() - back)
    except TimeoutError:
        sc.expect(False, "the API did not recover without a restart")
    sc.submit(prompt="after the db is back", steps=10)
    sc.wait_all_terminal(120)
    r = sc.tally()
    r.figures = {
        "outage_s": round(outage),
        "api_back_after_s": round(api_back[0], 1) if api_back else None,
        "api_refusals_during": sum(answers.values()),
        **r.figures,
    }
    sc.expect_all_succeeded(r, "accepted jobs")
    return r


SCENARIOS: dict[str, Callable[..., Result]] = {
    "kills": kills,
    "batch": kill_mid_batch,
    "poison": poison,
    "broker": broker_down,
    "storage": storage_down,
    "database": database_down,
}


# --- the whole run ----------------------------------------------------------------------------


def ledger(c: Cluster) -> Result:
    """Across every scenario: each succeeded job finished once (one "job <id> succeeded" line
    in the worker's log per succeeded row, whether it ran alone or in a batch), every image
    row's object exists, no object in the bucket is unreferenced, and no job is left queued or
    running."""
    sc = Scenario(c, "ledger")
    with c.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, status FROM jobs")).all()
        keys = {r.storage_key for r in conn.execute(text("SELECT storage_key FROM job_images"))}
    by_status: dict[str, int] = {}
    for row in rows:
        st = status(dict(row._mapping))
        by_status[st] = by_status.get(st, 0) + 1
    log = c.services["worker"].log_path.read_text(errors="replace")
    finished = Counter(SUCCEEDED_LINE.findall(log))
    runs = sum(finished.values())
    succeeded_ids = {row.id for row in rows if status(dict(row._mapping)) == "succeeded"}
    s3 = c.s3()
    stored: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=S3_PREFIX):
        stored |= {o["Key"] for o in page.get("Contents", [])}
    r = sc.r
    r.submitted = len(rows)
    r.succeeded = by_status.get("succeeded", 0)
    r.failed_with_reason = by_status.get("failed", 0)
    r.lost = by_status.get("queued", 0) + by_status.get("running", 0) + len(keys - stored)
    r.duplicated = abs(runs - r.succeeded) + len(stored - keys)
    r.figures = {"succeeded_runs": runs, "objects": len(stored), "image_rows": len(keys)}
    sc.expect(runs == r.succeeded, f"{runs} successful runs for {r.succeeded} succeeded jobs")
    twice = sorted(j for j, n in finished.items() if n > 1)
    sc.expect(not twice, f"jobs that succeeded twice: {twice[:3]}")
    unrun, extra = sorted(succeeded_ids - set(finished)), sorted(set(finished) - succeeded_ids)
    sc.expect(
        not unrun and not extra,
        f"succeeded rows without a run: {unrun[:3]}; runs of jobs not succeeded: {extra[:3]}",
    )
    sc.expect(keys <= stored, f"rows point at missing objects: {sorted(keys - stored)[:3]}")
    sc.expect(stored <= keys, f"unreferenced objects: {sorted(stored - keys)[:3]}")
    sc.http.close()
    return r

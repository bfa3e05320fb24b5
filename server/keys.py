"""Every Redis key and channel name Daikon writes, in one place.

Redis holds only what may be lost (progress, cancel requests, heartbeats, counters, caches):
the database is the record of truth. Keys start with `PREFIX`, except the webhook gate's, which
start with the webhook queue's name so that a test's cleanup of its queue takes them too.
"""

from __future__ import annotations

PREFIX = "daikon"

# --- a job's live state (server/live.py) --------------------------------------------------


def progress(job_id: str) -> str:
    """Hash: the running job's step, total and attempt."""
    return f"{PREFIX}:progress:{job_id}"


def cancel(job_id: str) -> str:
    """Present while a cancel of the job is requested."""
    return f"{PREFIX}:cancel:{job_id}"


def job_channel(job_id: str) -> str:
    """Pub/sub channel announcing that a job changed (status or progress)."""
    return f"{PREFIX}:job:{job_id}"


# --- workers and models (server/heartbeats.py, server/served_models.py) ------------------

WORKERS = f"{PREFIX}:workers"  # sorted set: hostname -> time of its last heartbeat


def worker(hostname: str) -> str:
    """String: a worker's last heartbeat (JSON), expiring with it."""
    return f"{PREFIX}:worker:{hostname}"


def model_load(queue: str) -> str:
    """Hash: hostname -> why loading the queue's model failed there."""
    return f"{PREFIX}:model_load:{queue}"


def served(queue: str) -> str:
    """String: what the queue's model is and can do (JSON), as its worker loaded it."""
    return f"{PREFIX}:served:{queue}"


def stage_seconds(namespace: str, stage: str) -> str:
    """Hash: a histogram of one generation stage's durations (server/stage_metrics.py)."""
    return f"{PREFIX}:stage_seconds:{namespace}:{stage}"


def reused_jobs(namespace: str) -> str:
    """Hash: model -> jobs answered with an earlier job's images (worker/executor.py)."""
    return f"{PREFIX}:reused_jobs:{namespace}"


# --- the API's counters and caches --------------------------------------------------------

API_KEYS_GENERATION = f"{PREFIX}:api-keys:generation"  # bumped when any key changes


def rate(tenant_id: str, window: int) -> str:
    """Counter: a tenant's submissions in one minute window (api/rate_limit.py)."""
    return f"{PREFIX}:rate:{tenant_id}:{window}"


def login_attempts(where: str, window: int) -> str:
    """Counter: failed dashboard sign-ins from one place in one window."""
    return f"{PREFIX}:login:{where}:{window}"


# --- the webhook gate (worker/webhooks/gate.py) ---------------------------------------------


def gate_tenant(namespace: str, tenant_id: str) -> str:
    """Prefix of a tenant's delivery slots and waiting line, under the webhook queue's name."""
    return f"{namespace}:gate:tenant:{tenant_id}"


def gate_endpoint(namespace: str, tenant_id: str, endpoint: str) -> str:
    """Prefix of one endpoint's slots, breaker and waiting line."""
    return f"{namespace}:gate:endpoint:{tenant_id}:{endpoint}"

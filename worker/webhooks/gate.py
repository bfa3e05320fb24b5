"""Fair shares of the webhook workers' threads: slots per endpoint and per tenant, and a
circuit breaker per endpoint, shared by every webhook worker process through Redis.

An attempt holds a delivery thread until its receiver answers or a timeout ends it, so a
tenant whose receivers accept and never answer could hold every thread and delay every other
tenant's webhooks. Before an attempt goes out it takes a slot of its endpoint (the tenant's
scheme, host and port: DAIKON_WEBHOOK_ENDPOINT_CONCURRENCY) and one of its tenant
(DAIKON_WEBHOOK_TENANT_CONCURRENCY); without both it is put back for a little while, unsent
and without spending an attempt, and the thread moves on to the next message. Slots are
leases (a sorted set scored by expiry): the attempt gives them back when it ends, and a worker
that died mid-attempt has its slots expire after the attempt's timeout plus a margin.

The breaker counts consecutive attempts to an endpoint that got no answer at all (timeouts,
refused or reset connections, DNS or TLS failures); an answer of any status proves the
endpoint alive (bad statuses are the retry schedule's business: they cost no thread). After
DAIKON_WEBHOOK_BREAKER_FAILURES of them the circuit opens for DAIKON_WEBHOOK_BREAKER_OPEN_SECONDS:
its deliveries wait, unsent and without spending attempts. Then it is half-open: one attempt
(the probe) goes; an answer closes the circuit, no answer opens it again for twice as long
(at most DAIKON_WEBHOOK_BREAKER_MAX_OPEN_SECONDS).

Why Redis and not the database: every attempt reads and writes this state, from every worker
at once; Redis does each check-and-take atomically in one round trip (a Lua script), expires
what a dead worker held by itself, and adds no write to the database (SQLite in `make run` has
one writer). Losing it (a Redis restart) is harmless: slots start empty and circuits closed.
While Redis cannot be reached the gates let every attempt through (and log it): they protect
the other tenants, they are not needed to deliver.

Times are the deliverer's clock (epoch seconds), passed in, so tests drive a breaker's
periods without waiting for them.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis

from server import keys, live
from server.settings import Settings

log = logging.getLogger("daikon.webhooks")

# The longest a delivery waits for a slot, however many wait with it.
BUSY_RETRY_CAP_SECONDS = 30.0
# A slot outlives its attempt's timeout by this much before it is taken as a dead worker's.
SLOT_MARGIN_SECONDS = 30.0


class Verdict(enum.StrEnum):
    go = "go"
    busy = "busy"  # every slot of the endpoint or the tenant is taken, or a probe is out
    open = "open"  # the endpoint's circuit is open


class Outcome(enum.StrEnum):
    answered = "answered"  # an HTTP answer, any status: the endpoint is alive
    unreachable = "unreachable"  # no answer at all: counts toward opening the circuit
    unknown = "unknown"  # nothing sent or nothing learned (refused destination, our error)


@dataclass(frozen=True)
class Endpoint:
    """Where a tenant's deliveries go: its scheme, host and port. Two tenants never share one
    (one tenant's deliveries cannot fill another's slots or open its circuit); one tenant's
    URLs on the same server do (paths are one receiver)."""

    tenant_id: str
    origin: str

    @classmethod
    def of(cls, tenant_id: str, url: str) -> Endpoint:
        try:
            parts = urlsplit(url.strip())
            scheme = parts.scheme.lower()
            host = (parts.hostname or "").rstrip(".")
            port = parts.port or (443 if scheme == "https" else 80)
            origin = f"{scheme}://{host}:{port}"
        except ValueError:  # an unreadable URL: the destination checks refuse it anyway
            origin = url
        return cls(tenant_id, origin)

    @property
    def key(self) -> str:
        return hashlib.sha256(self.origin.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Pass:
    """What `Gates.enter` decided for one attempt."""

    verdict: Verdict
    token: str  # names the slots held (give it back to `leave`)
    wait: float = 0.0  # not go: seconds until it is worth coming back
    why: str = ""  # not go: for the log ("tenant", "endpoint", "probe", "open")
    probe: bool = False  # the half-open circuit's one attempt
    tracked: bool = True  # False: Redis was unreachable and nothing is held


@dataclass(frozen=True)
class Breaker:
    """An endpoint's circuit as `Gates.breaker` reads it (for tests and operators)."""

    failures: int  # consecutive attempts without an answer
    open_until: float | None  # the circuit is open before this, half-open after
    opens: int  # times it opened since it last closed
    probing: bool  # a probe is in flight


# KEYS: tenant slots, endpoint slots, breaker, tenant waiters, endpoint waiters
# ARGV: now, token, lease_until, tenant cap, endpoint cap, busy base, busy cap, ttl ms, who
_ENTER = """
local now, token, lease_until = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local tenant_cap, endpoint_cap = tonumber(ARGV[4]), tonumber(ARGV[5])
local base, cap, ttl, who = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]

local function busy(waiters, limit, why)
  -- Waiters come back in turns of `limit`, `base` apart: a backlog does not churn at once.
  redis.call('ZREMRANGEBYSCORE', waiters, '-inf', now)
  local ahead = redis.call('ZCARD', waiters)
  local wait = math.min(cap, base * (1 + math.floor(ahead / limit)))
  redis.call('ZADD', waiters, tostring(now + wait), who)
  redis.call('PEXPIRE', waiters, ttl)
  return {'busy', tostring(wait), why}
end

local breaker = redis.call('HMGET', KEYS[3], 'open_until', 'probe_until')
local open_until, probe = tonumber(breaker[1]), 0
if open_until then
  if now < open_until then return {'open', tostring(open_until - now), 'open'} end
  local probe_until = tonumber(breaker[2])
  if probe_until and now < probe_until then return {'busy', tostring(base), 'probe'} end
  probe = 1
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= endpoint_cap then
  return busy(KEYS[5], endpoint_cap, 'endpoint')
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tenant_cap then return busy(KEYS[4], tenant_cap, 'tenant') end
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], tostring(lease_until), token)
  redis.call('PEXPIRE', KEYS[i], ttl)
end
redis.call('ZREM', KEYS[4], who)
redis.call('ZREM', KEYS[5], who)
if probe == 1 then
  redis.call('HSET', KEYS[3], 'probe_token', token, 'probe_until', tostring(lease_until))
end
return {'go', '0', '', tostring(probe)}
"""

# KEYS: tenant slots, endpoint slots, breaker
# ARGV: token, outcome, now, failures to open, first open period, longest period, keep ms
_LEAVE = """
local token, outcome, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local threshold, first, longest = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local keep = tonumber(ARGV[7])
redis.call('ZREM', KEYS[1], token)
redis.call('ZREM', KEYS[2], token)
local probing = redis.call('HGET', KEYS[3], 'probe_token') == token
if outcome == 'answered' then
  redis.call('DEL', KEYS[3])
  return {'closed', '0'}
end
if outcome ~= 'unreachable' then
  if probing then redis.call('HDEL', KEYS[3], 'probe_token', 'probe_until') end
  return {'unchanged', '0'}
end
local failures = redis.call('HINCRBY', KEYS[3], 'failures', 1)
local open_until = tonumber(redis.call('HGET', KEYS[3], 'open_until'))
redis.call('PEXPIRE', KEYS[3], keep)
if probing or (open_until == nil and failures >= threshold) then
  local opens = redis.call('HINCRBY', KEYS[3], 'opens', 1)
  local period = math.min(longest, first * 2 ^ (opens - 1))
  redis.call('HSET', KEYS[3], 'open_until', tostring(now + period))
  redis.call('HDEL', KEYS[3], 'probe_token', 'probe_until')
  return {'opened', tostring(period)}
end
return {'failing', tostring(failures)}
"""


@dataclass
class Gates:
    client: redis.Redis
    namespace: str  # the deployment's webhook queue: tests and deployments never mix
    endpoint_slots: int
    tenant_slots: int
    lease: float  # seconds a slot is held at most
    busy_retry: float
    failures: int
    open_seconds: float
    max_open_seconds: float

    def __post_init__(self) -> None:
        self._enter = self.client.register_script(_ENTER)
        self._leave = self.client.register_script(_LEAVE)

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis | None = None) -> Gates:
        hooks = settings.webhooks
        return cls(
            client=client or live.client(settings.services.redis_url),
            namespace=hooks.webhook_queue,
            endpoint_slots=hooks.webhook_endpoint_concurrency,
            tenant_slots=hooks.webhook_tenant_concurrency,
            lease=hooks.webhook_timeout_seconds + SLOT_MARGIN_SECONDS,
            busy_retry=hooks.webhook_busy_retry_seconds,
            failures=hooks.webhook_breaker_failures,
            open_seconds=hooks.webhook_breaker_open_seconds,
            max_open_seconds=hooks.webhook_breaker_max_open_seconds,
        )

    # Keys start with the webhook queue's name: the test suite's cleanup of a queue takes them.
    def _tenant(self, endpoint: Endpoint) -> str:
        return keys.gate_tenant(self.namespace, endpoint.tenant_id)

    def _endpoint(self, endpoint: Endpoint) -> str:
        return keys.gate_endpoint(self.namespace, endpoint.tenant_id, endpoint.key)

    def _keys(self, endpoint: Endpoint) -> list[str]:
        tenant, ep = self._tenant(endpoint), self._endpoint(endpoint)
        return [
            f"{tenant}:slots",
            f"{ep}:slots",
            f"{ep}:breaker",
            f"{tenant}:waiting",
            f"{ep}:waiting",
        ]

    def enter(self, endpoint: Endpoint, *, who: str, now: float) -> Pass:
        """Take a slot of the endpoint and one of its tenant for one attempt by `who` (a
        delivery id), unless the circuit is open or either has every slot taken."""
        token = f"{who}:{uuid.uuid4().hex[:12]}"
        ttl_ms = int((self.lease + BUSY_RETRY_CAP_SECONDS) * 1000)
        try:
            got: list[Any] = self._enter(
                keys=self._keys(endpoint),
                args=[
                    repr(now),
                    token,
                    repr(now + self.lease),
                    self.tenant_slots,
                    self.endpoint_slots,
                    repr(self.busy_retry),
                    repr(BUSY_RETRY_CAP_SECONDS),
                    ttl_ms,
                    who,
                ],
            )
        except redis.RedisError as e:
            log.warning("webhook gates unavailable, %s goes unchecked: %s", who, e)
            return Pass(Verdict.go, token, tracked=False)
        verdict, wait, why = (_text(v) for v in got[:3])
        if verdict == Verdict.go:
            return Pass(Verdict.go, token, probe=_text(got[3]) == "1")
        return Pass(Verdict(verdict), token, wait=float(wait), why=why)

    def leave(self, endpoint: Endpoint, gate: Pass, outcome: Outcome, *, now: float) -> str:
        """Give the attempt's slots back and tell the breaker what it learned; what became of
        the circuit ("closed", "opened 30 s", "failing 2", "unchanged")."""
        if not gate.tracked or gate.verdict is not Verdict.go:
            return "unchanged"
        keep_ms = int((2 * self.max_open_seconds + self.lease) * 1000)
        try:
            got: list[Any] = self._leave(
                keys=self._keys(endpoint)[:3],
                args=[
                    gate.token,
                    outcome.value,
                    repr(now),
                    self.failures,
                    repr(self.open_seconds),
                    repr(self.max_open_seconds),
                    keep_ms,
                ],
            )
        except redis.RedisError as e:  # its slots expire with their lease
            log.warning("webhook gates unavailable, %s not given back: %s", gate.token, e)
            return "unchanged"
        state, figure = _text(got[0]), float(_text(got[1]))
        if state == "opened":
            return f"opened {figure:g} s"
        return f"failing {figure:g}" if state == "failing" else state

    # --- reading, for tests and operators ---------------------------------------------------
    def held(self, endpoint: Endpoint, *, now: float) -> tuple[int, int]:
        """Slots in use: (the endpoint's, its tenant's)."""
        tenant, ep = self._keys(endpoint)[:2]
        return (
            int(self.client.zcount(ep, f"({now!r}", "+inf")),
            int(self.client.zcount(tenant, f"({now!r}", "+inf")),
        )

    def breaker(self, endpoint: Endpoint) -> Breaker:
        raw = {_text(k): _text(v) for k, v in self.client.hgetall(self._keys(endpoint)[2]).items()}
        until = raw.get("open_until")
        return Breaker(
            failures=int(raw.get("failures", 0)),
            open_until=float(until) if until is not None else None,
            opens=int(raw.get("opens", 0)),
            probing="probe_token" in raw,
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

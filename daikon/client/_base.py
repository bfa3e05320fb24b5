"""What the sync and async clients share: how each endpoint's request is built and its answer
read (a `Call`), the retry policy, and the parsing of event-stream messages. The clients only
send; everything they must agree on is here, once."""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Generic, TypeVar
from urllib.parse import quote

import httpx2
from pydantic import BaseModel

from daikon.client.errors import APIError, retry_after_of
from daikon.client.models import (
    DeliveryList,
    DeliveryOut,
    DoneEvent,
    JobEvent,
    JobFields,
    JobList,
    JobOut,
    JobRequest,
    JobStatus,
    KeyList,
    KeyOut,
    ModelList,
    NewKeyOut,
    Progress,
    ProgressEvent,
    SecretOut,
    StatusEvent,
    StreamStatus,
    TenantList,
    TenantOut,
    check_fields,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# An edit's input: the file's bytes, a path to it, or an open binary file.
InputFile = bytes | str | os.PathLike[str] | IO[bytes]

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "daikon-client/0.1"
# Reads wait past the event stream's 5 s keep-alives; a stream silent for longer is dead.
DEFAULT_TIMEOUT = httpx2.Timeout(30.0, connect=10.0)
# Errors raised before a request could have reached the server: always safe to send again.
NOT_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx2.Response], T]
    params: Mapping[str, str | int] | None = None
    json: Any = None
    # multipart/form-data instead of JSON: form fields and (name, (filename, bytes)) files.
    form: Mapping[str, str] | None = None
    files: Mapping[str, tuple[str, bytes]] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # May be sent again after it may have reached the server: reads, and writes that are
    # idempotent (cancel, revoke) or carry an Idempotency-Key (submit).
    replay_safe: bool = False
    ok: frozenset[int] = frozenset({200, 201, 202})
    auth: bool = True  # send the API key (only to the API itself)

    def url(self, base_url: str) -> str:
        return self.path if "://" in self.path else base_url + self.path


@dataclass(frozen=True)
class Polled:
    job: JobOut | None  # None: unchanged since the ETag sent
    etag: str | None
    retry_after: float | None


@dataclass(frozen=True)
class RetryPolicy:
    """Connection errors, 429 and 503 (and 502/504 for calls safe to replay) are retried with
    exponential backoff and jitter, or after the answer's Retry-After when it has one. A
    Retry-After longer than `max_retry_after` is not waited for: the error is raised."""

    max_retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0

    def backoff_for(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff * 2**attempt)
        return base * (0.5 + random.random() / 2)

    def after_error(self, call: Call[Any], attempt: int, error: Exception) -> float | None:
        """Seconds to wait before sending `call` again after `error`, or None: raise."""
        if attempt >= self.max_retries or not isinstance(error, httpx2.TransportError):
            return None
        if isinstance(error, NOT_SENT) or call.replay_safe:
            return self.backoff_for(attempt)
        return None

    def after_answer(self, call: Call[Any], attempt: int, error: APIError) -> float | None:
        """Seconds to wait before sending `call` again after an error answer, or None."""
        if attempt >= self.max_retries:
            return None
        # 429 and 503 mean nothing was done; a gateway's 502/504 may hide a done request.
        if error.status in (429, 503) or (error.status in (502, 504) and call.replay_safe):
            if error.retry_after is not None:
                return error.retry_after if error.retry_after <= self.max_retry_after else None
            return self.backoff_for(attempt)
        return None


def model_reader(model: type[M]) -> Callable[[httpx2.Response], M]:
    def read(response: httpx2.Response) -> M:
        return model.model_validate_json(response.content)

    return read


def _q(value: str) -> str:
    return quote(value, safe="")


def _iso(value: datetime | str) -> str:
    return value.isoformat() if isinstance(value, datetime) else value


class Endpoints:
    """The API's operations as Calls, built from typed arguments (docs/api.md's reference)."""

    @staticmethod
    def submit(
        request: JobRequest | str,
        idempotency_key: str | None,
        fields: JobFields,
        inputs: Mapping[str, InputFile | None] | None = None,
    ) -> Call[JobOut]:
        """`inputs` (image, mask) make it multipart: the JSON goes in the part `request`. The
        files are read once, here, so a retry sends the same bytes (the same request hash)."""
        if isinstance(request, str):
            check_fields(fields)
            body: dict[str, Any] = {"prompt": request}
            body.update({k: v for k, v in fields.items() if v is not None})
        else:
            if fields:
                raise TypeError("give either a JobRequest or a prompt with keyword fields")
            body = request.model_dump(mode="json", exclude_unset=True)
        key = idempotency_key or f"daikon-client-{uuid.uuid4()}"
        files = {
            role: (f"{role}.png", read_input(f))
            for role, f in (inputs or {}).items()
            if f is not None
        }
        if files:
            return Call(
                "POST",
                "/v1/jobs",
                model_reader(JobOut),
                form={"request": json.dumps(body)},
                files=files,
                headers={"Idempotency-Key": key},
                replay_safe=True,
            )
        return Call(
            "POST",
            "/v1/jobs",
            model_reader(JobOut),
            json=body,
            headers={"Idempotency-Key": key},
            replay_safe=True,
        )

    @staticmethod
    def get(job_id: str) -> Call[JobOut]:
        return Call("GET", f"/v1/jobs/{_q(job_id)}", model_reader(JobOut), replay_safe=True)

    @staticmethod
    def poll(job_id: str, etag: str | None) -> Call[Polled]:
        """GET with If-None-Match: `job` is None while unchanged (304)."""

        def read(response: httpx2.Response) -> Polled:
            job = (
                None
                if response.status_code == 304
                else JobOut.model_validate_json(response.content)
            )
            return Polled(job, response.headers.get("ETag"), retry_after_of(response))

        headers = {"If-None-Match": etag} if etag else {}
        return Call(
            "GET",
            f"/v1/jobs/{_q(job_id)}",
            read,
            headers=headers,
            replay_safe=True,
            ok=frozenset({200, 304}),
        )

    @staticmethod
    def image(url: str) -> Call[bytes]:
        """A signed image URL: no API key (it may lead to S3, which must not see the key)."""
        return Call("GET", url, lambda r: r.content, replay_safe=True, auth=False)

    @staticmethod
    def cancel(job_id: str) -> Call[JobOut]:
        # Canceling a canceled job is a no-op: a retry cannot do anything twice.
        return Call("POST", f"/v1/jobs/{_q(job_id)}/cancel", model_reader(JobOut), replay_safe=True)

    @staticmethod
    def list_page(
        *,
        status: JobStatus | str | None,
        model: str | None,
        created_after: datetime | str | None,
        limit: int | None,
        cursor: str | None,
    ) -> Call[JobList]:
        params: dict[str, str | int] = {}
        if status is not None:
            params["status"] = str(status)
        if model is not None:
            params["model"] = model
        if created_after is not None:
            params["created_after"] = _iso(created_after)
        if limit is not None:
            params["limit"] = limit
        if cursor is not None:
            params["cursor"] = cursor
        return Call("GET", "/v1/jobs", model_reader(JobList), params=params, replay_safe=True)

    @staticmethod
    def models() -> Call[ModelList]:
        return Call("GET", "/v1/models", model_reader(ModelList), replay_safe=True)

    @staticmethod
    def create_tenant(name: str) -> Call[TenantOut]:
        return Call("POST", "/v1/admin/tenants", model_reader(TenantOut), json={"name": name})

    @staticmethod
    def tenants() -> Call[TenantList]:
        return Call("GET", "/v1/admin/tenants", model_reader(TenantList), replay_safe=True)

    @staticmethod
    def create_key(tenant_id: str, name: str, admin: bool, scope: str | None) -> Call[NewKeyOut]:
        body: dict[str, object] = {"name": name, "admin": admin}
        if scope is not None:
            body["scope"] = scope
        return Call(
            "POST", f"/v1/admin/tenants/{_q(tenant_id)}/keys", model_reader(NewKeyOut), json=body
        )

    @staticmethod
    def keys(tenant_id: str) -> Call[KeyList]:
        return Call(
            "GET",
            f"/v1/admin/tenants/{_q(tenant_id)}/keys",
            model_reader(KeyList),
            replay_safe=True,
        )

    @staticmethod
    def revoke_key(key_id: str) -> Call[KeyOut]:
        return Call(
            "DELETE", f"/v1/admin/keys/{_q(key_id)}", model_reader(KeyOut), replay_safe=True
        )

    @staticmethod
    def rotate_webhook_secret(overlap_hours: float | None) -> Call[SecretOut]:
        body = {} if overlap_hours is None else {"overlap_hours": overlap_hours}
        return Call("POST", "/v1/webhooks/secret", model_reader(SecretOut), json=body)

    @staticmethod
    def deliveries(job_id: str) -> Call[DeliveryList]:
        return Call(
            "GET", f"/v1/jobs/{_q(job_id)}/webhooks", model_reader(DeliveryList), replay_safe=True
        )

    @staticmethod
    def redeliver(delivery_id: str) -> Call[DeliveryOut]:
        return Call(
            "POST", f"/v1/admin/webhooks/{_q(delivery_id)}/redeliver", model_reader(DeliveryOut)
        )


def read_input(source: InputFile) -> bytes:
    """An edit input's bytes (the API decodes and checks them: PNG, JPEG or WebP)."""
    if isinstance(source, bytes):
        return source
    if isinstance(source, str | os.PathLike):
        return Path(source).read_bytes()
    return source.read()


def events_path(job_id: str) -> str:
    return f"/v1/jobs/{_q(job_id)}/events"


def stream_headers(last_event_id: int | None) -> dict[str, str]:
    return {"Last-Event-ID": str(last_event_id)} if last_event_id else {}


def parse_event(sse: httpx2.ServerSentEvent) -> JobEvent | None:
    """A typed event, or None for kinds this client does not know (newer servers)."""
    if not sse.id.isdigit():
        return None
    ident = int(sse.id)
    data = json.loads(sse.data) if sse.data else None
    if sse.event == "status":
        return StatusEvent(event_id=ident, data=StreamStatus.model_validate(data))
    if sse.event == "progress":
        return ProgressEvent(event_id=ident, data=Progress.model_validate(data))
    if sse.event == "done":
        return DoneEvent(event_id=ident, job=JobOut.model_validate(data))
    return None


@dataclass
class StreamState:
    """Where a followed stream is: the last event id delivered, and whether it ended."""

    last_event_id: int | None
    done: bool = False

    def accept(self, event: JobEvent) -> bool:
        """Deliver this event? Never one at or before the last delivered (exactly once)."""
        if self.last_event_id is not None and event.event_id <= self.last_event_id:
            return False
        self.last_event_id = event.event_id
        if isinstance(event, DoneEvent):
            self.done = True
        return True


def configured(url: str | None, api_key: str | None) -> tuple[str, str | None]:
    """The base URL and key: the arguments, else DAIKON_URL and DAIKON_API_KEY."""
    base = (url or os.environ.get("DAIKON_URL") or DEFAULT_URL).rstrip("/")
    key = api_key if api_key is not None else os.environ.get("DAIKON_API_KEY")
    return base, key


def auth_headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def image_url(target: Any) -> str:
    """An ImageOut's URL, or the URL itself."""
    url = getattr(target, "url", target)
    if not isinstance(url, str):
        raise TypeError(f"not an image or a URL: {target!r}")
    return url


# The event stream, as a Call for the retry policy: a read, safe to open again.
STREAM = Call("GET", "/v1/jobs/{id}/events", lambda r: None, replay_safe=True)


def image_file_name(job: JobOut, rank: int, clip_score: float, content_type: str) -> str:
    """`<job id>-rank<r>-clip<score>.<ext>`: sorts best first within a job."""
    ext = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}.get(content_type, "bin")
    return f"{job.id}-rank{rank}-clip{clip_score:.2f}.{ext}"

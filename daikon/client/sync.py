"""`Daikon`: the synchronous client (httpx2 underneath)."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, Unpack

import httpx2

from daikon.client._base import (
    DEFAULT_TIMEOUT,
    STREAM,
    Call,
    Endpoints,
    InputFile,
    RetryPolicy,
    StreamState,
    auth_headers,
    configured,
    events_path,
    image_file_name,
    image_url,
    parse_event,
    stream_headers,
)
from daikon.client.errors import (
    APIConnectionError,
    ServiceUnavailableError,
    WaitTimeout,
    error_from,
)
from daikon.client.models import (
    DeliveryList,
    DeliveryOut,
    DoneEvent,
    ImageOut,
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
    SecretOut,
    TenantList,
    TenantOut,
)

T = TypeVar("T")


class Daikon:
    """A Daikon API client. `url` and `api_key` default to DAIKON_URL and DAIKON_API_KEY.

    Every call retries connection errors and 429/503 answers (RetryPolicy), honouring
    Retry-After; `submit` always sends an Idempotency-Key, so a retried submit never makes a
    second job. Errors raise `APIError` subclasses carrying the API's `code` and `message`."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: httpx2.Timeout | float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        http: httpx2.Client | None = None,
    ):
        self.base_url, key = configured(url, api_key)
        self.retry = retry or RetryPolicy()
        self._headers = auth_headers(key)
        self._http = http or httpx2.Client(timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Daikon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- sending -----------------------------------------------------------------------------

    def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            headers = {**(self._headers if call.auth else {}), **call.headers}
            try:
                response = self._http.request(
                    call.method,
                    call.url(self.base_url),
                    params=call.params,
                    json=call.json,
                    data=call.form,
                    files=call.files,
                    headers=headers,
                )
            except httpx2.TransportError as e:
                delay = self.retry.after_error(call, attempt, e)
                if delay is None:
                    raise APIConnectionError(f"{call.method} {call.url(self.base_url)}: {e}") from e
            else:
                if response.status_code in call.ok:
                    return call.parse(response)
                error = error_from(response)
                delay = self.retry.after_answer(call, attempt, error)
                if delay is None:
                    raise error
            time.sleep(delay)
            attempt += 1

    # --- jobs --------------------------------------------------------------------------------

    def submit(
        self,
        request: JobRequest | str,
        *,
        idempotency_key: str | None = None,
        image: InputFile | None = None,
        mask: InputFile | None = None,
        **fields: Unpack[JobFields],
    ) -> JobOut:
        """Queue a job: `submit("a red circle", candidates=8, top_k=2)` (keywords are
        JobRequest's fields, typed: JobFields) or a JobRequest.
        Without `idempotency_key` a fresh one is made, and reused by this call's retries.
        An edit uploads `image` (and `mask`: white = repaint) as bytes, a path or a binary
        file, with `mode="image"` or `"inpaint"`; or names earlier images by `image_id`."""
        inputs = {"image": image, "mask": mask}
        return self._send(Endpoints.submit(request, idempotency_key, fields, inputs))

    def get(self, job_id: str) -> JobOut:
        """GET /v1/jobs/{id}: the job now."""
        return self._send(Endpoints.get(job_id))

    def cancel(self, job_id: str) -> JobOut:
        """queued or running -> canceled (a canceled job stays so); ConflictError
        (`job_finished`) when it already succeeded or failed."""
        return self._send(Endpoints.cancel(job_id))

    def list_page(
        self,
        *,
        status: JobStatus | str | None = None,
        model: str | None = None,
        created_after: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobList:
        """One page of jobs, newest first; pass `next_cursor` as `cursor` for the next."""
        return self._send(
            Endpoints.list_page(
                status=status, model=model, created_after=created_after, limit=limit, cursor=cursor
            )
        )

    def list(
        self,
        *,
        status: JobStatus | str | None = None,
        model: str | None = None,
        created_after: datetime | str | None = None,
        page_size: int | None = None,
    ) -> Iterator[JobOut]:
        """Every matching job, newest first, fetching pages as it goes."""
        cursor: str | None = None
        while True:
            page = self.list_page(
                status=status,
                model=model,
                created_after=created_after,
                limit=page_size,
                cursor=cursor,
            )
            yield from page.jobs
            if not page.has_more or page.next_cursor is None:
                return
            cursor = page.next_cursor

    def events(self, job_id: str, *, last_event_id: int | None = None) -> Iterator[JobEvent]:
        """The job's events as they happen, ending with its DoneEvent. A dropped connection is
        reopened with Last-Event-ID: nothing is delivered twice and the DoneEvent arrives
        exactly once. Raises ServiceUnavailableError(`too_many_streams`) when the server has no
        stream to spare (`wait` then polls)."""
        return self._events(job_id, last_event_id, None)

    def _events(
        self, job_id: str, last_event_id: int | None, deadline: float | None
    ) -> Iterator[JobEvent]:
        state = StreamState(last_event_id)
        failures = 0
        url = self.base_url + events_path(job_id)
        while not state.done:
            delivered = False
            timeout: Any = DEFAULT_TIMEOUT
            if deadline is not None:
                timeout = httpx2.Timeout(
                    max(0.1, min(30.0, deadline - time.monotonic())), connect=10.0
                )
            headers = {
                **self._headers,
                "Accept": "text/event-stream",
                **stream_headers(state.last_event_id),
            }
            try:
                with self._http.stream("GET", url, headers=headers, timeout=timeout) as r:
                    if r.status_code != 200:
                        r.read()
                        error = error_from(r)
                        delay = self.retry.after_answer(STREAM, failures, error)
                        if delay is None or error.code == "too_many_streams":
                            raise error
                        failures += 1
                        time.sleep(delay)
                        continue
                    for sse in httpx2.EventSource(r):
                        event = parse_event(sse)
                        if event is None or not state.accept(event):
                            continue
                        delivered, failures = True, 0
                        yield event
                        if state.done:
                            return
            except httpx2.TransportError as e:
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"job {job_id} did not finish in time") from e
                delay = self.retry.after_error(STREAM, failures, e)
                if delay is None:
                    raise APIConnectionError(f"GET {url}: {e}") from e
                failures += 1
                time.sleep(delay)
                continue
            if not delivered:
                # Closed with nothing new: the job ended before (resumed past its end), or a
                # quiet stream reached the server's time limit.
                if self.get(job_id).status.terminal:
                    return
                time.sleep(self.retry.backoff)

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: bool = False,
        on_event: Callable[[JobEvent], None] | None = None,
    ) -> JobOut:
        """The job once it is terminal (succeeded, failed or canceled: check `status`).
        Follows the event stream (calling `on_event` for each), or polls with ETag and the
        server's Retry-After when `poll` is set or no stream slot is free."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not poll:
            try:
                for event in self._events(job_id, None, deadline):
                    if on_event is not None:
                        on_event(event)
                    if isinstance(event, DoneEvent):
                        return event.job
                    if deadline is not None and time.monotonic() >= deadline:
                        raise WaitTimeout(f"job {job_id} did not finish in {timeout} s")
                return self.get(job_id)
            except ServiceUnavailableError as e:
                if e.code != "too_many_streams":
                    raise
        return self._poll(job_id, deadline, timeout)

    def _poll(self, job_id: str, deadline: float | None, timeout: float | None) -> JobOut:
        job: JobOut | None = None
        etag: str | None = None
        while True:
            polled = self._send(Endpoints.poll(job_id, etag))
            job, etag = polled.job or job, polled.etag or etag
            if job is not None and job.status.terminal:
                return job
            pause = polled.retry_after if polled.retry_after is not None else 1.0
            if deadline is not None and time.monotonic() + pause > deadline:
                raise WaitTimeout(f"job {job_id} did not finish in {timeout} s")
            time.sleep(pause)

    def download(self, image: ImageOut | str, path: Path | str | None = None) -> bytes:
        """An image's bytes (from its signed URL, without the API key); saved to `path` too
        when given."""
        data = self._send(Endpoints.image(image_url(image)))
        if path is not None:
            Path(path).write_bytes(data)
        return data

    def save_images(self, job: JobOut, directory: Path | str) -> builtins.list[Path]:
        """Download every kept image of `job` into `directory`, named
        `<job id>-rank<r>-clip<score>.png`; the paths, best first."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for image in sorted(job.images, key=lambda i: i.rank):
            path = folder / image_file_name(job, image.rank, image.clip_score, image.content_type)
            self.download(image, path)
            paths.append(path)
        return paths

    # --- models, admin, webhooks -------------------------------------------------------------

    def models(self) -> ModelList:
        """GET /v1/models: the models jobs may name, their workers, queues and capabilities."""
        return self._send(Endpoints.models())

    def create_tenant(self, name: str) -> TenantOut:
        """POST /v1/admin/tenants (admin key)."""
        return self._send(Endpoints.create_tenant(name))

    def tenants(self) -> TenantList:
        """GET /v1/admin/tenants (admin key)."""
        return self._send(Endpoints.tenants())

    def create_key(
        self, tenant_id: str, *, name: str = "", admin: bool = False, scope: str | None = None
    ) -> NewKeyOut:
        """A new API key (`scope`: tenant, admin or operator); `key` is shown in this answer
        only."""
        return self._send(Endpoints.create_key(tenant_id, name, admin, scope))

    def keys(self, tenant_id: str) -> KeyList:
        """GET /v1/admin/tenants/{id}/keys (admin key); never the keys themselves."""
        return self._send(Endpoints.keys(tenant_id))

    def revoke_key(self, key_id: str) -> KeyOut:
        """DELETE /v1/admin/keys/{id} (admin key): refused from now on."""
        return self._send(Endpoints.revoke_key(key_id))

    def rotate_webhook_secret(self, *, overlap_hours: float | None = None) -> SecretOut:
        """A new signing secret (shown once); the previous one signs for `overlap_hours`."""
        return self._send(Endpoints.rotate_webhook_secret(overlap_hours))

    def deliveries(self, job_id: str) -> DeliveryList:
        """GET /v1/jobs/{id}/webhooks: the job's webhook deliveries and every attempt."""
        return self._send(Endpoints.deliveries(job_id))

    def redeliver(self, delivery_id: str) -> DeliveryOut:
        """POST /v1/admin/webhooks/{id}/redeliver (admin key): send again, same webhook-id."""
        return self._send(Endpoints.redeliver(delivery_id))

"""`POST /v1/images/generations`, shaped like the OpenAI Images API, so the official clients and
tools built on them can use Daikon by changing their base URL.

A request becomes an ordinary Daikon job (through `api.submission.submit`, so validation,
limits, idempotency and enqueueing are the same as for `POST /v1/jobs`), and the call then
waits for that job: woken by the job's Redis pub/sub channel, with a database re-check every
few seconds so a lost notice only delays the answer.

Errors that concern the request answer 400, as OpenAI does, so clients raise their usual
`BadRequestError`. Once a job exists, every error response carries its `Location` and an
`x-should-retry` header, which the official clients obey: a retry without an Idempotency-Key
would create a second job, so it is allowed only when the client sent one (the retry then
rejoins the same job).
"""

from __future__ import annotations

import base64
import functools
import logging
import re
import time
from typing import Any, Literal

from flask import Blueprint, Response, url_for
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from sqlalchemy.exc import OperationalError

from api import openapi
from api.auth import authenticate
from api.bodies import header_params, json_body
from api.errors import error_response, validation_error
from api.serialize import image_url
from api.services import Services, services
from api.slots import Slot
from api.submission import Submitted, submit
from daikon import rules
from daikon.contract import JobStatus, SubmitHeaders
from daikon.errors import InvalidRequest
from daikon.settings import Settings
from db import jobs
from db.session import session_scope

log = logging.getLogger("daikon.api")
bp = Blueprint("openai_compat", __name__, url_prefix="/v1")

# How often a waiting request re-reads the job even without a notice (a notice can be lost).
RECHECK_SECONDS = 2.0
SIZE_PATTERN = r"^(auto|\d{1,5}x\d{1,5})$"
SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")
# Daikon names the client knows by their OpenAI names in error messages and `param`.
OPENAI_PARAMS = {
    "metadata": "user", "width": "size", "height": "size", "top_k": "n", "candidates": "n",
}  # fmt: skip
# Job error codes caused by the request itself; every other failure is the server's.
CLIENT_JOB_ERRORS = frozenset({"unsupported_scheduler", "unsupported_parameter", "job_too_large"})


class ImageGenerationRequest(BaseModel):
    """The OpenAI body. It becomes a Daikon job, validated as one (sizes, model, user's
    metadata) with the job's field names mapped back to OpenAI's in errors; `n`'s bound is
    the deployment's candidate bound (ImageGenerationRequest.for_settings)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str
    n: int | None = Field(None, description="Images returned (default 1).")
    size: str | None = Field(
        None, pattern=SIZE_PATTERN,
        description="'WIDTHxHEIGHT' (each side as a job's width and height) or 'auto' (the "
        "default size).",
    )  # fmt: skip
    response_format: Literal["url", "b64_json"] | None = None
    model: str | None = Field(None, description="A Daikon model name; omitted = the default.")
    user: str | None = Field(None, description="Stored as the job's metadata.openai_user.")
    quality: str | None = Field(None, description="Accepted and ignored.")
    style: str | None = Field(None, description="Accepted and ignored.")

    @classmethod
    def for_settings(cls, settings: Settings) -> type[ImageGenerationRequest]:
        return _image_request(settings.limits.max_candidates)

    def job_body(self, settings: Settings) -> dict[str, Any]:
        """The equivalent `POST /v1/jobs` body. More candidates than images, so that CLIP
        ranking still chooses the best `n`."""
        n = self.n or 1
        body: dict[str, Any] = {
            "prompt": self.prompt,
            "candidates": max(n, settings.limits.default_candidates),
            "top_k": n,
        }
        match = SIZE.fullmatch(self.size or "")
        if match:  # None and "auto" leave the deployment's default size
            body["width"], body["height"] = int(match[1]), int(match[2])
        if self.model is not None:
            body["model"] = self.model
        if self.user is not None:
            body["metadata"] = {"openai_user": self.user}
        return body


@functools.cache
def _image_request(max_candidates: int) -> type[ImageGenerationRequest]:
    n = (rules.between(1, max_candidates) | None,
         Field(None, description="Images returned (default 1)."))  # fmt: skip
    return create_model("ImageGenerationRequest", __base__=ImageGenerationRequest,
                        __module__=__name__, __doc__="The OpenAI body; it becomes a Daikon job.",
                        n=n)  # fmt: skip


@bp.errorhandler(ValidationError)
def _invalid(e: ValidationError) -> Any:
    return validation_error(e, status=400, rename=OPENAI_PARAMS)


@bp.errorhandler(InvalidRequest)
def _invalid_header(e: InvalidRequest) -> Any:
    return error_response(400, type=e.type, code=e.code, message=e.message, param=e.param)


def _waiting_slot(svc: Services, tenant_id: str) -> Slot:
    """A waiting request holds a server thread: capped per process and per tenant, like event
    streams, so waits cannot starve ordinary requests. Taken before submitting, so a refusal
    creates nothing and the client may simply retry."""
    return svc.long_requests.acquire(
        tenant_id, code="too_many_waiting", what="image requests waiting",
        instead="retry shortly, or use POST /v1/jobs and poll",
    )  # fmt: skip


def _status(svc: Services, job_id: str, tenant_id: str) -> JobStatus:
    with session_scope(svc.sessions) as session:
        return jobs.get(session=session, job_id=job_id, tenant_id=tenant_id).status


def _wait_for_end(svc: Services, job_id: str, tenant_id: str, seconds: float) -> JobStatus:
    """The job's status once terminal, or when `seconds` have passed. Watched before the first
    read, so a change between the two is not missed; progress notices don't end a wait."""
    deadline = time.monotonic() + seconds
    with svc.live.watch(job_id) as watch:
        while True:
            status = _status(svc, job_id, tenant_id)
            left = deadline - time.monotonic()
            if status.terminal or left <= 0:
                return status
            watch.wait(min(RECHECK_SECONDS, left), status_only=True)


def _job_error(
    status: int, *, job_id: str, type: str, code: str, message: str, retry: bool
) -> tuple[Response, int]:
    resp, status = error_response(status, type=type, code=code, message=message)
    resp.headers["Location"] = url_for("jobs.get_job", job_id=job_id)
    resp.headers["x-should-retry"] = "true" if retry else "false"
    if retry:
        resp.headers["Retry-After"] = "1"
    return resp, status


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


@bp.post("/images/generations")
@openapi.operation(
    "Generate images (OpenAI-compatible)", tags=["openai"], body=ImageGenerationRequest,
    headers=SubmitHeaders,
    responses={200: openapi.Reply("The images, best first.", ImagesResponse,
                                  headers={"Location": True})},
    errors={
        409: "`job_canceled`: the job was canceled while the request waited.",
        429: "Per-tenant submission limits, as for POST /v1/jobs.",
        500: "The job failed (its error code), or its result could not be read.",
        503: "`too_many_waiting` (nothing created), or the queue or database is down.",
        504: "`job_not_finished`: still running at the deadline; `Location` names the job.",
    },
)  # fmt: skip
def generate_images() -> Any:
    principal = authenticate()
    svc = services()
    req = ImageGenerationRequest.for_settings(svc.settings).model_validate(json_body())
    key = header_params(SubmitHeaders).idempotency_key
    with _waiting_slot(svc, principal.tenant_id):
        result = submit(svc, principal, req.job_body(svc.settings), idempotency_key=key)
        try:
            return _answer(svc, req, result, principal.tenant_id, retry=key is not None)
        except OperationalError as e:
            log.error("database unavailable while answering for job %s: %s", result.job_id, e)
            return _job_error(
                503, job_id=result.job_id, type="service_unavailable",
                code="database_unavailable", retry=key is not None,
                message=f"job {result.job_id} was created, but the database became unavailable",
            )  # fmt: skip
        except Exception:
            # Not left to the app's handler: this answer must carry the job and x-should-retry.
            log.exception("answering for job %s failed", result.job_id)
            return _job_error(
                500, job_id=result.job_id, type="server_error", code="internal_error",
                message=f"job {result.job_id} was created, but reading its result failed",
                retry=key is not None,
            )  # fmt: skip


def _answer(
    svc: Services, req: ImageGenerationRequest, result: Submitted, tenant_id: str, *, retry: bool
) -> Any:
    """Wait for the job, then answer as OpenAI would: the images in rank order, or an error."""
    job_id = result.job_id
    wait = svc.settings.api.openai_wait_seconds
    status = _wait_for_end(svc, job_id, tenant_id, wait)
    if status is JobStatus.canceled:
        return _job_error(409, job_id=job_id, type="conflict_error", code="job_canceled",
                          message=f"job {job_id} was canceled", retry=False)  # fmt: skip
    if not status.terminal:
        return _job_error(
            504, job_id=job_id, type="timeout_error", code="job_not_finished", retry=retry,
            message=f"job {job_id} is still {status.value} after {wait:g} s; "
            f"poll GET /v1/jobs/{job_id} for its images",
        )  # fmt: skip

    with session_scope(svc.sessions) as session:
        job = jobs.get(session=session, job_id=job_id)
        if job.status is JobStatus.failed:
            code = job.error_code or "internal_error"
            client_fault = code in CLIENT_JOB_ERRORS
            return _job_error(
                400 if client_fault else 500, job_id=job_id,
                type="invalid_request_error" if client_fault else "server_error", code=code,
                message=f"job {job_id} failed: {job.error_message or code}", retry=False,
            )  # fmt: skip
        assert job.finished_at is not None
        created = int(job.finished_at.timestamp())
        if req.response_format == "b64_json":
            keys = [img.storage_key for img in job.images]
        else:
            data = [{"url": image_url(job, img)} for img in job.images]
    if req.response_format == "b64_json":  # read outside the session: S3 may be slow
        try:
            data = [{"b64_json": base64.b64encode(svc.store.get(k)).decode()} for k in keys]
        except KeyError as e:
            log.error("image %s of job %s is missing from storage", e, job_id)
            return _job_error(
                500, job_id=job_id, type="server_error", code="image_missing", retry=False,
                message=f"an image of job {job_id} is missing from storage",
            )  # fmt: skip
    headers = {"Location": url_for("jobs.get_job", job_id=job_id)}
    if not result.created:
        headers["Idempotent-Replayed"] = "true"
    return {"created": created, "data": data}, 200, headers

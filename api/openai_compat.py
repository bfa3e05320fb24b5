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

from flask import Blueprint, Response, request, url_for
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from sqlalchemy.exc import OperationalError

from api import openapi
from api.auth import Principal, authenticate
from api.bodies import header_params, json_body
from api.errors import error_response, validation_error
from api.inputs import (
    Upload,
    allow_uploads,
    check_parts,
    check_upload,
    is_multipart,
    uploads,
)
from api.inputs import uploaded as uploaded_file
from api.serialize import image_url
from api.services import Services, services
from api.slots import Slot
from api.submission import Submitted, submit
from daikon import rules
from daikon.contract import JobStatus, SubmitHeaders
from daikon.errors import InvalidRequest, RequestErrorCode, UnsupportedMediaType
from db import jobs
from db.session import session_scope
from server.settings import Settings

log = logging.getLogger("daikon.api")
bp = Blueprint("openai_compat", __name__, url_prefix="/v1")

# How often a waiting request re-reads the job even without a notice (a notice can be lost).
RECHECK_SECONDS = 2.0
SIZE_PATTERN = r"^(auto|\d{1,5}x\d{1,5})$"
SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")
# Daikon names the client knows by their OpenAI names in error messages and `param`.
OPENAI_PARAMS = {
    "metadata": "user",
    "width": "size",
    "height": "size",
    "top_k": "n",
    "candidates": "n",
}
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
        None,
        pattern=SIZE_PATTERN,
        description="'WIDTHxHEIGHT' (each side as a job's width and height) or 'auto' (the "
        "default size).",
    )
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
    n = (
        rules.between(1, max_candidates) | None,
        Field(None, description="Images returned (default 1)."),
    )
    return create_model(
        "ImageGenerationRequest",
        __base__=ImageGenerationRequest,
        __module__=__name__,
        __doc__="The OpenAI body; it becomes a Daikon job.",
        n=n,
    )


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
        tenant_id,
        code=RequestErrorCode.too_many_waiting,
        what="image requests waiting",
        instead="retry shortly, or use POST /v1/jobs and poll",
    )


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
    "Generate images (OpenAI-compatible)",
    tags=["openai"],
    body=ImageGenerationRequest,
    headers=SubmitHeaders,
    responses={
        200: openapi.Reply("The images, best first.", ImagesResponse, headers={"Location": True})
    },
    errors={
        403: "`storage_quota_exceeded`: as for POST /v1/jobs.",
        409: "`job_canceled`: the job was canceled while the request waited.",
        429: "Per-tenant submission limits, as for POST /v1/jobs.",
        500: "The job failed (its error code), or its result could not be read.",
        503: "`too_many_waiting` (nothing created), or the queue or database is down.",
        504: "`job_not_finished`: still running at the deadline; `Location` names the job.",
    },
)
def generate_images() -> Any:
    principal = authenticate()
    svc = services()
    req = ImageGenerationRequest.for_settings(svc.settings).model_validate(json_body())
    return _submit_and_answer(svc, principal, req.response_format, req.job_body(svc.settings))


def _submit_and_answer(
    svc: Services,
    principal: Principal,
    response_format: str | None,
    body: dict[str, Any],
    *,
    files: dict[str, Upload] | None = None,
) -> Any:
    """Submit the job, wait for it and answer as OpenAI would."""
    key = header_params(SubmitHeaders).idempotency_key
    with _waiting_slot(svc, principal.tenant_id):
        result = submit(svc, principal, body, idempotency_key=key, files=files)
        try:
            return _answer(svc, response_format, result, principal.tenant_id, retry=key is not None)
        except OperationalError as e:
            log.error("database unavailable while answering for job %s: %s", result.job_id, e)
            return _job_error(
                503,
                job_id=result.job_id,
                type="service_unavailable",
                code=RequestErrorCode.database_unavailable,
                retry=key is not None,
                message=f"job {result.job_id} was created, but the database became unavailable",
            )
        except Exception:
            # Not left to the app's handler: this answer must carry the job and x-should-retry.
            log.exception("answering for job %s failed", result.job_id)
            return _job_error(
                500,
                job_id=result.job_id,
                type="server_error",
                code=RequestErrorCode.internal_error,
                message=f"job {result.job_id} was created, but reading its result failed",
                retry=key is not None,
            )


def _answer(
    svc: Services, response_format: str | None, result: Submitted, tenant_id: str, *, retry: bool
) -> Any:
    """Wait for the job, then answer as OpenAI would: the images in rank order, or an error."""
    job_id = result.job_id
    wait = svc.settings.api.openai_wait_seconds
    status = _wait_for_end(svc, job_id, tenant_id, wait)
    if status is JobStatus.canceled:
        return _job_error(
            409,
            job_id=job_id,
            type="conflict_error",
            code=RequestErrorCode.job_canceled,
            message=f"job {job_id} was canceled",
            retry=False,
        )
    if not status.terminal:
        return _job_error(
            504,
            job_id=job_id,
            type="timeout_error",
            code=RequestErrorCode.job_not_finished,
            retry=retry,
            message=f"job {job_id} is still {status.value} after {wait:g} s; "
            f"poll GET /v1/jobs/{job_id} for its images",
        )

    with session_scope(svc.sessions) as session:
        job = jobs.get(session=session, job_id=job_id)
        if job.status is JobStatus.failed:
            code = job.error_code or RequestErrorCode.internal_error
            client_fault = code in CLIENT_JOB_ERRORS
            return _job_error(
                400 if client_fault else 500,
                job_id=job_id,
                type="invalid_request_error" if client_fault else "server_error",
                code=code,
                message=f"job {job_id} failed: {job.error_message or code}",
                retry=False,
            )
        assert job.finished_at is not None
        created = int(job.finished_at.timestamp())
        if response_format == "b64_json":
            keys = [img.storage_key for img in job.images]
        else:
            data = [{"url": image_url(job, img)} for img in job.images]
    if response_format == "b64_json":  # read outside the session: S3 may be slow
        try:
            data = [{"b64_json": base64.b64encode(svc.store.get(k)).decode()} for k in keys]
        except KeyError as e:
            log.error("image %s of job %s is missing from storage", e, job_id)
            return _job_error(
                500,
                job_id=job_id,
                type="server_error",
                code=RequestErrorCode.image_missing,
                retry=False,
                message=f"an image of job {job_id} is missing from storage",
            )
    headers = {"Location": url_for("jobs.get_job", job_id=job_id)}
    if not result.created:
        headers["Idempotent-Replayed"] = "true"
    return {"created": created, "data": data}, 200, headers


# --- edits and variations -------------------------------------------------------------------

VARIATION_STRENGTH = 0.6
EDIT_PARTS = ("image", "mask")


class ImageEditRequest(BaseModel):
    """The form fields of `POST /v1/images/edits` (the files are the parts `image` and `mask`).
    Form values are text, so numbers are parsed from it."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="What the edited image should show.")
    n: int | None = Field(None, description="Images returned (default 1).")
    size: str | None = Field(
        None,
        pattern=SIZE_PATTERN,
        description="'auto' or the image's own 'WIDTHxHEIGHT': an edit keeps its image's size.",
    )
    response_format: Literal["url", "b64_json"] | None = None
    model: str | None = Field(None, description="A Daikon model name; omitted = the default.")
    user: str | None = Field(None, description="Stored as the job's metadata.openai_user.")

    @classmethod
    def for_settings(cls, settings: Settings) -> type[ImageEditRequest]:
        return _form_request(cls, settings.limits.max_candidates)

    def job_body(self, settings: Settings, *, mode: str, prompt: str) -> dict[str, Any]:
        n = self.n or 1
        body: dict[str, Any] = {
            "prompt": prompt,
            "mode": mode,
            "candidates": max(n, settings.limits.default_candidates),
            "top_k": n,
        }
        if self.model is not None:
            body["model"] = self.model
        if self.user is not None:
            body["metadata"] = {"openai_user": self.user}
        return body


class ImageVariationRequest(ImageEditRequest):
    """The form fields of `POST /v1/images/variations` (the file is the part `image`)."""

    prompt: str = Field("", description="Not an OpenAI field: variations have no prompt.")


@functools.cache
def _form_request(base: type[ImageEditRequest], max_candidates: int) -> type[ImageEditRequest]:
    n = (
        rules.between(1, max_candidates) | None,
        Field(None, description="Images returned (default 1)."),
    )
    return create_model(
        base.__name__, __base__=base, __module__=__name__, __doc__=base.__doc__, n=n
    )


def _form(parts: tuple[str, ...]) -> dict[str, Any]:
    """A multipart request's fields (a repeated one is refused) after its limits are set;
    file parts other than `parts` are refused."""
    allow_uploads(services().settings)
    if not is_multipart():
        raise UnsupportedMediaType("Content-Type must be multipart/form-data")
    check_parts()
    unknown = sorted(set(request.files) - set(parts))
    if unknown:
        raise InvalidRequest(
            f"{unknown[0]}: unknown file part; this route takes {' and '.join(parts)}",
            param=unknown[0],
        )
    repeated = sorted(k for k in request.form if len(request.form.getlist(k)) > 1)
    if repeated:
        raise InvalidRequest(f"{repeated[0]}: given more than once", param=repeated[0])
    return {k: v for k, v in request.form.items() if k not in parts}


def _edit_size(req: ImageEditRequest, image: Upload) -> None:
    match = SIZE.fullmatch(req.size or "")
    if match and (int(match[1]), int(match[2])) != (image.width, image.height):
        raise InvalidRequest(
            f"size: {req.size} differs from the image's {image.width}x{image.height}; an edit "
            "keeps its image's size (send 'auto', the image's size, or no size)",
            param="size",
        )


def _image_part(svc: Services) -> Upload:
    """The image part, checked from its header (decoded once, by the submission, past the
    tenant's limits)."""
    data = uploaded_file("image", svc.settings)
    if data is None:
        raise InvalidRequest("image: is required (a file part)", param="image")
    return check_upload(data, role="image", settings=svc.settings)


FORM_SCHEMA = {
    name: {k: v for k, v in prop.items() if k != "title"}
    for name, prop in ImageEditRequest.model_json_schema()["properties"].items()
}
BINARY = {"type": "string", "format": "binary"}
EDIT_ERRORS = {
    404: "",
    403: "`storage_quota_exceeded`: as for POST /v1/jobs.",
    409: "`job_canceled`: the job was canceled while the request waited.",
    413: "`request_entity_too_large`: an image or mask past DAIKON_MAX_INPUT_BYTES or "
    "DAIKON_MAX_INPUT_PIXELS.",
    415: "`unsupported_media_type`: not multipart/form-data, or a file that is not PNG, JPEG "
    "or WebP.",
    429: "Per-tenant submission limits, as for POST /v1/jobs.",
    500: "The job failed (its error code), or its result could not be read.",
    503: "`too_many_waiting` (nothing created), or the queue or database is down.",
    504: "`job_not_finished`: still running at the deadline; `Location` names the job.",
}


@bp.post("/images/edits")
@uploads
@openapi.operation(
    "Edit an image (OpenAI-compatible)",
    tags=["openai"],
    headers=SubmitHeaders,
    form={
        **FORM_SCHEMA,
        "image": {**BINARY, "description": "The image to edit (PNG, JPEG or WebP)."},
        "mask": {
            **BINARY,
            "description": "PNG with alpha, the image's size: fully "
            "transparent pixels are repainted, the rest kept.",
        },
    },
    form_required=["image", "prompt"],
    responses={
        200: openapi.Reply(
            "The edited images, best first.", ImagesResponse, headers={"Location": True}
        )
    },
    errors={
        400: "Bad fields, a missing image, a size other than the image's, a mask without "
        "alpha or of another size, an undecodable file: `param` names it.",
        **EDIT_ERRORS,
    },
)
def edit_images() -> Any:
    """With a mask, an inpaint job: OpenAI's mask marks where to edit by full transparency,
    converted to the diffusers convention (alpha 0 -> white = repaint, anything else -> black
    = keep), and the kept pixels come back unchanged. Without a mask, an image-to-image job of
    the whole image at strength 0.6. The result keeps the image's size."""
    principal = authenticate()
    svc = services()
    req = ImageEditRequest.for_settings(svc.settings).model_validate(_form(EDIT_PARTS))
    if not req.prompt.strip():
        raise InvalidRequest("prompt: must not be empty", param="prompt")
    image = _image_part(svc)
    _edit_size(req, image)
    files = {"image": image}
    mask_data = uploaded_file("mask", svc.settings)
    if mask_data is not None:
        files["mask"] = check_upload(
            mask_data, role="mask", settings=svc.settings, openai_mask=True
        )
    body = req.job_body(
        svc.settings, mode="inpaint" if "mask" in files else "image", prompt=req.prompt
    )
    if "mask" not in files:
        body["strength"] = VARIATION_STRENGTH
    return _submit_and_answer(svc, principal, req.response_format, body, files=files)


@bp.post("/images/variations")
@uploads
@openapi.operation(
    "Image variations (OpenAI-compatible)",
    tags=["openai"],
    headers=SubmitHeaders,
    form={
        **{k: v for k, v in FORM_SCHEMA.items() if k != "prompt"},
        "image": {**BINARY, "description": "The image to vary (PNG, JPEG or WebP)."},
    },
    form_required=["image"],
    responses={200: openapi.Reply("The variations.", ImagesResponse, headers={"Location": True})},
    errors={
        400: "Bad fields, a missing image, a size other than the image's, an "
        "undecodable file: `param` names it.",
        **EDIT_ERRORS,
    },
)
def image_variations() -> Any:
    """Image-to-image at strength 0.6 with an empty prompt: the image is partly noised and
    redrawn with no caption (Daikon cannot know what it shows), so a variation keeps its
    layout and colours roughly and changes details. Exactly `n` candidates are drawn and all
    returned: CLIP ranking against an empty prompt would choose nothing."""
    principal = authenticate()
    svc = services()
    form = _form(("image",))
    if "prompt" in form:
        raise InvalidRequest("prompt: unknown field (variations take no prompt)", param="prompt")
    req = ImageVariationRequest.for_settings(svc.settings).model_validate(form)
    image = _image_part(svc)
    _edit_size(req, image)
    body = req.job_body(svc.settings, mode="image", prompt="")
    body.update(strength=VARIATION_STRENGTH, candidates=req.n or 1, guidance_scale=0.0)
    return _submit_and_answer(svc, principal, req.response_format, body, files={"image": image})

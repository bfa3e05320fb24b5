"""The job contract between API, database and worker: what a client may ask for and what it gets.

Bounds come from `Settings`: each request model has a per-deployment version (`for_settings`)
whose fields carry the rules (daikon/rules.py), so one model validates a request in the API
(before anything is written) and documents it (GET /openapi.json, docs/api.md).
"""

from __future__ import annotations

import base64
import enum
import functools
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
)

from daikon import rules
from daikon.capabilities import MODES, SCHEDULERS, Mode, ModelCapabilities, ModelOptions
from daikon.limits import job_cost
from server.settings import Settings

TASK_GENERATE = "daikon.generate_job"
SEED_MAX = 2**32 - 1
PRIORITY_MAX = 9
DEFAULT_PRIORITY = 5
# An edit's strength when the request names none: how much noise is added to the input.
DEFAULT_STRENGTH: dict[str, float] = {"image": 0.6, "inpaint": 1.0}
MAX_MASK_BLUR = 64
INPUT_ROLES = ("image", "mask")


class WebhookEvent(enum.StrEnum):
    started = "job.started"
    progress = "job.progress"
    succeeded = "job.succeeded"
    failed = "job.failed"
    canceled = "job.canceled"


DEFAULT_WEBHOOK_EVENTS = (WebhookEvent.succeeded, WebhookEvent.failed, WebhookEvent.canceled)


# A failed job's error.code, and when each happens: the one list the docs are generated from
# (tests/test_reference.py checks the worker raises no other).
JOB_ERROR_CODES: dict[str, str] = {
    "model_load_failed": "The model's pipeline or its CLIP could not be loaded.",
    "job_too_large": "The job costs more megapixel-steps than its model allows on its "
    "device (refused at submit once a worker has published the model's limits).",
    "unsupported_scheduler": "The model cannot use the scheduler asked for (checked before "
    "any GPU work; the message lists those it can).",
    "unsupported_parameter": "The model cannot honour a parameter as asked (a size off its "
    "multiple, a negative prompt without guidance, guidance on a guidance-free model...): "
    "refused at submit once a worker has published the model's capabilities, else by the "
    "worker before any GPU work; the message names the parameter and the model.",
    "input_unavailable": "An image or inpaint job's stored input could not be read.",
    "generation_failed": "The pipeline raised an error while generating the candidates.",
    "ranking_failed": "CLIP scoring raised an error.",
    "upload_failed": "A kept image could not be encoded or stored (after retrying while "
    "storage was down).",
    "time_limit_exceeded": "The job ran past the time its cost allows, or past "
    "DAIKON_JOB_TIME_LIMIT_SECONDS.",
    "worker_lost": "The workers running it died DAIKON_MAX_ATTEMPTS times (killed, crashed, "
    "out of memory): the input may be what kills them, so it is not tried again.",
    "internal_error": "Anything else; the message names the exception.",
}


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.canceled})


class JobRequest(BaseModel):
    """The body of `POST /v1/jobs`. Omitted fields take the deployment's defaults.

    The bounds are the deployment's: validate with `JobRequest.for_settings(settings)`, a
    subclass whose fields carry the settings' rules (daikon/rules.py), from which OpenAPI and
    the reference docs are generated too."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(
        description="What to draw. Empty only for mode image: the image redrawn without a "
        "caption (what POST /v1/images/variations does)."
    )
    negative_prompt: str | None = Field(None, description="What to steer away from (CFG).")
    width: int | None = Field(None, description="Multiple of 8 within the configured bounds.")
    height: int | None = Field(None, description="Multiple of 8 within the configured bounds.")
    steps: int | None = Field(None, description="Denoising steps.")
    guidance_scale: float | None = Field(
        None,
        description="Guidance scale: classifier-free guidance, or a distilled model's "
        "guidance embedding (the model's `guidance` in GET /v1/models).",
    )
    true_cfg_scale: float | None = Field(
        None,
        description="Models with true CFG (FLUX): the scale a negative prompt applies at, "
        "> 1 (a second pass per step, about twice the time).",
    )
    candidates: int | None = Field(None, description="Images generated before CLIP ranking.")
    top_k: int | None = Field(None, description="Images kept after ranking (<= candidates).")
    seed: int | None = Field(None, description="Base seed; image i uses seed + i.")
    model: str | None = Field(None, description="A model name from GET /v1/models.")
    scheduler: str | None = Field(
        None,
        description="A diffusers scheduler, by short name or class name; which ones a "
        "model can use: GET /v1/models.",
    )
    mode: Mode | None = Field(
        None,
        description="text (default): draw the prompt; image: redraw the input `image` "
        "(image-to-image); inpaint: repaint where the `mask` is white, keep where it is black.",
    )
    strength: float | None = Field(
        None,
        description="image and inpaint: how much noise is added to the input, 0-1, so "
        "about steps x strength denoising steps run (default: 0.6 for image, 1.0 for inpaint).",
    )
    mask_blur: int | None = Field(
        None,
        description="inpaint: Gaussian blur radius (pixels) of the mask's edge, so the "
        "repainted area blends into the kept one; 0 (default) = a hard edge.",
    )
    image_id: str | None = Field(
        None,
        description="image and inpaint: an image of an earlier job of yours, by its "
        "`id` (`<job id>:<rank>`, or `<job id>:image` for a job's own input), instead of an "
        "uploaded `image` part.",
    )
    mask_id: str | None = Field(
        None,
        description="inpaint: a mask by id (`<job id>:mask`, or any image id whose "
        "image is single-channel), instead of an uploaded `mask` part.",
    )
    priority: int | None = Field(None, description="0-9, higher runs first (default 5).")
    metadata: dict[str, Any] | None = Field(None, description="Client JSON, stored as given.")
    webhook_url: str | None = Field(None, description="Where job events are POSTed.")
    webhook_events: list[WebhookEvent] | None = Field(
        None, description="Events to send (default: the terminal ones)."
    )

    # The deployment's default candidate count, for `top_k <= candidates` when omitted.
    default_candidates: ClassVar[int] = 4

    @classmethod
    def for_settings(cls, settings: Settings) -> type[JobRequest]:
        """This deployment's request model (built once per set of bounds)."""
        b = settings.limits
        return _job_request(
            b.max_prompt_chars,
            b.min_size,
            b.max_size,
            b.max_steps,
            b.max_guidance_scale,
            b.max_candidates,
            b.max_metadata_bytes,
            tuple(sorted(settings.model_specs)),
            settings.default_model_name,
            _shown_defaults(settings),
        )

    @field_validator("webhook_events", mode="before")
    @classmethod
    def _events_from_strings(cls, v: Any) -> Any:
        # Strict mode would refuse plain JSON strings for the enum: convert, naming bad ones.
        if isinstance(v, list):
            known = {e.value: e for e in WebhookEvent}
            bad = [x for x in v if not isinstance(x, str) or x not in known]
            if bad:
                raise ValueError(f"unknown events {bad}; known: {sorted(known)}")
            return [known[x] for x in v]
        return v

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int | None, info: ValidationInfo) -> int | None:
        # `candidates` is declared first, so it is in info.data when it was valid.
        candidates = info.data.get("candidates") or cls.default_candidates
        if v is not None and v > candidates:
            raise ValueError(f"must not exceed candidates ({candidates})")
        return v

    def resolve(
        self,
        settings: Settings,
        capabilities: ModelCapabilities | None = None,
        *,
        image_size: tuple[int, int] | None = None,
    ) -> JobParams:
        """The stored parameters: what the client omitted filled from, in order, the model's
        options in the model table, the deployment's DAIKON_DEFAULT_*, and the model's own
        defaults (its published capabilities). Without capabilities (no worker has loaded the
        model yet) a field may stay null: the worker fills it from the model before it runs.
        An edit's size is its input image's (`image_size`)."""
        limits = settings.limits
        candidates = self.candidates if self.candidates is not None else limits.default_candidates
        given = {name: getattr(self, name) for name in MODEL_DEFAULTED}
        mode = self.mode or "text"
        if image_size is not None:
            given["width"], given["height"] = image_size
        params = JobParams(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            candidates=candidates,
            top_k=self.top_k if self.top_k is not None else min(limits.default_top_k, candidates),
            seed=self.seed,
            model=self.model or settings.default_model_name,
            scheduler=self.scheduler,
            true_cfg_scale=self.true_cfg_scale,
            mode=mode,
            strength=(
                (self.strength if self.strength is not None else DEFAULT_STRENGTH[mode])
                if mode != "text"
                else None
            ),
            mask_blur=(self.mask_blur or 0) if mode == "inpaint" else None,
            defaulted=[name for name, value in given.items() if value is None],
            **given,
        )
        return fill_defaults(params, settings, capabilities)


def _shown_defaults(
    settings: Settings,
) -> tuple[int | None, int | None, int | None, float | None, int, int]:
    """The defaults the schema shows: the default model's (where the settings say them)."""
    b = settings.limits
    o = settings.model_specs[settings.default_model_name].options
    return (
        o.default_width or b.default_width,
        o.default_height or b.default_height,
        o.default_steps or b.default_steps,
        o.default_guidance_scale
        if o.default_guidance_scale is not None
        else b.default_guidance_scale,
        b.default_candidates,
        min(b.default_top_k, b.default_candidates),
    )


# Fields whose default belongs to the model (its size, steps and guidance).
MODEL_DEFAULTED = ("width", "height", "steps", "guidance_scale")


def fill_defaults(
    params: JobParams, settings: Settings, capabilities: ModelCapabilities | None
) -> JobParams:
    """Fill the fields still null (see JobRequest.resolve); the API and the worker use this
    one function, so they choose alike."""
    spec = settings.model_specs.get(params.model)
    options = spec.options if spec is not None else ModelOptions()
    limits = settings.limits
    update: dict[str, Any] = {}
    for name in MODEL_DEFAULTED:
        if getattr(params, name) is not None:
            continue
        for value in (
            getattr(options, f"default_{name}"),
            getattr(limits, f"default_{name}"),
            getattr(capabilities.defaults, name) if capabilities is not None else None,
        ):
            if value is not None:
                update[name] = value
                break
    if params.scheduler is None and options.default_scheduler is not None:
        update["scheduler"] = options.default_scheduler
    if params.true_cfg_scale is None and options.default_true_cfg_scale is not None:
        update["true_cfg_scale"] = options.default_true_cfg_scale
    return params.model_copy(update=update) if update else params


PUBLIC_DOC = (
    "The body of `POST /v1/jobs`. Omitted fields take the model's defaults (its options in "
    "the model table, the deployment's DAIKON_DEFAULT_*, then the model's own)."
)


@functools.cache
def _job_request(
    max_chars: int,
    min_size: int,
    max_size: int,
    max_steps: int,
    max_guidance: float,
    max_candidates: int,
    max_metadata: int,
    models: tuple[str, ...],
    default_model: str,
    defaults: tuple[int | None, int | None, int | None, float | None, int, int],
) -> type[JobRequest]:
    width, height, steps, guidance, candidates, top_k = defaults

    fields: dict[str, Any] = {}
    base = JobRequest.model_fields

    def bounded(name: str, rule: Any, shown_default: Any = None, more: str = "") -> None:
        description = (base[name].description or "") + more
        extra = {"default": shown_default} if shown_default is not None else None
        fields[name] = (rule | None, Field(None, description=description, json_schema_extra=extra))

    fields["prompt"] = (
        rules.text(max_chars, drawn=True, empty_allowed=True),
        Field(description=base["prompt"].description),
    )
    bounded("negative_prompt", rules.text(max_chars))
    side = rules.between(min_size, max_size, multiple_of=8)
    bounded("width", side, width)
    bounded("height", side, height)
    bounded("steps", rules.between(1, max_steps), steps)
    guidance_rule = rules.number_as_float(rules.between(0, max_guidance, kind=float))
    bounded("guidance_scale", guidance_rule, guidance)
    bounded("true_cfg_scale", guidance_rule)
    bounded("candidates", rules.between(1, max_candidates), candidates)
    bounded("top_k", rules.at_least(1, documented_maximum=max_candidates), top_k)
    bounded("seed", rules.between(0, SEED_MAX))
    bounded("model", rules.one_of(models, what="model"), default_model)
    bounded(
        "scheduler",
        rules.one_of(
            list(SCHEDULERS), what="scheduler", aliases={c: n for n, c in SCHEDULERS.items()}
        ),
    )
    bounded("mode", rules.one_of(MODES, what="mode"), "text")
    bounded("strength", rules.number_as_float(rules.between(0, 1, kind=float)))
    bounded("mask_blur", rules.between(0, MAX_MASK_BLUR), 0)
    bounded("image_id", rules.text(200))
    bounded("mask_id", rules.text(200))
    bounded("priority", rules.between(0, PRIORITY_MAX), DEFAULT_PRIORITY)
    bounded(
        "metadata", rules.json_object(max_metadata), more=f" At most {max_metadata} bytes as JSON."
    )
    bounded("webhook_url", rules.http_url())
    model = create_model(
        "JobRequest", __base__=JobRequest, __module__=__name__, __doc__=PUBLIC_DOC, **fields
    )
    model.default_candidates = candidates
    return model


class JobParams(BaseModel):
    """Validated generation parameters as stored on the job row: complete, except a model
    default the API could not know yet (null until the worker fills it, like `seed`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    negative_prompt: str | None
    width: int | None
    height: int | None
    steps: int | None
    guidance_scale: float | None
    candidates: int
    top_k: int
    seed: int | None  # None until the worker picks one; the job then records the one used
    model: str = "default"
    scheduler: str | None = None  # None = the pipeline's own
    true_cfg_scale: float | None = None  # None = the model's (only models with true CFG)
    mode: Mode = "text"
    strength: float | None = None  # image and inpaint only
    mask_blur: int | None = None  # inpaint only
    # What the client left out, filled with the model's (or deployment's) defaults.
    defaulted: list[str] = Field(default_factory=list)

    @property
    def complete(self) -> bool:
        return None not in (self.width, self.height, self.steps, self.guidance_scale)

    @property
    def cost(self) -> float:
        """Megapixel-steps (daikon/limits.py): what bounds how long the job holds a worker;
        0 while the size or steps are not known yet."""
        if self.width is None or self.height is None or self.steps is None:
            return 0.0
        return job_cost(
            width=self.width, height=self.height, candidates=self.candidates, steps=self.steps
        )

    @property
    def batch_key(self) -> tuple[object, ...] | None:
        """What jobs must share to run in one pipeline call (prompts, negative prompts and
        seeds are per image); None when the job runs alone: a default is still unknown, or it
        is an edit (image, inpaint), whose own input images and strength no other job shares.
        The one rule for batching: None neither joins a batch nor takes companions."""
        if not self.complete or self.mode != "text":
            return None
        return (
            self.model,
            self.width,
            self.height,
            self.steps,
            self.guidance_scale,
            self.scheduler,
            self.true_cfg_scale,
            self.negative_prompt is not None,
        )

    def describe_cost(self) -> str:
        return f"{self.width}x{self.height} px x {self.candidates} candidates x {self.steps} steps"


class ImageOut(BaseModel):
    id: str = Field(description="`<job id>:<rank>`: pass as `image_id` to edit this image.")
    rank: int = Field(description="1 = best CLIP match.")
    clip_score: float = Field(description="100 x cosine similarity of image and prompt.")
    seed: int
    width: int
    height: int
    content_type: str
    url: str


class InputOut(BaseModel):
    """An image a job was given (image and inpaint jobs), stored beside its outputs."""

    id: str = Field(description="`<job id>:image` or `<job id>:mask`: reusable as image_id.")
    role: str = Field(description="image or mask.")
    width: int
    height: int
    content_type: str
    url: str


class ErrorDetail(BaseModel):
    code: str
    message: str


class Progress(BaseModel):
    step: int
    total: int
    fraction: float


class JobUrls(BaseModel):
    get: str
    cancel: str
    events: str


# Polls of a job at least this deep in its model's queue read its place from one ranking of
# the queue per API process and interval (api/caches.py QueuePlaces), not a count each.
DEEP_QUEUE = 500
QUEUE_RANKING_MAX_AGE_SECONDS = 1.0


class JobOut(BaseModel):
    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: JobParams
    priority: int
    metadata: dict[str, Any] | None
    webhook_url: str | None
    webhook_events: list[WebhookEvent]
    images: list[ImageOut]
    inputs: list[InputOut] = Field(
        default_factory=list, description="image and inpaint jobs: the input image (and mask)."
    )
    error: ErrorDetail | None
    metrics: dict[str, float]
    progress: Progress | None = Field(None, description="While running: the denoising step.")
    queue_position: int | None = Field(
        None,
        description="While queued: jobs of its model that run before it. Exact while fewer "
        f"than {DEEP_QUEUE} are; deeper in a queue, as of at most "
        f"{QUEUE_RANKING_MAX_AGE_SECONDS:g} s ago (one ranking serves every poll and submit).",
    )
    urls: JobUrls


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page.")
    has_more: bool = False


# --- query strings and headers ---------------------------------------------------------------
# As pydantic models like the bodies, so the same statement validates them and documents them
# (the OpenAPI builder turns each field into a parameter, its alias the parameter's name).

CURSOR_SCHEMA = {"type": "string"}


def decode_cursor(raw: Any) -> Any:
    """`next_cursor` as the (created_at, id) it encodes; anything else is not one we sent."""
    if not isinstance(raw, str):
        return raw
    try:
        at, job_id = json.loads(base64.urlsafe_b64decode(raw.encode() + b"=="))
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("no time zone")
        return when.astimezone(UTC), str(job_id)  # OverflowError near year 1 or 9999
    except Exception:
        raise ValueError("is not a cursor this API returned") from None


def encode_cursor(at: datetime, job_id: str) -> str:
    raw = json.dumps([at.isoformat(), job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _in_utc(v: datetime) -> datetime:
    try:
        return v.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the year 1 in UTC
        raise ValueError("is out of range") from None


Cursor = Annotated[
    tuple[datetime, str], BeforeValidator(decode_cursor), WithJsonSchema(CURSOR_SCHEMA)
]


class ListQuery(BaseModel):
    """The query string of `GET /v1/jobs`; `limit`'s bound is the deployment's
    (ListQuery.for_settings)."""

    model_config = ConfigDict(extra="forbid")

    status: JobStatus | None = Field(None, description="Only jobs in this status.")
    model: str | None = Field(None, description="Only jobs of this model.")
    created_after: Annotated[AwareDatetime, AfterValidator(_in_utc)] | None = Field(
        None, description="Only jobs created after this time (ISO 8601, with a time zone)."
    )
    limit: int = Field(20, description="Jobs per page.")
    cursor: Cursor | None = Field(None, description="`next_cursor` of the previous page.")

    @classmethod
    def for_settings(cls, settings: Settings) -> type[ListQuery]:
        return _list_query(settings.api.list_limit_max)


@functools.cache
def _list_query(limit_max: int) -> type[ListQuery]:
    limit = (rules.between(1, limit_max), Field(20, description="Jobs per page."))
    return create_model("ListQuery", __base__=ListQuery, __module__=__name__, limit=limit)


IDEMPOTENCY_KEY_MAX = 255


class SubmitHeaders(BaseModel):
    idempotency_key: str | None = Field(
        None,
        alias="Idempotency-Key",
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX,
        description="Retrying with the same key and body answers the same job again.",
    )


class PollHeaders(BaseModel):
    if_none_match: str | None = Field(
        None,
        alias="If-None-Match",
        description="An ETag from an earlier answer: 304 while the job is unchanged.",
    )


# Event ids are below 2**31; a longer value is not one this API sent.
LAST_EVENT_ID = "^[0-9]{1,10}$"


class StreamHeaders(BaseModel):
    last_event_id: (
        Annotated[str, WithJsonSchema({"type": "string", "pattern": LAST_EVENT_ID})] | None
    ) = Field(
        None,
        alias="Last-Event-ID",
        description="Resume a dropped stream: events up to this id are not sent again "
        "(another value is ignored: a fresh stream).",
    )

    def resume_after(self) -> int:
        raw = self.last_event_id or ""
        return int(raw) if re.fullmatch(LAST_EVENT_ID, raw) and raw.isascii() else 0


class ImageQuery(BaseModel):
    """A signed image URL's query (any other answers 404, as for a missing image)."""

    expires: Annotated[str, WithJsonSchema({"type": "integer"})] = Field(
        description="From the signed URL."
    )
    sig: str = Field(description="From the signed URL.")

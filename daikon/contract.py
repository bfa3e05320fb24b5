"""The job contract between API, database and worker: what a client may ask for and what it gets.

Each request field states its rule (daikon/rules.py) beside its type and description (a
`Param`); bounds that are the deployment's come from a `Bounds` the server builds from its
settings (server/requests.py), which makes each request model's per-deployment version. So one
model validates a request in the API (before anything is written) and documents it
(GET /openapi.json, docs/api.md), and this module imports nothing of the server.
"""

from __future__ import annotations

import base64
import enum
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
    field_validator,
)

from daikon import rules
from daikon.capabilities import MODES, SCHEDULERS, Mode
from daikon.limits import job_cost

TASK_GENERATE = "daikon.generate_job"
SEED_MAX = 2**32 - 1
PRIORITY_MAX = 9
DEFAULT_PRIORITY = 5
# An edit's strength when the request names none: how much noise is added to the input.
DEFAULT_STRENGTH: dict[str, float] = {"image": 0.6, "inpaint": 1.0}
MAX_MASK_BLUR = 64
# Token models' sampling bounds (a model's codebook size bounds top_k_tokens further).
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 5.0
MIN_TOP_P = 0.01
MAX_TOP_K_TOKENS = 1 << 20
INPUT_ROLES = ("image", "mask")


class WebhookEvent(enum.StrEnum):
    started = "job.started"
    progress = "job.progress"
    succeeded = "job.succeeded"
    failed = "job.failed"
    canceled = "job.canceled"


DEFAULT_WEBHOOK_EVENTS = (WebhookEvent.succeeded, WebhookEvent.failed, WebhookEvent.canceled)


# A failed job's error.code, and when each happens: the one list the docs are generated from
# (tests/tools/test_reference.py checks the worker raises no other).
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


@dataclass(frozen=True)
class Bounds:
    """A deployment's bounds and the defaults its schema shows, as the fields' rules take them.
    The server builds it from its settings (server/requests.py): the contract knows no
    settings, so a client loads none."""

    max_prompt_chars: int
    min_size: int
    max_size: int
    max_steps: int
    max_guidance_scale: float
    max_candidates: int
    max_metadata_bytes: int
    list_limit_max: int
    models: tuple[str, ...]
    default_model: str
    # The default model's defaults where the settings state them (None: the model's own).
    default_width: int | None
    default_height: int | None
    default_steps: int | None
    default_guidance_scale: float | None
    default_candidates: int
    default_top_k: int


@dataclass(frozen=True)
class Param:
    """How a request field is checked and filled, stated beside its type and description.

    `rule` makes its check (daikon/rules.py) from the deployment's Bounds: the deployment's
    request model (server/requests.py) applies it, and OpenAPI and the docs show it. `default`
    is what an omitted field becomes (a mapping: by mode), shown in the schema unless `shown`
    says otherwise; `modes`: only jobs of these modes take it (others keep it null); `own`:
    each job of a shared pipeline call has its own value (else jobs must agree to share one)."""

    rule: Callable[[Bounds], Any]
    default: Any = None
    shown: Callable[[Bounds], Any] | None = None
    modes: tuple[Mode, ...] | None = None
    own: bool = False
    more: Callable[[Bounds], str] | None = None

    def shown_default(self, bounds: Bounds) -> Any:
        if self.shown is not None:
            return self.shown(bounds)
        return None if isinstance(self.default, Mapping) else self.default

    def default_for(self, mode: str) -> Any:
        return self.default.get(mode) if isinstance(self.default, Mapping) else self.default


def params_of(model: type[BaseModel]) -> dict[str, Param]:
    """The fields of `model` that carry a Param, in declaration order."""
    return {
        name: meta
        for name, field in model.model_fields.items()
        for meta in field.metadata
        if isinstance(meta, Param)
    }


def _sizes(b: Bounds) -> Any:
    return rules.between(b.min_size, b.max_size, multiple_of=8)


def _guidance(b: Bounds) -> Any:
    return rules.number_as_float(rules.between(0, b.max_guidance_scale, kind=float))


def _scheduler(_: Bounds) -> Any:
    aliases = {c: n for n, c in SCHEDULERS.items()}
    return rules.one_of(list(SCHEDULERS), what="scheduler", aliases=aliases)


class GenerationParams(BaseModel):
    """The generation parameters, each declared once: what a request may give (JobRequest),
    what the job stores and queues once defaults are filled (JobParams), and what the worker's
    pipeline call carries (worker/generation.py). A new parameter is a field here; the
    deployment's rules, the defaults, batching, OpenAPI and the docs follow from it."""

    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[
        str,
        Param(lambda b: rules.text(b.max_prompt_chars, drawn=True, empty_allowed=True), own=True),
    ] = Field(
        description="What to draw. Empty only for mode image: the image redrawn without a "
        "caption (what POST /v1/images/variations does)."
    )
    negative_prompt: Annotated[
        str | None, Param(lambda b: rules.text(b.max_prompt_chars), own=True)
    ] = Field(None, description="What to steer away from (CFG).")
    width: Annotated[int | None, Param(_sizes, shown=lambda b: b.default_width)] = Field(
        None, description="Multiple of 8 within the configured bounds."
    )
    height: Annotated[int | None, Param(_sizes, shown=lambda b: b.default_height)] = Field(
        None, description="Multiple of 8 within the configured bounds."
    )
    steps: Annotated[
        int | None,
        Param(lambda b: rules.between(1, b.max_steps), shown=lambda b: b.default_steps),
    ] = Field(None, description="Denoising steps.")
    guidance_scale: Annotated[
        float | None, Param(_guidance, shown=lambda b: b.default_guidance_scale)
    ] = Field(
        None,
        description="Guidance scale: classifier-free guidance, or a distilled model's "
        "guidance embedding (the model's `guidance` in GET /v1/models).",
    )
    true_cfg_scale: Annotated[float | None, Param(_guidance)] = Field(
        None,
        description="Models with true CFG (FLUX): the scale a negative prompt applies at, "
        "> 1 (a second pass per step, about twice the time).",
    )
    candidates: Annotated[
        int | None,
        Param(
            lambda b: rules.between(1, b.max_candidates),
            shown=lambda b: b.default_candidates,
            own=True,
        ),
    ] = Field(None, description="Images generated before CLIP ranking.")
    top_k: Annotated[
        int | None,
        Param(
            lambda b: rules.at_least(1, documented_maximum=b.max_candidates),
            shown=lambda b: min(b.default_top_k, b.default_candidates),
            own=True,
        ),
    ] = Field(None, description="Images kept after ranking (<= candidates).")
    temperature: Annotated[
        float | None,
        Param(
            lambda b: rules.number_as_float(
                rules.between(MIN_TEMPERATURE, MAX_TEMPERATURE, kind=float)
            )
        ),
    ] = Field(
        None,
        description="Token models (`kind` autoregressive in GET /v1/models): the sampling "
        "temperature of each image token; empty = the model's default (1.0). Refused by "
        "diffusion models.",
    )
    top_p: Annotated[
        float | None,
        Param(lambda b: rules.number_as_float(rules.between(MIN_TOP_P, 1, kind=float))),
    ] = Field(
        None,
        description="Token models: nucleus sampling, each image token drawn from the most "
        "likely tokens whose probabilities sum to top_p; empty = 1.0 (off). Refused by "
        "diffusion models.",
    )
    top_k_tokens: Annotated[int | None, Param(lambda b: rules.between(1, MAX_TOP_K_TOKENS))] = (
        Field(
            None,
            description="Token models: each image token drawn from the this many most likely "
            "(at most the model's codebook size); empty = off. Not `top_k`, the images kept. "
            "Refused by diffusion models.",
        )
    )
    seed: Annotated[int | None, Param(lambda b: rules.between(0, SEED_MAX), own=True)] = Field(
        None, description="Base seed; image i uses seed + i."
    )
    model: Annotated[
        str | None,
        Param(lambda b: rules.one_of(b.models, what="model"), shown=lambda b: b.default_model),
    ] = Field(None, description="A model name from GET /v1/models.")
    scheduler: Annotated[str | None, Param(_scheduler)] = Field(
        None,
        description="A diffusers scheduler, by short name or class name; which ones a "
        "model can use: GET /v1/models.",
    )
    mode: Annotated[Mode | None, Param(lambda b: rules.one_of(MODES, what="mode"), "text")] = Field(
        None,
        description="text (default): draw the prompt; image: redraw the input `image` "
        "(image-to-image); inpaint: repaint where the `mask` is white, keep where it is "
        "black. On a token model (`kind` autoregressive) inpaint is completion: the mask "
        "keeps whole token rows at the top and the rest is drawn after them (its notes in "
        "GET /v1/models say the row height).",
    )
    strength: Annotated[
        float | None,
        Param(
            lambda b: rules.number_as_float(rules.between(0, 1, kind=float)),
            DEFAULT_STRENGTH,
            modes=("image", "inpaint"),
        ),
    ] = Field(
        None,
        description="image and inpaint: how much noise is added to the input, 0-1, so "
        "about steps x strength denoising steps run (default: 0.6 for image, 1.0 for inpaint).",
    )
    mask_blur: Annotated[
        int | None,
        Param(lambda b: rules.between(0, MAX_MASK_BLUR), 0, modes=("inpaint",)),
    ] = Field(
        None,
        description="inpaint: Gaussian blur radius (pixels) of the mask's edge, so the "
        "repainted area blends into the kept one; 0 (default) = a hard edge.",
    )


# The generation parameters' names, and those each job of a shared pipeline call has its own
# (every other one, jobs must agree on to share a call).
GENERATION_FIELDS = tuple(GenerationParams.model_fields)
OWN_FIELDS = frozenset(name for name, p in params_of(GenerationParams).items() if p.own)


class JobRequest(GenerationParams):
    """The body of `POST /v1/jobs`. Omitted fields take the deployment's defaults.

    The bounds are the deployment's: the server validates with its own version of this model
    (server/requests.py), whose fields carry each Param's rule with its settings' bounds, and
    from which OpenAPI and the reference docs are generated too."""

    model_config = ConfigDict(extra="forbid", strict=True)

    image_id: Annotated[
        str | None, Param(lambda b: rules.text(200), modes=("image", "inpaint"))
    ] = Field(
        None,
        description="image and inpaint: an image of an earlier job of yours, by its "
        "`id` (`<job id>:<rank>`, or `<job id>:image` for a job's own input), instead of an "
        "uploaded `image` part.",
    )
    mask_id: Annotated[str | None, Param(lambda b: rules.text(200), modes=("inpaint",))] = Field(
        None,
        description="inpaint: a mask by id (`<job id>:mask`, or any image id whose "
        "image is single-channel), instead of an uploaded `mask` part.",
    )
    priority: Annotated[
        int | None, Param(lambda b: rules.between(0, PRIORITY_MAX), DEFAULT_PRIORITY)
    ] = Field(None, description="0-9, higher runs first (default 5).")
    metadata: Annotated[
        dict[str, Any] | None,
        Param(
            lambda b: rules.json_object(b.max_metadata_bytes),
            more=lambda b: f" At most {b.max_metadata_bytes} bytes as JSON.",
        ),
    ] = Field(None, description="Client JSON, stored as given.")
    webhook_url: Annotated[str | None, Param(lambda b: rules.http_url())] = Field(
        None, description="Where job events are POSTed."
    )
    webhook_events: list[WebhookEvent] | None = Field(
        None, description="Events to send (default: the terminal ones)."
    )

    # The deployment's default candidate count, for `top_k <= candidates` when omitted.
    default_candidates: ClassVar[int] = 4

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


# Fields whose default belongs to the model (its size, steps and guidance).
MODEL_DEFAULTED = ("width", "height", "steps", "guidance_scale")


def _described(name: str) -> str | None:
    return GenerationParams.model_fields[name].description


class JobParams(GenerationParams):
    """The job's generation parameters as stored and queued to the worker: the request's,
    with what it left out filled in, except a model default the API could not know yet (null
    until the worker fills it, like `seed`)."""

    # Every field is in every answer, so each is required in the response schema.
    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_serialization_defaults_required=True
    )

    candidates: int = Field(description=_described("candidates"))
    top_k: int = Field(description=_described("top_k"))
    model: str = Field("default", description=_described("model"))
    mode: Mode = Field("text", description=_described("mode"))
    defaulted: list[str] = Field(
        default_factory=list,
        description="What the client left out, filled with the model's (or deployment's) defaults.",
    )

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

    def shared(self) -> tuple[tuple[str, Any], ...]:
        """What jobs must agree on to share one pipeline call: every generation parameter
        but those each job has its own (OWN_FIELDS), and whether there is a negative prompt
        (its text is per image)."""
        values = self.model_dump(include=set(GENERATION_FIELDS) - OWN_FIELDS)
        return (*values.items(), ("negative_prompt", self.negative_prompt is not None))

    @property
    def batch_key(self) -> tuple[object, ...] | None:
        """What jobs must share to run in one pipeline call (prompts, negative prompts and
        seeds are per image); None when the job runs alone: a default is still unknown, or it
        is an edit (image, inpaint), whose own input images and strength no other job shares.
        The one rule for batching: None neither joins a batch nor takes companions."""
        if not self.complete or self.mode != "text":
            return None
        return self.shared()

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
    reused_from: str | None = Field(
        None,
        description="The earlier job of yours, identical to this one (model, parameters, "
        "seed), whose images this job copied instead of running, where the deployment reuses "
        "repeats (DAIKON_REUSE_REPEATS); null when the job ran.",
    )
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
    """The query string of `GET /v1/jobs`; `limit`'s bound is the deployment's."""

    model_config = ConfigDict(extra="forbid")

    status: JobStatus | None = Field(None, description="Only jobs in this status.")
    model: str | None = Field(None, description="Only jobs of this model.")
    created_after: Annotated[AwareDatetime, AfterValidator(_in_utc)] | None = Field(
        None, description="Only jobs created after this time (ISO 8601, with a time zone)."
    )
    limit: Annotated[int, Param(lambda b: rules.between(1, b.list_limit_max))] = Field(
        20, description="Jobs per page."
    )
    cursor: Cursor | None = Field(None, description="`next_cursor` of the previous page.")


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

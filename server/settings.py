"""Daikon's settings: read from the environment, grouped by concern, shared by every process.

Every setting is an environment variable `DAIKON_<NAME>` (its field's name in capitals),
whichever group it sits in; the service URLs also answer to their conventional unprefixed
names (`REDIS_URL`, `DATABASE_URL`), so a deployment's existing environment works. The groups
are what a reader holds in their head: `settings.api.max_long_requests` is plainly the API's.
docs/configuration.md is generated from the descriptions here (`make docs`).

For tests and embedding, `Settings(max_size=64, redis_url=...)` takes the same flat names.
Rules across fields are checked when settings load: a process refuses to start on a setting
that would misbehave later.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from daikon.capabilities import ModelOptions
from daikon.limits import LimitOverrides

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

# The embedded default: small models trained on the shapes world (`make train-models`) and
# committed under models/, so a checkout draws something recognisable with no download.
EMBEDDED_MODELS = Path(__file__).resolve().parent.parent / "models"
EMBEDDED_PIPELINE = str(EMBEDDED_MODELS / "shapes-sd")
EMBEDDED_CLIP = str(EMBEDDED_MODELS / "shapes-clip")
# DALL-E 1's recipe on the same world: a tiny Janus (VQ tokens + a decoder-only transformer),
# served beside the diffusion model under this name when no model is configured.
EMBEDDED_TOKEN_MODEL = "shapes-ar"
EMBEDDED_TOKEN_PIPELINE = str(EMBEDDED_MODELS / "shapes-ar")
# Its ranker: shapes-clip tuned to read the token model's decodings too (make train-ar).
EMBEDDED_TOKEN_CLIP = str(EMBEDDED_MODELS / "shapes-ar-clip")
# Its candidates per generate call: 64 tokens a row, so 16 rows fit any CPU comfortably.
EMBEDDED_TOKEN_LIMITS = LimitOverrides(images_per_call=16)


# The embedded shapes model's own defaults: trained and judged at 32 px, 20 DDIM steps, 7.5.
EMBEDDED_OPTIONS = ModelOptions(
    default_width=32, default_height=32, default_steps=20, default_guidance_scale=7.5
)


class ModelSpec(BaseModel):
    """A servable model: its diffusers pipeline and the CLIP that ranks its candidates."""

    pipeline: str
    clip: str = ""  # empty = the deployment's DAIKON_CLIP_MODEL
    # Replaces the device's default job limits (daikon/limits.py) for this model.
    limits: LimitOverrides = Field(default_factory=LimitOverrides)
    # Its defaults, dtype and memory options (daikon/capabilities.py), all optional.
    options: ModelOptions = Field(default_factory=ModelOptions)


class Group(BaseModel):
    """A group of settings: frozen, unknown names refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    # Environment names besides DAIKON_<FIELD>, tried first.
    aliases: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    title: ClassVar[str] = ""


class Services(Group):
    title = "Services"
    aliases = {"redis_url": ("REDIS_URL",), "database_url": ("DATABASE_URL",)}

    data_dir: Path = Field(
        Path(".daikon"),
        description="Where SQLite, local images, keys and "
        "the embedded valkey live (0700, files 0600).",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="The broker and live "
        "state (progress, cancel flags, heartbeats). Also `REDIS_URL`.",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the job records; empty = "
        "SQLite in the data directory. Also `DATABASE_URL`.",
    )
    public_url: str = Field(
        "",
        description="The base URL clients use for the API; empty = "
        "derived from each request (workers then write relative URLs).",
    )
    queue: str = Field(
        "daikon.generate",
        description="Prefix of the per-model job queues "
        "(`<queue>.<model>`); deployments sharing a Redis keep theirs apart.",
    )


class Api(Group):
    title = "API server"

    port: int = Field(
        8000, description="Port the API listens on (127.0.0.1) unless DAIKON_BIND is set."
    )
    bind: str = Field(
        "", description="gunicorn's bind address (host:port); empty = 127.0.0.1:DAIKON_PORT."
    )
    api_workers: int = Field(2, ge=1, description="gunicorn worker processes.")
    api_threads: int = Field(
        128,
        ge=2,
        description="Threads per API process; long requests (streams, waits) must stay fewer.",
    )
    request_read_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="A request's head must arrive within this of its first byte, and its "
        "body within this plus its size at DAIKON_REQUEST_BODY_MIN_BYTES_PER_SECOND; else the "
        "connection is dropped. No thread waits meanwhile.",
    )
    request_body_min_bytes_per_second: int = Field(
        32 * 1024,
        ge=1,
        description="The slowest a request body may arrive, on average (32 KiB/s: a 4 MiB "
        "upload may take about 2 minutes).",
    )
    request_buffer_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        description="What the requests still arriving at one API process may hold together; "
        "past it a new body is answered 503 `server_busy` instead of being received.",
    )
    cors_origins: str = Field(
        "", description="Comma-separated origins allowed by CORS; `*` for any; empty = CORS off."
    )
    max_long_requests: int = Field(
        100,
        ge=1,
        description="Open event streams and OpenAI-route "
        "waits per API process; below DAIKON_API_THREADS.",
    )
    max_long_requests_per_tenant: int = Field(
        25, ge=1, description="The same, per tenant and process."
    )
    event_stream_max_seconds: int = Field(
        3600,
        ge=5,
        description="An event stream closes after this; the client resumes with Last-Event-ID.",
    )
    openai_wait_seconds: float = Field(
        60.0, ge=0, description="How long POST /v1/images/generations waits for its job."
    )
    max_body_bytes: int = Field(64 * 1024, ge=1, description="Largest request body (413 past it).")
    list_limit_max: int = Field(100, ge=1, description="Most jobs per page of GET /v1/jobs.")
    idempotency_hours: int = Field(24, ge=1, description="How long an Idempotency-Key is held.")


class Security(Group):
    title = "Keys and secrets"

    admin_key: SecretStr | None = Field(
        None, description="A key with admin rights (its jobs belong to the tenant `admin`)."
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Signs the API's own image URLs; empty = a key kept in the data directory.",
    )
    encryption_keys: SecretStr | None = Field(
        None,
        description="Fernet keys, comma-separated: "
        "the first encrypts stored webhook secrets, all "
        "decrypt; empty = a key kept in the data "
        "directory.",
    )
    dashboard_session_hours: float = Field(
        12.0, gt=0, le=24 * 30, description="How long a dashboard sign-in lasts."
    )
    login_attempts_per_minute: int = Field(
        10, ge=1, description="Dashboard sign-in attempts per client address and minute."
    )


class Storage(Group):
    title = "Image storage"

    storage: Literal["local", "s3"] | None = Field(
        None, description="`local` or `s3`; empty = s3 when a bucket is set, else local."
    )
    s3_bucket: str = Field("", description="The S3 (or MinIO) bucket.")
    s3_endpoint_url: str | None = Field(None, description="An S3-compatible endpoint; empty = AWS.")
    s3_region: str = Field("us-east-1", description="The bucket's region.")
    s3_prefix: str = Field("jobs/", description="Key prefix of stored images.")
    presign_seconds: int = Field(
        3600,
        ge=60,
        le=7 * 24 * 3600,
        description="How long image URLs (presigned or signed) stay valid.",
    )
    storage_retry_seconds: float = Field(
        60.0, ge=0, description="How long an upload keeps retrying while storage is down."
    )


class Catalog(Group):
    title = "Models"

    model: str = Field(
        "",
        description="The default model's diffusers pipeline (Hub id or "
        "folder); empty = the embedded shapes model.",
    )
    clip_model: str = Field(
        "", description="The CLIP that ranks candidates; empty = the embedded shapes CLIP."
    )
    models: dict[str, ModelSpec] = Field(
        default_factory=dict,
        description="Named models, as "
        'JSON: {"sd21": {"pipeline": "...", "clip": "...", '
        '"limits": {...}, "options": {...}}}; empty = one model, `default`.',
    )
    default_model: str = Field(
        "", description="The model a job gets when it names none; empty = the first."
    )
    max_job_cost: float | None = Field(
        None,
        gt=0,
        description="The default model's most "
        "megapixel-steps per job; empty = its device's "
        "default (daikon/limits.py).",
    )
    images_per_call: int | None = Field(
        None,
        ge=1,
        description="The default model's "
        "candidates per pipeline call; empty = its device's "
        "default.",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _models_json(cls, v: object) -> object:
        return json.loads(v) if isinstance(v, str) and v.strip() else (v or {})


class Worker(Group):
    title = "Workers"

    worker_models: str = Field(
        "", description="Models this worker serves, comma-separated; empty = all."
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto = float16 on GPUs, float32 on CPUs."
    )
    torch_threads: int = Field(0, ge=0, description="torch's threads; 0 = its default.")
    model_memory_gb: float = Field(
        0,
        ge=0,
        description="Weights a worker process keeps loaded, in GB (its models' and their "
        "CLIPs'); the least recently used model is unloaded to make room. 0 = no limit.",
    )
    job_time_limit_seconds: int = Field(
        1800, ge=10, description="Hard limit of any job; below the visibility timeout."
    )
    visibility_timeout_seconds: int = Field(
        3600, ge=20, description="Redis redelivers an unacknowledged message after this."
    )
    lease_seconds: int = Field(
        60,
        ge=3,
        description="A running job's lease, renewed every "
        "third of it; a lapsed lease lets another worker take over.",
    )
    max_attempts: int = Field(
        3, ge=1, description="Workers lost on one job before it fails `worker_lost`."
    )
    stale_job_seconds: int = Field(
        4000,
        ge=30,
        description="The sweeper republishes a job stuck this long; above the visibility timeout.",
    )
    republish_after_seconds: int = Field(
        30,
        ge=1,
        description="A job committed but never confirmed published is published again after this.",
    )
    sweep_interval_seconds: float = Field(15.0, gt=0, description="How often the sweeper looks.")
    batch_jobs: bool = Field(
        True,
        description="Run compatible queued text jobs of a model (same size, steps, guidance, "
        "scheduler) in one pipeline call, up to the model's images per call; edit jobs "
        "(image, inpaint) always run alone.",
    )
    batch_wait_ms: float = Field(
        20.0,
        ge=0,
        le=1000,
        description="Under load, how long a batch that is not full waits for more company; "
        "never when no other job is queued.",
    )
    reuse_repeats: bool = Field(
        False,
        description="Answer a job identical to an earlier succeeded one of the same tenant "
        "(same model and weights, parameters after defaults, seed, candidates and top_k) with "
        "copies of that job's stored images, without running the model; `reused_from` names "
        "the earlier job. Off: every job runs.",
    )


class Webhooks(Group):
    title = "Webhooks"

    webhook_queue: str = Field(
        "daikon.webhooks",
        description="The delivery queue: its own, so a slow receiver never delays jobs.",
    )
    webhook_timeout_seconds: float = Field(
        15.0,
        gt=0,
        le=120,
        description="One attempt, all of it (connecting, sending, the answer's head and the "
        "first 4 KiB of its body), however slowly a receiver trickles bytes.",
    )
    webhook_connect_timeout_seconds: float = Field(
        3.0,
        gt=0,
        le=120,
        description="Connecting to a receiver (TCP and TLS); at most the attempt's timeout.",
    )
    webhook_first_byte_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=120,
        description="From the request sent to the answer's first byte: a receiver that "
        "accepts and never answers holds a delivery thread this long, not the whole timeout; "
        "at most the attempt's timeout.",
    )
    webhook_endpoint_concurrency: int = Field(
        2,
        ge=1,
        description="Attempts in flight to one endpoint (a tenant's scheme, host and port), "
        "across every webhook worker; more wait their turn without spending an attempt.",
    )
    webhook_tenant_concurrency: int = Field(
        4,
        ge=1,
        description="Attempts in flight for one tenant, all its endpoints together, across "
        "every webhook worker: keep it well below the delivery threads of all webhook "
        "workers, so one tenant's hanging receivers never hold every thread.",
    )
    webhook_busy_retry_seconds: float = Field(
        2.0,
        gt=0,
        le=60,
        description="A delivery whose endpoint or tenant has every slot taken comes back "
        "after this (longer, up to 30 s, the more deliveries are waiting), unsent and "
        "without spending an attempt.",
    )
    webhook_breaker_failures: int = Field(
        5,
        ge=1,
        description="Consecutive attempts to an endpoint that got no answer at all (timeouts, "
        "refused or reset connections, DNS or TLS failures) that open its circuit: its "
        "deliveries then wait, unsent and without spending attempts, until one probe may go.",
    )
    webhook_breaker_open_seconds: float = Field(
        30.0,
        gt=0,
        description="How long an endpoint's circuit first stays open; doubled each time a "
        "probe fails, up to DAIKON_WEBHOOK_BREAKER_MAX_OPEN_SECONDS. A probe answered closes it.",
    )
    webhook_breaker_max_open_seconds: float = Field(
        3600.0, gt=0, description="The longest an endpoint's circuit stays open between probes."
    )
    webhook_allow_hosts: str = Field(
        "",
        description="Receivers trusted on internal "
        "addresses: hosts, IPs, CIDRs, comma-separated. `make "
        "run` allows loopback unless set.",
    )
    webhook_allow_tenants: str = Field(
        "",
        description="The tenants (names, comma-separated) whose webhooks may use "
        "DAIKON_WEBHOOK_ALLOW_HOSTS; empty: every tenant. `make run` sets `admin`, the admin "
        "key's own tenant, unless set.",
    )
    webhook_secret_overlap_hours: float = Field(
        24.0, ge=0, le=24 * 30, description="How long a rotated secret still signs."
    )
    webhook_dispatch_seconds: float = Field(
        5.0, gt=0, description="How often due retries are looked for."
    )


class Limits(Group):
    title = "Request defaults and bounds"

    default_width: int | None = Field(
        None,
        description="Width of a job that names none, for every model without its own "
        "(`options.default_width` in the model table); empty = each model's native size (the "
        "embedded shapes model's is 32).",
    )
    default_height: int | None = Field(
        None, description="Height of a job that names none (as DAIKON_DEFAULT_WIDTH)."
    )
    default_steps: int | None = Field(
        None,
        description="Denoising steps of a job that names none; empty = each model's own (the "
        "shapes model's 20, FLUX.1-schnell's 4, ...).",
    )
    default_guidance_scale: float | None = Field(
        None,
        description="Guidance of a job that names none; empty = each model's own (7.5, 3.5 "
        "for FLUX.1-dev, none for turbo models).",
    )
    default_candidates: int = Field(4, description="Candidates of a job that names none.")
    default_top_k: int = Field(1, description="Images kept of a job that names none.")
    min_size: int = Field(32, description="Smallest side (multiple of 8).")
    max_size: int = Field(1024, description="Largest side (multiple of 8).")
    max_steps: int = Field(150, description="Most denoising steps.")
    max_guidance_scale: float = Field(30.0, description="Largest guidance scale.")
    max_candidates: int = Field(
        64,
        description="Most candidates per job (each model's cost bound still applies; a GPU "
        "deployment of a token model may raise it to DALL-E's 512).",
    )
    max_prompt_chars: int = Field(2000, description="Longest prompt or negative prompt.")
    max_metadata_bytes: int = Field(16 * 1024, ge=0, description="Largest metadata, as JSON.")
    max_input_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest uploaded image or mask of an edit job, in bytes (413 past it).",
    )
    max_input_jpeg_scans: int = Field(
        64,
        ge=1,
        description="Most scans of an uploaded JPEG (422 `too_many_scans` past it), counted "
        "before decoding: a progressive JPEG has about 10, and each scan is a pass over the "
        "whole image, so a file of thousands of tiny scans would cost minutes of CPU.",
    )
    max_input_pixels: int = Field(
        1024 * 1024,
        ge=64,
        description="Most pixels (width x height) of an edit job's image or mask (413 past "
        "it); checked from the file's header before it is decoded, so a decompression bomb is "
        "refused unread.",
    )
    tenant_max_active_jobs: int = Field(1000, ge=1, description="Queued + running jobs per tenant.")
    tenant_submits_per_minute: int = Field(
        600, ge=1, description="Submissions per tenant and minute."
    )
    tenant_storage_quota_bytes: int = Field(
        10 * 1024**3,
        ge=0,
        description="Bytes a tenant may keep stored (edit inputs and output images); 0 = no "
        "quota. A submission once the tenant is at it (or would pass it with its inputs) is "
        "refused with 403 `storage_quota_exceeded` before anything is stored; jobs accepted "
        "earlier still finish (and may end past it). An admin may set a tenant's own.",
    )

    # From the default priority (5) to the highest (9): daikon/contract.py's DEFAULT_PRIORITY and
    # PRIORITY_MAX (tests/server/test_settings.py checks they agree).
    tenant_max_priority: int = Field(
        5,
        ge=5,
        le=9,
        description="Highest priority a tenant's job may ask for, unless an admin set the "
        "tenant's own (dashboard or admin API); above it a submit is refused (422 naming "
        "`priority`). The admin tenant may use all (9). At the default 5 no tenant can jump "
        "the queue unless an admin allows it.",
    )


class Retention(Group):
    title = "Retention"

    retain_canceled_hours: float = Field(
        24.0,
        ge=0,
        description="A canceled job (its row, inputs and any images) is deleted this long after "
        "it was canceled; 0 = kept forever.",
    )
    retain_failed_hours: float = Field(
        7 * 24.0,
        ge=0,
        description="A failed job is deleted this long after it failed (time to look into it); "
        "0 = kept forever.",
    )
    retain_succeeded_hours: float = Field(
        0.0,
        ge=0,
        description="A succeeded job (its images and inputs) is deleted this long after it "
        "finished; 0 = kept forever (the default: results are never deleted unless the operator "
        "chooses a period; the storage quota bounds what a tenant can keep).",
    )
    retention_batch: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Most jobs each worker's sweeper deletes per round (canceled first, then "
        "failed, then succeeded), every DAIKON_SWEEP_INTERVAL_SECONDS.",
    )


class Local(Group):
    title = "make run"

    worker_concurrency: int = Field(
        1, ge=1, description="Pool processes of the worker `make run` starts."
    )
    webhook_concurrency: int = Field(8, ge=1, description="Delivery threads of its webhook worker.")


GROUPS: dict[str, type[Group]] = {
    "services": Services,
    "api": Api,
    "security": Security,
    "storage": Storage,
    "catalog": Catalog,
    "worker": Worker,
    "webhooks": Webhooks,
    "limits": Limits,
    "retention": Retention,
    "local": Local,
}
# Each flat name -> its group ("max_size" -> "limits").
GROUP_OF: dict[str, str] = {name: g for g, cls in GROUPS.items() for name in cls.model_fields}


def env_names(group: type[Group], name: str) -> tuple[str, ...]:
    return (*group.aliases.get(name, ()), f"DAIKON_{name.upper()}")


def environment_variables() -> set[str]:
    """Every variable settings read."""
    return {env for g in GROUPS.values() for n in g.model_fields for env in env_names(g, n)}


class FlatEnvironment(PydanticBaseSettingsSource):
    """DAIKON_<FIELD> (and the aliases) into the groups."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads everything at once

    def __call__(self) -> dict[str, Any]:
        found: dict[str, dict[str, Any]] = {}
        upper = {k.upper(): v for k, v in os.environ.items()}
        for group_name, group in GROUPS.items():
            for name in group.model_fields:
                for env in env_names(group, name):
                    if env in upper:
                        found.setdefault(group_name, {})[name] = upper[env]
                        break
        return found


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    services: Services = Services()
    api: Api = Api()
    security: Security = Security()
    storage: Storage = Storage()
    catalog: Catalog = Catalog()
    worker: Worker = Worker()
    webhooks: Webhooks = Webhooks()
    limits: Limits = Limits()
    retention: Retention = Retention()
    local: Local = Local()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, FlatEnvironment(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _flat_names(cls, data: Any) -> Any:
        """Settings(max_size=64): flat names go to their group (given ones over the
        environment's)."""
        if not isinstance(data, dict):
            return data
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key in GROUPS:
                current = out.setdefault(key, {})
                given = value.model_dump() if isinstance(value, BaseModel) else dict(value)
                out[key] = {**current, **given}
            elif key in GROUP_OF:
                out.setdefault(GROUP_OF[key], {})[key] = value
            else:
                out[key] = value  # refused below, naming it
        return out

    def evolve(self, **flat: Any) -> Settings:
        """A copy with some settings changed, by their flat names."""
        data = {g: getattr(self, g).model_dump() for g in GROUPS}
        for key, value in flat.items():
            data[GROUP_OF[key]][key] = value
        return Settings.model_validate(data)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        catalog, worker, limits = self.catalog, self.worker, self.limits
        for name in catalog.models:
            if not MODEL_NAME.match(name):
                raise ValueError(f"model name {name!r} must match {MODEL_NAME.pattern}")
        if catalog.default_model and catalog.default_model not in self.model_specs:
            raise ValueError(f"DAIKON_DEFAULT_MODEL {catalog.default_model!r} is not in the models")
        unknown = set(self.served_models) - set(self.model_specs)
        if unknown:
            raise ValueError(f"DAIKON_WORKER_MODELS names unknown models: {sorted(unknown)}")
        if worker.visibility_timeout_seconds >= worker.stale_job_seconds:
            raise ValueError(
                "DAIKON_VISIBILITY_TIMEOUT_SECONDS must be below DAIKON_STALE_JOB_SECONDS, "
                "or the sweeper republishes jobs the broker is about to redeliver"
            )
        if worker.job_time_limit_seconds >= worker.visibility_timeout_seconds:
            raise ValueError(
                "DAIKON_JOB_TIME_LIMIT_SECONDS must be below DAIKON_VISIBILITY_TIMEOUT_SECONDS, "
                "or the broker redelivers a job that is still running"
            )
        if self.api.max_long_requests >= self.api.api_threads:
            raise ValueError(
                "DAIKON_MAX_LONG_REQUESTS must be below DAIKON_API_THREADS, or event streams "
                "and waits can take every thread and starve ordinary requests"
            )
        if self.webhooks.webhook_allow_hosts:
            from server.webhooks.safety import Allowlist

            try:
                Allowlist.parse(self.webhook_allow_list)
            except ValueError as e:
                raise ValueError(f"DAIKON_WEBHOOK_ALLOW_HOSTS: {e}") from None
        hooks = self.webhooks
        if hooks.webhook_breaker_open_seconds > hooks.webhook_breaker_max_open_seconds:
            raise ValueError(
                "DAIKON_WEBHOOK_BREAKER_OPEN_SECONDS must not exceed "
                "DAIKON_WEBHOOK_BREAKER_MAX_OPEN_SECONDS"
            )
        for side in ("default_width", "default_height"):
            value = getattr(limits, side)
            if value is not None and not (limits.min_size <= value <= limits.max_size):
                raise ValueError(
                    f"DAIKON_{side.upper()} is outside DAIKON_MIN_SIZE..DAIKON_MAX_SIZE"
                )
        if not (1 <= limits.default_top_k <= limits.default_candidates <= limits.max_candidates):
            raise ValueError("need 1 <= DAIKON_DEFAULT_TOP_K <= DAIKON_DEFAULT_CANDIDATES <= max")
        return self

    # --- derived --------------------------------------------------------------------------
    @cached_property
    def data_path(self) -> Path:
        return self.services.data_dir.expanduser().resolve()

    @property
    def sqlalchemy_url(self) -> str:
        if self.services.database_url:
            return normalize_database_url(self.services.database_url)
        return f"sqlite:///{self.data_path / 'daikon.db'}"

    @property
    def storage_backend(self) -> Literal["local", "s3"]:
        if self.storage.storage:
            return self.storage.storage
        return "s3" if self.storage.s3_bucket else "local"

    @property
    def local_storage_path(self) -> Path:
        return self.data_path / "images"

    @property
    def model_specs(self) -> dict[str, ModelSpec]:
        catalog = self.catalog
        if catalog.models:
            return dict(catalog.models)
        limits = LimitOverrides(
            max_job_cost=catalog.max_job_cost, images_per_call=catalog.images_per_call
        )
        options = EMBEDDED_OPTIONS if not catalog.model else ModelOptions()
        specs = {
            "default": ModelSpec(
                pipeline=self.model_id, clip=self.clip_model_id, limits=limits, options=options
            )
        }
        if not catalog.model:  # the embedded world: its token model too
            specs[EMBEDDED_TOKEN_MODEL] = ModelSpec(
                pipeline=EMBEDDED_TOKEN_PIPELINE,
                clip=self.catalog.clip_model or EMBEDDED_TOKEN_CLIP,
                limits=EMBEDDED_TOKEN_LIMITS,
            )
        return specs

    @property
    def default_model_name(self) -> str:
        return self.catalog.default_model or next(iter(self.model_specs))

    @property
    def served_models(self) -> list[str]:
        names = [n.strip() for n in self.worker.worker_models.split(",") if n.strip()]
        return names or list(self.model_specs)

    def clip_for(self, model: str) -> str:
        return self.model_specs[model].clip or self.clip_model_id

    def model_identity(self, model: str) -> dict[str, Any]:
        """What a model's images depend on besides a job's parameters: its name, weights (the
        pipeline and its CLIP) and options. Two jobs are repeats only under the same identity."""
        spec = self.model_specs.get(model)
        if spec is None:
            return {"name": model}
        return {
            "name": model,
            "pipeline": spec.pipeline,
            "clip": self.clip_for(model),
            "options": spec.options.model_dump(mode="json"),
        }

    def queue_for(self, model: str) -> str:
        """Each model has its own queue: a worker consumes only the models it serves."""
        return f"{self.services.queue}.{model}"

    @property
    def webhook_allow_list(self) -> list[str]:
        return [h.strip() for h in self.webhooks.webhook_allow_hosts.split(",") if h.strip()]

    @property
    def webhook_allow_tenant_names(self) -> frozenset[str]:
        return frozenset(
            t.strip() for t in self.webhooks.webhook_allow_tenants.split(",") if t.strip()
        )

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.api.cors_origins.split(",") if o.strip()]

    @property
    def model_id(self) -> str:
        return self.catalog.model or EMBEDDED_PIPELINE

    @property
    def clip_model_id(self) -> str:
        return self.catalog.clip_model or EMBEDDED_CLIP

    @property
    def bind(self) -> str:
        """Where gunicorn listens."""
        return self.api.bind or f"127.0.0.1:{self.api.port}"


def normalize_database_url(url: str) -> str:
    """Accept the `postgres://` and `postgresql://` spellings and use psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url

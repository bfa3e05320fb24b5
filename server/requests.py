"""The contract's request models with this deployment's bounds, and the defaults it fills in.

The contract (daikon/contract.py) declares each field once, its rule stated as a `Param` that
takes the deployment's `Bounds`; here the settings become those Bounds, and each request model
becomes the deployment's version of it (the same fields, each with its rule applied): what
the API validates with and what GET /openapi.json and docs/api.md show. `resolve` and
`fill_defaults` fill what a request left out, the same way in the API and the worker.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar, cast

from pydantic import BaseModel, Field, create_model

from daikon.capabilities import ModelCapabilities, ModelOptions
from daikon.contract import (
    GENERATION_FIELDS,
    MODEL_DEFAULTED,
    Bounds,
    GenerationParams,
    JobParams,
    JobRequest,
    ListQuery,
    params_of,
)
from server.settings import Settings

M = TypeVar("M", bound=BaseModel)

PUBLIC_DOC = (
    "The body of `POST /v1/jobs`. Omitted fields take the model's defaults (its options in "
    "the model table, the deployment's DAIKON_DEFAULT_*, then the model's own)."
)


def bounds(settings: Settings) -> Bounds:
    """The settings' bounds, and the defaults the schema shows: the default model's (where
    the settings say them)."""
    b = settings.limits
    o = settings.model_specs[settings.default_model_name].options
    return Bounds(
        max_prompt_chars=b.max_prompt_chars,
        min_size=b.min_size,
        max_size=b.max_size,
        max_steps=b.max_steps,
        max_guidance_scale=b.max_guidance_scale,
        max_candidates=b.max_candidates,
        max_metadata_bytes=b.max_metadata_bytes,
        list_limit_max=settings.api.list_limit_max,
        models=tuple(sorted(settings.model_specs)),
        default_model=settings.default_model_name,
        default_width=o.default_width or b.default_width,
        default_height=o.default_height or b.default_height,
        default_steps=o.default_steps or b.default_steps,
        default_guidance_scale=(
            o.default_guidance_scale
            if o.default_guidance_scale is not None
            else b.default_guidance_scale
        ),
        default_candidates=b.default_candidates,
        default_top_k=b.default_top_k,
    )


@functools.cache
def with_bounds(model: type[M], limits: Bounds, doc: str | None = None) -> type[M]:
    """`model` with each Param's rule applied with `limits` (and its shown default and extra
    words in the schema): built once per model and set of bounds."""
    fields: dict[str, Any] = {}
    for name, param in params_of(model).items():
        base = model.model_fields[name]
        rule = param.rule(limits)
        nullable = base.default is None and not base.is_required()
        description = (base.description or "") + (param.more(limits) if param.more else "")
        shown = param.shown_default(limits)
        extra = {"default": shown} if shown is not None else None
        default = ... if base.is_required() else base.default
        fields[name] = (
            rule | None if nullable else rule,
            Field(default, description=description, json_schema_extra=extra),
        )
    built = create_model(  # type: ignore[call-overload]
        model.__name__,
        __base__=model,
        __module__=model.__module__,
        __doc__=doc or model.__doc__,
        **fields,
    )
    return cast(type[M], built)


def job_request(settings: Settings) -> type[JobRequest]:
    """This deployment's JobRequest: what POST /v1/jobs validates and documents."""
    limits = bounds(settings)
    model = with_bounds(JobRequest, limits, PUBLIC_DOC)
    model.default_candidates = limits.default_candidates
    return model


def list_query(settings: Settings) -> type[ListQuery]:
    """This deployment's ListQuery (its `limit` bound)."""
    return with_bounds(ListQuery, bounds(settings))


# The contract's models whose bounds are the deployment's, by the function that builds its
# version (api/openapi.py documents that version).
DEPLOYMENT_MODELS: dict[type[BaseModel], Any] = {JobRequest: job_request, ListQuery: list_query}


def for_deployment(model: type[BaseModel], settings: Settings) -> type[BaseModel]:
    """The deployment's version of a request model whose bounds come from settings (a
    contract model above, or a server-side one's `for_settings`), else the model itself: the
    spec states exactly what is validated."""
    build = DEPLOYMENT_MODELS.get(model) or getattr(model, "for_settings", None)
    return build(settings) if callable(build) else model  # type: ignore[no-any-return]


def resolve(
    req: JobRequest,
    settings: Settings,
    capabilities: ModelCapabilities | None = None,
    *,
    image_size: tuple[int, int] | None = None,
) -> JobParams:
    """The stored parameters: what the client omitted filled from, in order, the model's
    options in the model table, the deployment's DAIKON_DEFAULT_*, and the model's own
    defaults (its published capabilities). Without capabilities (no worker has loaded the
    model yet) a field may stay null: the worker fills it from the model before it runs.
    An edit's size is its input image's (`image_size`). A parameter only some modes take is
    null in the others; omitted, it takes its Param's default."""
    limits = settings.limits
    given = req.model_dump(include=set(GENERATION_FIELDS))
    declared = params_of(GenerationParams)
    mode = given["mode"] = given["mode"] or declared["mode"].default
    if image_size is not None:
        given["width"], given["height"] = image_size
    candidates = given["candidates"]
    if candidates is None:
        candidates = given["candidates"] = limits.default_candidates
    if given["top_k"] is None:
        given["top_k"] = min(limits.default_top_k, candidates)
    given["model"] = given["model"] or settings.default_model_name
    for name, param in declared.items():
        if param.modes is not None and mode not in param.modes:
            given[name] = None
        elif given[name] is None:
            given[name] = param.default_for(mode)
    defaulted = [name for name in MODEL_DEFAULTED if given[name] is None]
    params = JobParams(**given, defaulted=defaulted)
    return fill_defaults(params, settings, capabilities)


def fill_defaults(
    params: JobParams, settings: Settings, capabilities: ModelCapabilities | None
) -> JobParams:
    """Fill the fields still null (see resolve); the API and the worker use this one
    function, so they choose alike."""
    spec = settings.model_specs.get(params.model)
    options = spec.options if spec is not None else ModelOptions()
    limits = settings.limits
    update: dict[str, Any] = {}
    # A token model's size and "steps" (one pass over its tokens) are its own: the
    # deployment-wide defaults, chosen for diffusion models, do not apply to it.
    tokens = capabilities is not None and capabilities.kind == "autoregressive"
    for name in MODEL_DEFAULTED:
        if getattr(params, name) is not None:
            continue
        for value in (
            getattr(options, f"default_{name}"),
            None if tokens and name != "guidance_scale" else getattr(limits, f"default_{name}"),
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

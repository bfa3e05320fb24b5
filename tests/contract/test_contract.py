"""The job request contract: defaults, bounds and the names of the fields that are wrong."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from daikon.contract import SEED_MAX, JobRequest
from server.requests import job_request, resolve
from server.settings import Settings

SETTINGS = Settings(database_url="sqlite://", redis_url="redis://unused")


def validate(**body: Any) -> JobRequest:
    return job_request(SETTINGS).model_validate(body)


def bad_fields(**body: Any) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        validate(**body)
    return {".".join(map(str, e["loc"])): e["msg"] for e in info.value.errors()}


def test_omitted_fields_take_the_models_defaults() -> None:
    """The embedded shapes model's own (32 px, 20 steps, 7.5): no DAIKON_DEFAULT_* is set."""
    params = resolve(validate(prompt="a red circle"), SETTINGS)
    own = SETTINGS.model_specs["default"].options
    assert params.model_dump() == {
        "prompt": "a red circle",
        "negative_prompt": None,
        "width": own.default_width,
        "height": own.default_height,
        "steps": own.default_steps,
        "guidance_scale": own.default_guidance_scale,
        "candidates": SETTINGS.limits.default_candidates,
        "top_k": SETTINGS.limits.default_top_k,
        "seed": None,
        "model": "default",
        "scheduler": None,
        "true_cfg_scale": None,
        "mode": "text",
        "strength": None,
        "mask_blur": None,
        "temperature": None,
        "top_p": None,
        "top_k_tokens": None,
        "defaulted": ["width", "height", "steps", "guidance_scale"],
    }
    assert (own.default_width, own.default_steps, own.default_guidance_scale) == (32, 20, 7.5)


def test_defaults_come_from_the_model_table_then_the_deployment_then_the_model() -> None:
    from daikon.capabilities import ModelCapabilities, ModelDefaults, ModelOptions
    from server.settings import ModelSpec

    table = Settings(
        database_url="sqlite://",
        default_steps=30,
        models={
            "flux": ModelSpec(pipeline="f", options=ModelOptions(default_guidance_scale=3.5)),
        },
    )
    caps = ModelCapabilities(
        model="flux",
        family="flux",
        pipeline_class="FluxPipeline",
        size_multiple=16,
        min_size=16,
        native_width=1024,
        native_height=1024,
        schedulers=["flow_match_euler"],
        guidance="distilled",
        supports_negative_prompt=True,
        defaults=ModelDefaults(width=1024, height=1024, steps=28, guidance_scale=4.0),
    )
    request = job_request(table).model_validate({"prompt": "p", "width": 512})
    resolved = resolve(request, table, caps)
    assert (resolved.width, resolved.height, resolved.steps, resolved.guidance_scale) == (
        512,
        1024,
        30,
        3.5,
    )
    assert resolved.defaulted == ["height", "steps", "guidance_scale"]
    # Before any worker has loaded the model, what only the model knows stays open.
    cold = resolve(request, table)
    assert (cold.height, cold.steps, cold.guidance_scale, cold.complete) == (None, 30, 3.5, False)


def test_given_fields_are_kept_and_an_integer_guidance_is_a_float() -> None:
    params = resolve(
        validate(
            prompt="p",
            negative_prompt="n",
            width=128,
            height=96,
            steps=3,
            guidance_scale=5,
            candidates=6,
            top_k=6,
            seed=SEED_MAX,
        ),
        SETTINGS,
    )
    assert (params.width, params.height, params.steps) == (128, 96, 3)
    assert params.guidance_scale == 5.0 and isinstance(params.guidance_scale, float)
    assert (params.candidates, params.top_k, params.seed) == (6, 6, SEED_MAX)


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({}, "prompt", "required"),
        ({"prompt": "   "}, "prompt", "must not be empty"),
        ({"prompt": "x" * 2001}, "prompt", "at most 2000 characters"),
        ({"prompt": "p", "width": 65}, "width", "multiple of 8"),
        ({"prompt": "p", "height": 2048}, "height", "between 32 and 1024"),
        ({"prompt": "p", "width": "64"}, "width", "valid integer"),
        ({"prompt": "p", "width": True}, "width", "valid integer"),
        ({"prompt": "p", "steps": 0}, "steps", "between 1 and 150"),
        ({"prompt": "p", "guidance_scale": -1}, "guidance_scale", "between 0 and 30"),
        ({"prompt": "p", "candidates": 65}, "candidates", "between 1 and 64"),
        ({"prompt": "p", "temperature": 0}, "temperature", "between 0.01 and 5.0"),
        ({"prompt": "p", "top_p": 1.5}, "top_p", "between 0.01 and 1"),
        ({"prompt": "p", "top_k_tokens": 0}, "top_k_tokens", "between 1 and"),
        ({"prompt": "p", "candidates": 2, "top_k": 3}, "top_k", "must not exceed candidates (2)"),
        ({"prompt": "p", "top_k": 0}, "top_k", "at least 1"),
        ({"prompt": "p", "seed": -1}, "seed", "between 0 and"),
        ({"prompt": "p", "seed": SEED_MAX + 1}, "seed", "between 0 and"),
        ({"prompt": "p", "sampler": "euler"}, "sampler", "Extra inputs"),
        ({"prompt": "p", "model": "sdxl"}, "model", "unknown model 'sdxl'; available: default"),
        ({"prompt": "p", "scheduler": "magic"}, "scheduler", "unknown scheduler 'magic'"),
        ({"prompt": "p", "priority": 10}, "priority", "between 0 and 9"),
        ({"prompt": "p", "metadata": {"x": "y" * 20000}}, "metadata", "at most 16384 bytes"),
        ({"prompt": "p", "webhook_url": "ftp://h/x"}, "webhook_url", "http or https"),
        ({"prompt": "p", "webhook_url": "https://u:p@h/x"}, "webhook_url", "credentials"),
        ({"prompt": "p", "webhook_events": ["job.done"]}, "webhook_events", "unknown events"),
    ],
)
def test_bad_input_names_the_field(body: dict[str, Any], field: str, fragment: str) -> None:
    errors = bad_fields(**body)
    assert field in errors, errors
    assert fragment in errors[field]


def test_schedulers_are_accepted_by_name_or_diffusers_class() -> None:
    assert validate(prompt="p", scheduler="euler_a").scheduler == "euler_a"
    assert validate(prompt="p", scheduler="DPMSolverMultistepScheduler").scheduler == "dpmpp_2m"


def test_every_bad_field_is_reported_at_once() -> None:
    assert set(bad_fields(prompt="p", width=7, steps=999, extra=1)) == {"width", "steps", "extra"}


def test_top_k_defaults_never_exceed_small_candidate_counts() -> None:
    s = Settings(database_url="sqlite://", default_top_k=2, default_candidates=4)
    params = resolve(job_request(s).model_validate({"prompt": "p", "candidates": 1}), s)
    assert (params.candidates, params.top_k) == (1, 1)


def test_misordered_time_limits_are_refused_at_start_up() -> None:
    with pytest.raises(ValidationError, match="must be below DAIKON_VISIBILITY_TIMEOUT_SECONDS"):
        Settings(job_time_limit_seconds=3600, visibility_timeout_seconds=3600)

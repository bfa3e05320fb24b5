"""The capabilities contract on its own, as the API uses it (no torch): what is refused, with
which parameter, code and message, and what an omitted parameter becomes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from daikon.capabilities import (
    SCHEDULERS,
    ModelCapabilities,
    ModelDefaults,
    ModelOptions,
    UnsupportedParameters,
    scheduler_name,
)


def caps(**kw: Any) -> ModelCapabilities:
    base: dict[str, Any] = dict(
        model="flux-dev",
        family="flux",
        pipeline_class="FluxPipeline",
        size_multiple=16,
        min_size=16,
        max_size=2048,
        native_width=1024,
        native_height=1024,
        schedulers=["flow_match_euler"],
        guidance="distilled",
        supports_negative_prompt=True,
        supports_true_cfg=True,
        defaults=ModelDefaults(
            width=1024,
            height=1024,
            steps=28,
            guidance_scale=3.5,
            true_cfg_scale=4.0,
            scheduler="flow_match_euler",
        ),
    )
    return ModelCapabilities(**{**base, **kw})


def params(v: list[Any]) -> list[str]:
    return [x.param for x in v]


def test_an_empty_request_takes_the_defaults_and_passes() -> None:
    c = caps()
    assert c.check({}) == []
    assert c.resolve({}) == {
        "width": 1024,
        "height": 1024,
        "steps": 28,
        "guidance_scale": 3.5,
        "true_cfg_scale": None,  # true CFG only with a negative prompt
        "scheduler": "flow_match_euler",
        "negative_prompt": None,
    }
    assert c.resolve({"negative_prompt": "blur"})["true_cfg_scale"] == 4.0


def test_each_refusal_names_the_parameter_and_the_model() -> None:
    c = caps()
    (width,) = c.check({"width": 72})
    assert width.param == "width" and width.code == "unsupported_parameter"
    assert width.message == (
        "width: 72 is not a multiple of 16 for model 'flux-dev' (flux, FluxPipeline) "
        "(nearest: 64 or 80)"
    )
    (height,) = c.check({"height": 2064})
    assert height.message.startswith("height: 2064 is outside 16..2048 for model 'flux-dev'")
    (scheduler,) = c.check({"scheduler": "ddim"})
    assert scheduler.code == "unsupported_scheduler"
    assert "'ddim' cannot run model 'flux-dev'" in scheduler.message
    assert "it can use: flow_match_euler" in scheduler.message
    with pytest.raises(UnsupportedParameters) as refused:
        c.require({"width": 72, "scheduler": "ddim"})
    assert params(refused.value.violations) == ["width", "scheduler"]
    assert refused.value.code == "unsupported_parameter"


def test_guidance_and_negative_prompts_follow_the_guidance_kind() -> None:
    free = caps(guidance="none", supports_negative_prompt=False, supports_true_cfg=False)
    assert params(free.check({"guidance_scale": 3.5})) == ["guidance_scale"]
    assert free.check({"guidance_scale": 0}) == []
    (negative,) = free.check({"negative_prompt": "blur"})
    assert "runs without guidance" in negative.message
    assert free.check({"negative_prompt": ""}) == []  # empty is no negative prompt
    assert params(free.check({"true_cfg_scale": 2.0})) == ["true_cfg_scale"]

    cfg = caps(
        guidance="cfg",
        supports_true_cfg=False,
        negative_prompt_needs_guidance=True,
        defaults=ModelDefaults(width=1024, height=1024, steps=30, guidance_scale=7.5),
    )
    assert cfg.check({"negative_prompt": "blur"}) == []
    (off,) = cfg.check({"negative_prompt": "blur", "guidance_scale": 1.0})
    assert off.param == "negative_prompt" and "guidance_scale > 1" in off.message

    flux = caps()
    assert params(flux.check({"negative_prompt": "blur", "true_cfg_scale": 1.0})) == [
        "true_cfg_scale"
    ]
    assert params(flux.check({"true_cfg_scale": 3.0})) == ["true_cfg_scale"]
    assert flux.check({"negative_prompt": "blur", "true_cfg_scale": 3.0}) == []


def test_steps_bounds_and_objects_with_attributes() -> None:
    class Job:
        width = None
        height = None
        steps = 5
        guidance_scale = None
        scheduler = None
        negative_prompt = None

    turbo = caps(max_steps=4)
    (steps,) = turbo.check(Job())
    assert steps.param == "steps" and "outside 1..4" in steps.message


def test_capabilities_travel_as_json_and_ignore_fields_they_do_not_know() -> None:
    c = caps(notes=["guidance_scale is distilled guidance"])
    data = c.model_dump(mode="json")
    assert ModelCapabilities.model_validate(data) == c
    assert ModelCapabilities.model_validate({**data, "added_later": 1}) == c


def test_model_options_refuse_unknown_schedulers_and_fields() -> None:
    assert ModelOptions().model_dump(exclude_defaults=True) == {}
    with pytest.raises(ValidationError, match="not a known scheduler"):
        ModelOptions(default_scheduler="warp")
    with pytest.raises(ValidationError):
        ModelOptions(steps=4)  # type: ignore[call-arg]  # the field is default_steps
    assert ModelOptions(default_scheduler="EulerDiscreteScheduler").default_scheduler


def test_scheduler_names_cover_flow_matching_and_accept_class_names() -> None:
    assert {"lcm", "flow_match_euler", "flow_match_heun"} <= set(SCHEDULERS)
    assert scheduler_name("FlowMatchEulerDiscreteScheduler") == "flow_match_euler"
    assert scheduler_name("euler") == "euler"
    assert scheduler_name("warp") is None

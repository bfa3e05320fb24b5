"""One worker serving several families at once, over HTTP: each model's capabilities are
published when it loads, a parameter a model cannot honour is a 422 naming it and the model,
omitted parameters take the model's own defaults, and every family's job runs to PNGs of
exactly the asked size."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from PIL import Image

from server.settings import ModelSpec
from tests.families import FAMILIES, FamilyBuilds
from tests.stack import Stack, running_stack, settings_for

pytestmark = pytest.mark.e2e
SERVED = ("sd1", "flux-dev", "kandinsky22", "sdxl-turbo")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str, tiny_models) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("families-e2e")
    builds = FamilyBuilds(tmp / "builds")
    models = {
        name: ModelSpec(
            pipeline=str(builds.path(name)),
            # A few steps, so the tiny models run quickly; the turbo entry is what a
            # deployment's table says for such a checkpoint.
            options=FAMILIES[name].options.model_copy(update={"default_steps": 2})
            if name != "sdxl-turbo"
            else FAMILIES[name].options,
        )
        for name in SERVED
    }
    settings = settings_for(
        tmp,
        redis_url,
        tiny_models,
        models=models,
        default_model="sd1",
        worker_models=",".join(SERVED),
    )
    with running_stack(settings, tmp) as s:
        deadline = time.monotonic() + 240
        while True:  # every model loaded and published by the worker
            listed = s.http.get(s.url("/v1/models"), timeout=10).json()["models"]
            if all(m["capabilities"] for m in listed) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        yield s


def submit(stack: Stack, **body: Any) -> requests.Response:
    return stack.http.post(
        stack.url("/v1/jobs"), json={"prompt": "a red circle", **body}, timeout=10
    )


def png_size(url: str) -> tuple[int, int]:
    r = requests.get(url, timeout=10)
    assert r.status_code == 200
    return Image.open(io.BytesIO(r.content)).size


def test_models_show_what_they_can_do(stack: Stack) -> None:
    listed = {
        m["name"]: m for m in stack.http.get(stack.url("/v1/models"), timeout=10).json()["models"]
    }
    caps = {name: m["capabilities"] for name, m in listed.items()}
    assert {n: c["pipeline_class"] for n, c in caps.items()} == {
        n: FAMILIES[n].pipeline_class for n in SERVED
    }
    assert {n: c["size_multiple"] for n, c in caps.items()} == {
        "sd1": 8,
        "flux-dev": 16,
        "kandinsky22": 64,
        "sdxl-turbo": 8,
    }
    assert caps["flux-dev"]["guidance"] == "distilled" and caps["flux-dev"]["supports_true_cfg"]
    assert caps["sdxl-turbo"]["guidance"] == "none"
    assert "flow_match_euler" in caps["flux-dev"]["schedulers"]
    assert "flow_match_euler" not in caps["sd1"]["schedulers"]
    # The OpenAPI description says it too.
    spec = stack.http.get(stack.url("/openapi.json"), timeout=10).json()
    assert "`flux-dev`: flux (FluxPipeline); sides a multiple of 16" in spec["info"]["description"]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (
            {"model": "flux-dev", "width": 72, "height": 64},
            "width",
            "72 is not a multiple of 16 for model 'flux-dev'",
        ),
        (
            {"model": "kandinsky22", "width": 96, "height": 64},
            "width",
            "96 is not a multiple of 64 for model 'kandinsky22'",
        ),
        (
            {"model": "flux-dev", "scheduler": "euler"},
            "scheduler",
            "'euler' cannot run model 'flux-dev'",
        ),
        ({"model": "sdxl-turbo", "guidance_scale": 7.5}, "guidance_scale", "runs without guidance"),
        (
            {"model": "sdxl-turbo", "negative_prompt": "blue"},
            "negative_prompt",
            "cannot use a negative prompt",
        ),
        (
            {"model": "sd1", "negative_prompt": "blue", "guidance_scale": 1.0},
            "negative_prompt",
            "use guidance_scale > 1",
        ),
        ({"model": "sd1", "true_cfg_scale": 4.0}, "true_cfg_scale", "has no true CFG"),
    ],
)
def test_a_parameter_a_model_cannot_honour_is_refused_at_submit_naming_it_and_the_model(
    stack: Stack, body: dict[str, Any], param: str, fragment: str
) -> None:
    before = len(stack.http.get(stack.url("/v1/jobs?limit=100"), timeout=10).json()["jobs"])
    r = submit(stack, **body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == param and fragment in error["message"]
    assert error["code"] in ("unsupported_parameter", "unsupported_scheduler")
    after = len(stack.http.get(stack.url("/v1/jobs?limit=100"), timeout=10).json()["jobs"])
    assert after == before


@pytest.mark.parametrize(
    ("model", "body"),
    [
        ("sd1", {"width": 48, "height": 32, "negative_prompt": "blue"}),
        ("flux-dev", {"width": 64, "height": 32, "negative_prompt": "blue"}),  # true CFG
        ("kandinsky22", {"width": 128, "height": 64, "negative_prompt": "blue"}),
        ("sdxl-turbo", {"width": 48, "height": 32}),
    ],
)
def test_every_family_runs_to_pngs_of_the_asked_size(
    stack: Stack, model: str, body: dict[str, Any]
) -> None:
    r = submit(stack, model=model, candidates=2, top_k=2, seed=3, **body)
    assert r.status_code == 202, r.text
    job = stack.wait(r.json()["id"], timeout=240)
    assert job["status"] == "succeeded", job["error"]
    assert [png_size(i["url"]) for i in job["images"]] == [(body["width"], body["height"])] * 2


def test_omitted_parameters_take_the_models_own_defaults(stack: Stack) -> None:
    caps = {
        m["name"]: m["capabilities"]
        for m in stack.http.get(stack.url("/v1/models"), timeout=10).json()["models"]
    }
    r = submit(stack, model="sdxl-turbo", candidates=1, top_k=1)
    assert r.status_code == 202, r.text
    params = r.json()["params"]
    turbo = caps["sdxl-turbo"]["defaults"]
    assert (params["width"], params["height"], params["guidance_scale"]) == (
        turbo["width"],
        turbo["height"],
        0.0,
    )
    assert params["steps"] == 1  # the model table's default for it
    assert set(params["defaulted"]) == {"width", "height", "steps", "guidance_scale"}
    job = stack.wait(r.json()["id"], timeout=240)
    assert job["status"] == "succeeded", job["error"]
    assert png_size(job["images"][0]["url"]) == (turbo["width"], turbo["height"])

"""A token model served beside a diffusion model through the whole stack: a real worker
process, the API over HTTP, a tiny random Janus saved to a folder. Many candidates in chunks,
the kept top_k stored, seeds that reproduce, GET /v1/models, refusals at submit, and completion
(mode inpaint) from an uploaded image's top rows."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from daikon.capabilities import ModelOptions
from daikon.limits import LimitOverrides
from server.settings import ModelSpec
from tests.stack import Stack, running_stack, settings_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, tiny_models, tiny_janus) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("tokens")
    sd, clip = (str(p) for p in tiny_models)
    models = {
        "default": ModelSpec(pipeline=sd, clip=clip, options=ModelOptions(default_steps=2)),
        "tokens": ModelSpec(
            pipeline=str(tiny_janus), clip=clip, limits=LimitOverrides(images_per_call=4)
        ),
    }
    settings = settings_for(tmp, redis_url, tiny_models, models=models)
    with running_stack(settings, tmp) as running:
        yield running


def pixels(url: str) -> bytes:
    r = requests.get(url, timeout=10)
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).tobytes()


def test_a_token_job_draws_many_candidates_in_chunks_and_keeps_the_best_top_k(
    stack: Stack,
) -> None:
    job = stack.wait(
        stack.submit(prompt="a red circle", model="tokens", candidates=10, top_k=2, seed=40)["id"]
    )
    assert job["status"] == "succeeded", job
    images = job["images"]
    assert [i["rank"] for i in images] == [1, 2]
    assert all((i["width"], i["height"]) == (32, 32) for i in images)
    assert images[0]["clip_score"] >= images[1]["clip_score"]
    assert all(40 <= i["seed"] < 50 for i in images)
    assert job["params"]["steps"] == 1 and job["params"]["guidance_scale"] == 5.0
    # The best candidate, drawn again alone from its seed, is the same image.
    best = images[0]
    alone = stack.wait(
        stack.submit(prompt="a red circle", model="tokens", candidates=1, seed=best["seed"])["id"]
    )
    assert pixels(alone["images"][0]["url"]) == pixels(best["url"])


def test_models_show_the_token_model_and_submits_refuse_what_it_cannot_do(
    stack: Stack,
) -> None:
    stack.wait(stack.submit(prompt="a red circle", model="tokens", candidates=1)["id"])
    stack.wait(stack.submit(prompt="a red circle", candidates=1)["id"])  # both published
    models = {
        m["name"]: m for m in stack.http.get(stack.url("/v1/models"), timeout=10).json()["models"]
    }
    caps = models["tokens"]["capabilities"]
    assert (caps["kind"], caps["family"], caps["image_tokens"]) == ("autoregressive", "janus", 16)
    assert (caps["native_width"], caps["native_height"]) == (32, 32)
    assert models["default"]["capabilities"]["kind"] == "diffusion"
    refused: list[tuple[dict[str, Any], str]] = [
        ({"model": "tokens", "negative_prompt": "blue"}, "negative_prompt"),
        ({"model": "tokens", "width": 64}, "width"),
        ({"model": "tokens", "steps": 30}, "steps"),
        ({"model": "tokens", "scheduler": "ddim"}, "scheduler"),
        ({"temperature": 0.7}, "temperature"),
    ]
    for body, param in refused:
        r = stack.http.post(stack.url("/v1/jobs"), json={"prompt": "p", **body}, timeout=10)
        assert r.status_code == 422, (body, r.text)
        assert f"{param}:" in r.text and "model '" in r.text, r.text


def test_sampling_parameters_are_stored_and_reproduce(stack: Stack) -> None:
    body = dict(prompt="a blue square", model="tokens", candidates=3, top_k=3, seed=7)
    sampled = dict(temperature=0.5, top_p=0.9, top_k_tokens=8)
    first = stack.wait(stack.submit(**body, **sampled)["id"])
    again = stack.wait(stack.submit(**body, **sampled)["id"])
    plain = stack.wait(stack.submit(**body)["id"])
    assert first["params"]["temperature"] == 0.5 and first["params"]["top_k_tokens"] == 8
    by_seed = {i["seed"]: pixels(i["url"]) for i in first["images"]}
    assert by_seed == {i["seed"]: pixels(i["url"]) for i in again["images"]}
    assert by_seed != {i["seed"]: pixels(i["url"]) for i in plain["images"]}


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def post_edit(stack: Stack, body: dict[str, Any], **files: Image.Image) -> requests.Response:
    parts = {role: (f"{role}.png", png(image), "image/png") for role, image in files.items()}
    return stack.http.post(
        stack.url("/v1/jobs"), data={"request": json.dumps(body)}, files=parts, timeout=10
    )


def top_band(kept: int) -> Image.Image:
    """Black (keep) on the top `kept` rows of the 32 px image, white (draw) below."""
    mask = Image.new("L", (32, 32), 255)
    mask.paste(0, (0, 0, 32, kept))
    return mask


def test_a_token_model_completes_an_image_from_its_top_rows_and_refuses_other_masks_at_submit(
    stack: Stack,
) -> None:
    stack.wait(stack.submit(prompt="a red circle", model="tokens", candidates=1)["id"])  # published
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB")
    body = {"prompt": "a red circle", "model": "tokens", "mode": "inpaint", "seed": 21}
    # The 4x4 token grid's rows are 8 px: a band ending at 12 px keeps part of a row.
    r = post_edit(stack, body, image=image, mask=top_band(12))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("mask", "unsupported_parameter")
    assert "ends at 12 px" in error["message"] and "model 'tokens'" in error["message"]
    for extra, param in (({"strength": 0.5}, "strength"), ({"mask_blur": 3}, "mask_blur")):
        r = post_edit(stack, {**body, **extra}, image=image, mask=top_band(16))
        assert r.status_code == 422 and r.json()["error"]["param"] == param, r.text
    r = post_edit(stack, {**body, "mode": "image"}, image=image)
    assert r.status_code == 422 and "no noise level" in r.text, r.text

    job = stack.wait(
        post_edit(
            stack, {**body, "candidates": 3, "top_k": 3}, image=image, mask=top_band(16)
        ).json()["id"]
    )
    assert job["status"] == "succeeded", job
    assert job["params"]["strength"] == 1.0 and job["params"]["mode"] == "inpaint"
    original = np.asarray(image)
    for kept in job["images"]:
        result = np.frombuffer(pixels(kept["url"]), np.uint8).reshape(32, 32, 3)
        assert result[:16].tobytes() == original[:16].tobytes()  # the kept rows, byte for byte
        assert result[16:].tobytes() != original[16:].tobytes()
    again = stack.wait(
        post_edit(
            stack, {**body, "candidates": 3, "top_k": 3}, image=image, mask=top_band(16)
        ).json()["id"]
    )
    assert {i["seed"]: pixels(i["url"]) for i in again["images"]} == {
        i["seed"]: pixels(i["url"]) for i in job["images"]
    }

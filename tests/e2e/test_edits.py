"""Edit jobs end to end: a real worker process and the API over HTTP (SQLite, local store, the
tiny random-weight models), driven with requests as curl would and with the official `openai`
client: inpaint and image jobs succeed with images of their input's size, the unmasked pixels
come back byte-identical, seeds reproduce, and the one loaded model serves every mode."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest
import requests
from PIL import Image

from tests.stack import Stack, running_stack, settings_for

pytestmark = pytest.mark.e2e
ADMIN_KEY = "dk_test_edits_admin"
SIZE = (40, 32)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, tiny_models) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("edits")
    settings = settings_for(tmp, redis_url, tiny_models, admin_key=ADMIN_KEY, default_steps=4)
    with running_stack(settings, tmp) as running:
        yield running


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=ADMIN_KEY, max_retries=0)


def picture() -> Image.Image:
    """A scene with distinct pixel values everywhere, so any change to a kept pixel shows."""
    rng = np.random.default_rng(5)
    return Image.fromarray(rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8), "RGB")


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def lower_half_mask() -> Image.Image:
    mask = Image.new("L", SIZE, 0)
    mask.paste(255, (0, SIZE[1] // 2, SIZE[0], SIZE[1]))
    return mask


def fetch(url: str) -> Image.Image:
    r = requests.get(url, timeout=10)  # signed: no key
    assert r.status_code == 200, r.text
    return Image.open(io.BytesIO(r.content)).convert("RGB")


def submit_multipart(stack: Stack, body: dict[str, Any], **files: Image.Image) -> dict[str, Any]:
    parts = {role: (f"{role}.png", png_bytes(img), "image/png") for role, img in files.items()}
    r = stack.http.post(
        stack.url("/v1/jobs"), data={"request": json.dumps(body)}, files=parts, timeout=10
    )
    assert r.status_code == 202, r.text
    return dict(r.json())


def kept(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask) == 0


def test_an_inpaint_job_repaints_only_the_masked_part_and_reproduces_from_its_seed(
    stack: Stack,
) -> None:
    image, mask = picture(), lower_half_mask()
    body = {"prompt": "a red circle", "mode": "inpaint", "candidates": 3, "top_k": 2, "seed": 11}
    job = stack.wait(submit_multipart(stack, body, image=image, mask=mask)["id"])
    assert job["status"] == "succeeded", job
    assert job["params"]["strength"] == 1.0
    assert (job["params"]["width"], job["params"]["height"]) == SIZE
    assert {img["seed"] for img in job["images"]} <= {11, 12, 13}  # seed + candidate index
    original = np.asarray(image)
    for img in job["images"]:
        result = np.asarray(fetch(img["url"]))
        assert result.shape == original.shape
        assert (result[kept(mask)] == original[kept(mask)]).all()  # byte-identical where kept
        assert (result[~kept(mask)] != original[~kept(mask)]).any()  # repainted where white
    # The inputs are shown, signed like the outputs.
    inputs = {i["role"]: i for i in job["inputs"]}
    assert np.array_equal(np.asarray(fetch(inputs["image"]["url"])), original)
    # The same request draws the same images.
    again = stack.wait(submit_multipart(stack, body, image=image, mask=mask)["id"])
    assert [fetch(i["url"]).tobytes() for i in again["images"]] == [
        fetch(i["url"]).tobytes() for i in job["images"]
    ]


def test_an_image_job_and_an_inpaint_job_on_an_earlier_jobs_image(stack: Stack) -> None:
    first = stack.wait(
        stack.submit(
            prompt="a blue square", width=SIZE[0], height=SIZE[1], candidates=2, top_k=1, seed=3
        )["id"]
    )
    assert first["status"] == "succeeded"
    made = first["images"][0]
    redraw = stack.wait(
        stack.submit(
            prompt="a blue square",
            mode="image",
            strength=0.5,
            image_id=made["id"],
            candidates=2,
            top_k=1,
            seed=4,
        )["id"]
    )
    assert redraw["status"] == "succeeded", redraw
    assert fetch(redraw["images"][0]["url"]).size == SIZE
    assert redraw["metrics"]["inference_seconds"] > 0
    mask = lower_half_mask()
    edited = stack.wait(
        submit_multipart(
            stack,
            {"prompt": "a yellow triangle", "mode": "inpaint", "image_id": made["id"], "seed": 5},
            mask=mask,
        )["id"]
    )
    assert edited["status"] == "succeeded", edited
    before, after = np.asarray(fetch(made["url"])), np.asarray(fetch(edited["images"][0]["url"]))
    assert (after[kept(mask)] == before[kept(mask)]).all()


def test_the_loaded_model_publishes_its_modes(stack: Stack) -> None:
    models = stack.http.get(stack.url("/v1/models"), timeout=10).json()["models"]
    (default,) = [m for m in models if m["name"] == "default"]
    assert default["capabilities"]["modes"] == ["text", "image", "inpaint"]


# --- the official client ------------------------------------------------------------------


def openai_mask() -> bytes:
    """OpenAI's convention: fully transparent where to edit (the lower half)."""
    rgba = Image.new("RGBA", SIZE, (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, SIZE[1] // 2, SIZE[0], SIZE[1]))
    return png_bytes(rgba)


def decoded(b64: str | None) -> np.ndarray:
    assert b64 is not None
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_images_edit_with_a_mask_keeps_the_opaque_pixels(
    stack: Stack, client: openai.OpenAI
) -> None:
    image = picture()
    raw = client.images.with_raw_response.edit(
        image=("scene.png", png_bytes(image), "image/png"),
        mask=("mask.png", openai_mask(), "image/png"),
        prompt="a green triangle",
        n=2,
        response_format="b64_json",
        user="u-7",
    )
    resp = raw.parse()
    assert resp.data is not None and len(resp.data) == 2
    keep = kept(lower_half_mask())
    for item in resp.data:
        result = decoded(item.b64_json)
        assert result.shape == (SIZE[1], SIZE[0], 3)
        assert (result[keep] == np.asarray(image)[keep]).all()
    job = stack.get(raw.headers["Location"].removeprefix("/v1/jobs/"))
    assert job["params"]["mode"] == "inpaint" and job["metadata"] == {"openai_user": "u-7"}


def test_images_edit_without_a_mask_redraws_the_whole_image(
    stack: Stack, client: openai.OpenAI
) -> None:
    raw = client.images.with_raw_response.edit(
        image=("scene.png", png_bytes(picture()), "image/png"), prompt="a red square", size="40x32"
    )
    resp = raw.parse()
    assert resp.data is not None and resp.data[0].url is not None
    assert fetch(resp.data[0].url).size == SIZE
    job = stack.get(raw.headers["Location"].removeprefix("/v1/jobs/"))
    assert (job["params"]["mode"], job["params"]["strength"]) == ("image", 0.6)


def test_images_create_variation_returns_n_images_of_the_images_size(
    stack: Stack, client: openai.OpenAI
) -> None:
    raw = client.images.with_raw_response.create_variation(
        image=("scene.png", png_bytes(picture()), "image/png"), n=2, response_format="b64_json"
    )
    resp = raw.parse()
    assert resp.data is not None and len(resp.data) == 2
    assert all(decoded(d.b64_json).shape == (SIZE[1], SIZE[0], 3) for d in resp.data)
    job = stack.get(raw.headers["Location"].removeprefix("/v1/jobs/"))
    assert job["params"]["prompt"] == "" and job["params"]["candidates"] == 2


def test_the_clients_errors_for_a_bad_size_a_bad_file_and_a_missing_image(
    stack: Stack, client: openai.OpenAI
) -> None:
    scene = ("scene.png", png_bytes(picture()), "image/png")
    with pytest.raises(openai.BadRequestError) as bad_size:
        client.images.edit(image=scene, prompt="a red circle", size="64x64")
    assert bad_size.value.status_code == 400
    assert bad_size.value.body["param"] == "size"  # type: ignore[index]
    assert "differs from the image's 40x32" in bad_size.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as nonsense:
        client.images.edit(image=scene, prompt="a red circle", size="huge")  # type: ignore[arg-type]
    assert nonsense.value.body["param"] == "size"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as no_alpha:
        client.images.edit(image=scene, mask=scene, prompt="a red circle")
    assert no_alpha.value.body["param"] == "mask"  # type: ignore[index]
    with pytest.raises(openai.APIStatusError) as gif:
        client.images.edit(image=("a.gif", b"GIF89a" + b"\x00" * 30, "image/gif"), prompt="x")
    assert gif.value.status_code == 415
    # The client itself refuses a call without an image; sent anyway, the server names it.
    with pytest.raises(TypeError):
        client.images.edit(prompt="a red circle")  # type: ignore[call-arg]
    r = stack.http.post(
        stack.url("/v1/images/edits"),
        data={"prompt": "a red circle"},
        files={"unused": ("x.txt", b"x")},
        timeout=10,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "unused"
    r = stack.http.post(
        stack.url("/v1/images/edits"), files={"prompt": (None, "a red circle")}, timeout=10
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {
        "type": "invalid_request_error",
        "code": "invalid_request",
        "message": "image: is required (a file part)",
        "param": "image",
    }
    with pytest.raises(openai.BadRequestError) as variation_size:
        client.images.create_variation(image=scene, size="256x256")
    assert variation_size.value.body["param"] == "size"  # type: ignore[index]

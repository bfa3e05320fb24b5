"""Edit jobs at the API, in-process on the real SQLite and Redis (no worker): what a client
may send as an image and a mask, and that every bad input answers in the one error shape and
leaves nothing behind: no job row, no queue message, no stored object."""

from __future__ import annotations

import io
import json
import struct
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import func, select

from daikon.capabilities import ModelCapabilities, ModelDefaults
from daikon.limits import resolve
from db.models import Job
from db.session import session_scope
from server import served_models
from server.served_models import ServedModel
from tests.conftest import authed

BASE = {
    "prompt": "a red circle above a yellow triangle",
    "steps": 4,
    "candidates": 2,
    "top_k": 1,
    "seed": 3,
}


@pytest.fixture
def app(make_app) -> Flask:  # type: ignore[no-untyped-def]
    return make_app(max_input_pixels=64 * 64, max_input_bytes=20_000)


def png(size: tuple[int, int] = (32, 32), mode: str = "RGB", colour: Any = (255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    return buf.getvalue()


def encoded(fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (32, 32), 200 if mode == "L" else (0, 0, 255)).save(buf, format=fmt)
    return buf.getvalue()


def mask_png(size: tuple[int, int] = (32, 32)) -> bytes:
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, size[1] // 2, size[0], size[1]))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height over a few bytes of compressed zeros: what a
    decompression bomb looks like (decoding it would allocate width x height pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    rows = zlib.compress(b"\x00" * (width + 1) * 64, 9)  # only a few rows: enough to open
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def post(client: FlaskClient, body: dict[str, Any], **files: bytes) -> Any:
    data: dict[str, Any] = {"request": json.dumps(body)}
    for role, content in files.items():
        data[role] = (io.BytesIO(content), f"{role}.png")
    return client.post("/v1/jobs", data=data, content_type="multipart/form-data")


def job_count(app: Flask) -> int:
    with session_scope(app.extensions["daikon"].sessions) as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def stored_objects(app: Flask) -> list[Path]:
    root = app.extensions["daikon"].settings.local_storage_path
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def assert_nothing_left(app: Flask, redis_client: redis.Redis, queue: str) -> None:
    assert job_count(app) == 0
    assert not list(redis_client.scan_iter(f"{queue}*"))
    assert stored_objects(app) == []


def publish(app: Flask, modes: list[str]) -> None:
    """What a worker publishes once it loaded the model (its capabilities, its modes)."""
    svc = app.extensions["daikon"]
    caps = ModelCapabilities(
        model="default",
        family="stable-diffusion",
        pipeline_class="StableDiffusionPipeline",
        size_multiple=8,
        min_size=8,
        native_width=32,
        native_height=32,
        schedulers=["ddim"],
        guidance="cfg",
        supports_negative_prompt=True,
        modes=modes,  # type: ignore[arg-type]
        defaults=ModelDefaults(width=32, height=32, steps=20, guidance_scale=7.5),
    )
    served_models.publish(
        svc.live.redis,
        svc.settings,
        ServedModel(
            model="default",
            device="cpu",
            limits=resolve("cpu"),
            capabilities=caps,
            loaded_at=datetime.now(UTC),
        ),
    )
    svc.served_models._cache.clear()


# --- what works -----------------------------------------------------------------------------


def test_an_inpaint_job_stores_its_inputs_beside_its_outputs_and_shows_them(
    app: Flask, client: FlaskClient
) -> None:
    image = png((40, 32))
    r = post(
        client, {**BASE, "mode": "inpaint", "mask_blur": 2}, image=image, mask=mask_png((40, 32))
    )
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    assert job["params"]["mode"] == "inpaint"
    assert (job["params"]["width"], job["params"]["height"]) == (40, 32)  # the image's size
    assert (job["params"]["strength"], job["params"]["mask_blur"]) == (1.0, 2)
    roles = {i["role"]: i for i in job["inputs"]}
    assert set(roles) == {"image", "mask"}
    assert roles["image"]["id"] == f"{job['id']}:image"
    assert (roles["mask"]["width"], roles["mask"]["height"]) == (40, 32)
    # Signed URLs, like the outputs: the stored image is the upload's pixels.
    fetched = app.test_client().get(roles["image"]["url"].removeprefix("http://localhost"))
    assert fetched.status_code == 200 and fetched.content_type == "image/png"
    assert Image.open(io.BytesIO(fetched.data)).tobytes() == Image.open(io.BytesIO(image)).tobytes()
    unsigned = app.test_client().get(f"/v1/jobs/{job['id']}/inputs/image")
    assert unsigned.status_code == 404
    stored = sorted(p.name for p in stored_objects(app))
    assert stored == ["input-image.png", "input-mask.png"]
    assert {p.parent.name for p in stored_objects(app)} == {job["id"]}


def test_an_image_job_referencing_an_earlier_jobs_image_copies_it(
    app: Flask, client: FlaskClient
) -> None:
    first = post(client, {**BASE, "mode": "image", "strength": 0.5}, image=png()).get_json()
    assert first["params"]["strength"] == 0.5
    again = client.post(
        "/v1/jobs", json={**BASE, "mode": "image", "image_id": f"{first['id']}:image"}
    )
    assert again.status_code == 202, again.get_json()
    second = again.get_json()
    assert [i["role"] for i in second["inputs"]] == ["image"]
    assert len(stored_objects(app)) == 2  # each job keeps its own copy
    # Inpainting with the first job's image and a mask uploaded now.
    third = post(
        client, {**BASE, "mode": "inpaint", "image_id": f"{first['id']}:image"}, mask=mask_png()
    )
    assert third.status_code == 202, third.get_json()


def test_another_tenants_image_is_not_found_like_any_of_its_resources(
    app: Flask, client: FlaskClient, redis_client: redis.Redis, queue_name: str
) -> None:
    tenant = client.post("/v1/admin/tenants", json={"name": "other"}).get_json()["id"]
    key = client.post(f"/v1/admin/tenants/{tenant}/keys", json={"name": "k"}).get_json()["key"]
    theirs = post(authed(app, key), {**BASE, "mode": "image"}, image=png()).get_json()
    before = len(stored_objects(app))
    for ref in (f"{theirs['id']}:image", f"{theirs['id']}:1", "no-such-job:image"):
        r = client.post("/v1/jobs", json={**BASE, "mode": "image", "image_id": ref})
        assert r.status_code == 404, r.get_json()
        assert r.get_json()["error"] == {
            "type": "not_found_error",
            "code": "not_found",
            "param": "image_id",
            "message": f"image_id: image {ref!r} not found",
        }
    assert job_count(app) == 1 and len(stored_objects(app)) == before
    # The owner may use it.
    mine = authed(app, key).post(
        "/v1/jobs", json={**BASE, "mode": "image", "image_id": f"{theirs['id']}:image"}
    )
    assert mine.status_code == 202, mine.get_json()


def test_a_model_without_the_pipeline_refuses_the_mode_naming_it_and_the_model(
    app: Flask, client: FlaskClient, redis_client: redis.Redis, queue_name: str
) -> None:
    publish(app, ["text", "image"])
    r = post(client, {**BASE, "mode": "inpaint"}, image=png(), mask=mask_png())
    assert r.status_code == 422
    error = r.get_json()["error"]
    assert (error["param"], error["code"]) == ("mode", "unsupported_parameter")
    assert error["message"] == (
        "mode: model 'default' (stable-diffusion, StableDiffusionPipeline) cannot run mode "
        "'inpaint' (inpainting): diffusers has no such pipeline for it here; its modes: text, "
        "image"
    )
    assert_nothing_left(app, redis_client, queue_name)
    assert post(client, {**BASE, "mode": "image"}, image=png()).status_code == 202


def test_strength_times_steps_must_leave_a_step_once_the_model_is_known(
    app: Flask, client: FlaskClient, redis_client: redis.Redis, queue_name: str
) -> None:
    publish(app, ["text", "image", "inpaint"])
    r = post(client, {**BASE, "mode": "image", "strength": 0.1}, image=png())
    assert r.status_code == 422 and r.get_json()["error"]["param"] == "strength"
    assert "0.1 x 4 steps leaves no denoising step" in r.get_json()["error"]["message"]
    assert_nothing_left(app, redis_client, queue_name)


def test_a_retry_with_the_same_files_is_the_same_job_and_with_other_files_a_conflict(
    app: Flask, client: FlaskClient
) -> None:
    body = {**BASE, "mode": "image"}
    data = lambda image: {"request": json.dumps(body), "image": (io.BytesIO(image), "i.png")}  # noqa: E731
    headers = {"Idempotency-Key": "edit-1"}
    a = client.post("/v1/jobs", data=data(png()), headers=headers)
    b = client.post("/v1/jobs", data=data(png()), headers=headers)
    assert (a.status_code, b.status_code) == (202, 200)
    assert a.get_json()["id"] == b.get_json()["id"]
    c = client.post("/v1/jobs", data=data(png(colour=(0, 0, 255))), headers=headers)
    assert c.status_code == 409 and c.get_json()["error"]["code"] == "idempotency_key_reused"
    assert job_count(app) == 1 and len(stored_objects(app)) == 1  # the replays stored nothing


# --- bad input: a clear error, nothing left behind ------------------------------------------


@pytest.mark.parametrize(
    ("body", "files", "status", "code", "param", "message"),
    [
        pytest.param(
            {"mode": "image"},
            {"image": b"not an image at all"},
            400,
            "invalid_image",
            "image",
            "image: not a PNG, JPEG or WebP image that can be decoded",
            id="undecodable",
        ),
        pytest.param(
            {"mode": "image"},
            {"image": png()[:60]},
            400,
            "invalid_image",
            "image",
            None,
            id="truncated",
        ),
        pytest.param(
            {"mode": "image"},
            {"image": b""},
            400,
            "invalid_image",
            "image",
            "image: the file is empty",
            id="empty",
        ),
        pytest.param(
            {"mode": "image"},
            {"image": encoded("GIF")},
            415,
            "unsupported_media_type",
            "image",
            "image: GIF is not accepted; send PNG, JPEG or WebP",
            id="gif",
        ),
        pytest.param(
            {"mode": "image"},
            {"image": encoded("BMP")},
            415,
            "unsupported_media_type",
            "image",
            "image: BMP is not accepted; send PNG, JPEG or WebP",
            id="bmp",
        ),
        pytest.param(
            {"mode": "image"},
            {"image": png((80, 80))},
            413,
            "request_entity_too_large",
            "image",
            "image: the image has more than 4096 pixels",
            id="too-many-pixels",
        ),
        pytest.param(
            {"mode": "image"},
            {"image": bomb_png(30000, 30000)},
            413,
            "request_entity_too_large",
            "image",
            "image: the image has more than 4096 pixels",
            id="decompression-bomb",
        ),
        pytest.param(
            {"mode": "image"},
            {"image": b"\x89PNG" + b"\x00" * 20_000},
            413,
            "request_entity_too_large",
            "image",
            "image: the file is larger than 20000 bytes",
            id="too-many-bytes",
        ),
        pytest.param(
            {"mode": "inpaint"},
            {"image": png(), "mask": mask_png((32, 24))},
            422,
            "invalid_request",
            "mask",
            "mask: is 32x24 but the image is 32x32; they must be the same size",
            id="mask-size",
        ),
        pytest.param(
            {"mode": "inpaint"},
            {"image": png(), "mask": png()},
            422,
            "invalid_request",
            "mask",
            "mask: must be a single-channel (grayscale) image, white = repaint, "
            "black = keep; this one is RGB",
            id="mask-rgb",
        ),
        pytest.param(
            {"mode": "inpaint"},
            {"image": png(), "mask": png(mode="LA", colour=(255, 0))},
            422,
            "invalid_request",
            "mask",
            None,
            id="mask-with-alpha",
        ),
        pytest.param(
            {"mode": "inpaint"},
            {"image": png(), "mask": b"junk"},
            400,
            "invalid_image",
            "mask",
            None,
            id="mask-undecodable",
        ),
        pytest.param(
            {"mode": "image", "strength": 1.5},
            {"image": png()},
            422,
            "invalid_request",
            "strength",
            "strength: must be between 0 and 1",
            id="strength-high",
        ),
        pytest.param(
            {"mode": "image", "strength": -0.1},
            {"image": png()},
            422,
            "invalid_request",
            "strength",
            "strength: must be between 0 and 1",
            id="strength-negative",
        ),
        pytest.param(
            {"mode": "image"},
            {},
            422,
            "invalid_request",
            "image",
            "image: mode image needs an input image: a file part `image` or image_id",
            id="no-image",
        ),
        pytest.param(
            {"mode": "inpaint"},
            {"image": png()},
            422,
            "invalid_request",
            "mask",
            None,
            id="inpaint-without-mask",
        ),
        pytest.param(
            {"mode": "image"},
            {"image": png(), "mask": mask_png()},
            422,
            "invalid_request",
            "mask",
            "mask: only for mode inpaint (mode image redraws the whole image)",
            id="mask-on-image-mode",
        ),
        pytest.param(
            {},
            {"image": png()},
            422,
            "invalid_request",
            "image",
            "image: only for mode image or inpaint (this job's mode is text)",
            id="image-on-text-mode",
        ),
        pytest.param(
            {"strength": 0.5},
            {},
            422,
            "invalid_request",
            "strength",
            None,
            id="strength-on-text-mode",
        ),
        pytest.param(
            {"mode": "paint"},
            {"image": png()},
            422,
            "invalid_request",
            "mode",
            None,
            id="unknown-mode",
        ),
        pytest.param(
            {"mode": "image", "width": 64},
            {"image": png()},
            422,
            "invalid_request",
            "width",
            "width: 64 differs from the input image's 32: an edit keeps its "
            "image's size (omit width and height)",
            id="width-not-the-images",
        ),
        pytest.param(
            {"mode": "image"},
            {"image": png((30, 32))},
            422,
            "invalid_request",
            "image",
            "image: is 30x32: an edit's size is its image's, whose width must "
            "be a multiple of 8 between 32 and 1024",
            id="image-off-the-multiple",
        ),
        pytest.param(
            {"mode": "image"},
            {"image": png((16, 16))},
            422,
            "invalid_request",
            "image",
            None,
            id="image-too-small",
        ),
        pytest.param(
            {"mode": "image", "image_id": "nonsense"},
            {},
            422,
            "invalid_request",
            "image_id",
            None,
            id="bad-image-id",
        ),
    ],
)
def test_bad_input_gets_a_clear_error_and_leaves_nothing(
    app: Flask,
    client: FlaskClient,
    redis_client: redis.Redis,
    queue_name: str,
    body: dict[str, Any],
    files: dict[str, bytes],
    status: int,
    code: str,
    param: str,
    message: str | None,
) -> None:
    r = post(client, {**BASE, **body}, **files)
    assert r.status_code == status, r.get_json()
    error = r.get_json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    if message is not None:
        assert error["message"] == message
    assert set(error) == {"type", "code", "message", "param"}
    assert_nothing_left(app, redis_client, queue_name)


def test_jpeg_and_webp_are_accepted_and_stored_as_png(app: Flask, client: FlaskClient) -> None:
    for fmt in ("JPEG", "WEBP"):
        r = post(client, {**BASE, "mode": "image"}, image=encoded(fmt))
        assert r.status_code == 202, r.get_json()
        assert r.get_json()["inputs"][0]["content_type"] == "image/png"


def test_multipart_refuses_unknown_parts_and_a_missing_or_broken_request_part(
    app: Flask, client: FlaskClient, redis_client: redis.Redis, queue_name: str
) -> None:
    cases = [
        ({"image": (io.BytesIO(png()), "i.png")}, 422, "request"),
        ({"request": "{not json", "image": (io.BytesIO(png()), "i.png")}, 400, "request"),
        (
            {
                "request": json.dumps({**BASE, "mode": "image"}),
                "image": (io.BytesIO(png()), "i.png"),
                "extra": (io.BytesIO(b"x"), "x.bin"),
            },
            422,
            "extra",
        ),
        ({"request": json.dumps({**BASE, "mode": "image"}), "image": "not a file"}, 400, "image"),
    ]
    for data, status, param in cases:
        r = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
        assert r.status_code == status, r.get_json()
        assert r.get_json()["error"]["param"] == param
    assert_nothing_left(app, redis_client, queue_name)


def test_a_multipart_body_over_the_upload_limits_is_a_413(
    app: Flask, client: FlaskClient, redis_client: redis.Redis, queue_name: str
) -> None:
    huge = b"\x00" * 200_000  # past max_body_bytes + 2 x max_input_bytes
    r = post(client, {**BASE, "mode": "image"}, image=huge)
    assert r.status_code == 413
    assert r.get_json()["error"]["code"] == "request_entity_too_large"
    assert_nothing_left(app, redis_client, queue_name)


def test_a_failed_publish_deletes_the_stored_inputs_with_the_row(
    make_app,  # type: ignore[no-untyped-def]
    redis_client: redis.Redis,
    queue_name: str,
) -> None:
    app = make_app()
    svc = app.extensions["daikon"]

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    svc.celery.send_task = refuse  # the broker refuses the message, as when Redis is down
    r = post(authed(app), {**BASE, "mode": "image"}, image=png())
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "queue_unavailable"
    assert_nothing_left(app, redis_client, queue_name)


def test_the_job_schema_documents_multipart_and_the_modes(app: Flask, client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert set(body["multipart/form-data"]["schema"]["properties"]) == {"request", "image", "mask"}
    props = spec["components"]["schemas"]["JobRequest"]["properties"]

    def given(name: str) -> dict[str, Any]:
        return next(s for s in props[name]["anyOf"] if s.get("type") != "null")

    assert given("mode")["enum"] == ["text", "image", "inpaint"]
    assert props["mode"]["default"] == "text"
    assert (given("strength")["minimum"], given("strength")["maximum"]) == (0, 1)

"""Edit jobs' input images: read from multipart parts or from an earlier job, checked, then
normalised to the PNG that is stored beside the job's outputs.

Everything is decided before anything is written: a bad file answers 400 (undecodable), 413
(too many bytes or pixels, a decompression bomb), 415 (not PNG, JPEG or WebP) or 422 (a mask
of another size, or not single-channel; a JPEG of too many scans), a reference to another
tenant's image 404, and nothing is stored.

Two stages, so that what an input costs is bounded and paid only by a request that passed the
tenant's limits (api/submission.py): `check_upload` reads the header alone (format, size,
mode, frames; the pixel limit, so a decompression bomb is refused unread), then, after the
limits, `Upload.decode` decodes each file once. Before decoding, a progressive JPEG's scans are
counted without decoding them (`jpeg_scans`): each scan is a pass over every coefficient of the
image, so a file that repeats a tiny scan thousands of times (a "scan bomb") would cost minutes
of CPU within the byte limit; past DAIKON_MAX_INPUT_JPEG_SCANS it is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import request
from PIL import Image, UnidentifiedImageError

from api.bodies import check_text, json_body
from api.services import Services
from daikon.contract import GenerationParams, JobRequest, params_of
from daikon.errors import (
    BadRequest,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RequestErrorCode,
    UnsupportedMediaType,
)
from db import jobs
from db.session import session_scope
from server.settings import Settings
from server.storage import input_key

log = logging.getLogger("daikon.api")
ACCEPTED = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
# Formats refused by name (415) rather than as undecodable (400): their magic bytes.
KNOWN_OTHERS = {
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"\x00\x00\x01\x00": "ICO",
    b"8BPS": "PSD",
    b"%PDF": "PDF",
    b"<svg": "SVG",
    b"<?xml": "XML",
}
SINGLE_CHANNEL = ("L", "1")
REQUEST_PART = "request"
FILE_PARTS = ("image", "mask")
# Multipart overhead allowed beyond the parts themselves (boundaries, part headers).
MULTIPART_SLACK = 16 * 1024


@dataclass(frozen=True)
class InputImage:
    """One checked input, as it will be stored (a PNG of RGB for `image`, L for `mask`)."""

    role: str
    png: bytes
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.png).hexdigest()

    def pixels(self) -> bytes:
        """Its pixels row by row (one byte each for a mask), decoded again from the stored
        PNG: for a check of the pixels themselves (a token model's completion band)."""
        return Image.open(io.BytesIO(self.png)).tobytes()

    def record(self, key: str) -> dict[str, Any]:
        """What the job row keeps of it (db.models.Job.inputs)."""
        return {
            "key": key,
            "width": self.width,
            "height": self.height,
            "content_type": "image/png",
            "byte_size": len(self.png),
            "sha256": self.sha256,
        }


V = TypeVar("V", bound=Callable[..., Any])


def uploads(view: V) -> V:
    """Marks a route whose body carries uploaded files (api/admission.py gives it
    upload_request_bytes, and checks the caller before waiting for the body)."""
    view.daikon_uploads = True  # type: ignore[attr-defined]
    return view


def takes_uploads(view: Callable[..., Any]) -> bool:
    return bool(getattr(view, "daikon_uploads", False))


def upload_request_bytes(settings: Settings) -> int:
    """The largest body of a route that takes uploads: the JSON part and two files."""
    return settings.api.max_body_bytes + 2 * settings.limits.max_input_bytes + MULTIPART_SLACK


def allow_uploads(settings: Settings) -> None:
    """This request may carry two files and the JSON part: its limits, before it is parsed."""
    request.max_content_length = upload_request_bytes(settings)
    request.max_form_memory_size = settings.api.max_body_bytes  # the non-file parts
    request.max_form_parts = 16


def is_multipart() -> bool:
    return request.mimetype == "multipart/form-data"


def check_parts() -> None:
    """Every part named, every text field clean text (what bodies.py refuses in JSON)."""
    names = [*request.form.keys(), *request.files.keys()]
    if any(not isinstance(name, str) or not name for name in names):
        raise BadRequest("a multipart part has no name")
    problem = check_text([*names, *request.form.values()])
    if problem:
        raise BadRequest(f"the form contains {problem}")


def uploaded(role: str, settings: Settings) -> bytes | None:
    """The bytes of file part `role`, or None; more than max_input_bytes is a 413."""
    part = request.files.get(role)
    if part is None:
        if role in request.form:  # sent as a text field, not a file
            raise BadRequest(
                f"{role}: must be a file part (a filename in its Content-Disposition)", param=role
            )
        return None
    limit = settings.limits.max_input_bytes
    data = part.stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"{role}: the file is larger than {limit} bytes", param=role)
    return data


def multipart_job() -> tuple[dict[str, Any], dict[str, bytes]]:
    """POST /v1/jobs as multipart/form-data: a part `request` holding the same JSON as a JSON
    submission, and file parts `image` and `mask`."""
    from api.services import services

    settings = services().settings
    allow_uploads(settings)
    check_parts()
    known = {REQUEST_PART, *FILE_PARTS}
    unknown = sorted((set(request.form) | set(request.files)) - known)
    if unknown:
        raise InvalidRequest(
            f"{unknown[0]}: unknown part; a multipart job has a `request` "
            "part (the JSON body) and file parts image and mask",
            param=unknown[0],
        )
    raw = request.form.get(REQUEST_PART)
    if raw is None:
        raise InvalidRequest(
            "request: is required (a part holding the job's JSON body)", param="request"
        )
    try:
        body = json.loads(raw, parse_constant=_refuse)
    except (ValueError, RecursionError):
        raise BadRequest(
            "request: is not valid JSON", code=RequestErrorCode.invalid_json, param="request"
        ) from None
    if not isinstance(body, dict):
        raise BadRequest(
            "request: must be a JSON object", code=RequestErrorCode.invalid_json, param="request"
        )
    problem = check_text(body)
    if problem:
        raise BadRequest(
            f"request: contains {problem}", code=RequestErrorCode.invalid_json, param="request"
        )
    files = {role: data for role in FILE_PARTS if (data := uploaded(role, settings)) is not None}
    return body, files


def job_submission() -> tuple[dict[str, Any], dict[str, bytes]]:
    """The body and uploaded files of POST /v1/jobs, JSON or multipart."""
    if is_multipart():
        return multipart_job()
    return json_body(), {}


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _format_of(data: bytes) -> str | None:
    for magic, name in KNOWN_OTHERS.items():
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        return "HEIF/AVIF"
    return None


def _open(data: bytes, *, role: str, settings: Settings) -> Image.Image:
    """The image in `data`, its header read and checked, no pixel decoded yet."""
    limits = settings.limits
    if len(data) > limits.max_input_bytes:
        raise PayloadTooLarge(
            f"{role}: the file is larger than {limits.max_input_bytes} bytes", param=role
        )
    if not data:
        raise BadRequest(
            f"{role}: the file is empty", param=role, code=RequestErrorCode.invalid_image
        )
    Image.MAX_IMAGE_PIXELS = limits.max_input_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(ACCEPTED))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(role, settings) from None
    except UnidentifiedImageError:
        other = _format_of(data)
        if other:
            raise UnsupportedMediaType(
                f"{role}: {other} is not accepted; send PNG, JPEG or WebP", param=role
            ) from None
        raise BadRequest(
            f"{role}: not a PNG, JPEG or WebP image that can be decoded",
            param=role,
            code=RequestErrorCode.invalid_image,
        ) from None
    except Exception as e:  # a corrupt header
        raise BadRequest(
            f"{role}: the image cannot be read: {e}",
            param=role,
            code=RequestErrorCode.invalid_image,
        ) from None
    width, height = image.size
    if width * height > limits.max_input_pixels:  # before a single pixel is decoded
        raise _too_many_pixels(role, settings)
    if getattr(image, "n_frames", 1) > 1:
        raise UnsupportedMediaType(f"{role}: an animated image is not accepted", param=role)
    return image


def _too_many_pixels(role: str, settings: Settings) -> PayloadTooLarge:
    limit = settings.limits.max_input_pixels
    return PayloadTooLarge(f"{role}: the image has more than {limit} pixels", param=role)


# A marker that ends entropy-coded data: 0xFF then neither a stuffed 0x00, a restart marker
# (0xD0-0xD7) nor a fill byte (0xFF).
_JPEG_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # markers without a length


def jpeg_scans(data: bytes, stop_after: int) -> int:
    """How many scans (SOS segments) a JPEG holds, counted from its markers without decoding
    (ITU T.81 annex B): segments are skipped by their lengths, entropy-coded data by a search
    for the next marker. Counting stops past `stop_after`."""
    scans, pos = 0, 2  # after SOI
    while scans <= stop_after:
        found = _JPEG_MARKER.search(data, pos)
        if found is None:
            return scans
        marker, pos = data[found.start() + 1], found.end()
        if marker == _EOI:
            return scans
        if marker in _STANDALONE:
            continue
        if pos + 2 > len(data):
            return scans
        length = int.from_bytes(data[pos : pos + 2], "big")
        if marker == _SOS:
            scans += 1
        pos += length  # past the segment; after SOS, the search skips its entropy data
    return scans


@dataclass(frozen=True)
class Upload:
    """One input checked from its header alone: what the limits and the job's parameters need
    to know (size, mode) before anything is decoded. `openai_mask`: a mask in OpenAI's
    convention (transparent = edit), converted when decoded."""

    role: str
    data: bytes
    format: str
    width: int
    height: int
    openai_mask: bool = False

    @property
    def sha256(self) -> str:
        """Of the bytes sent: a retry with other bytes is another request (idempotency)."""
        return hashlib.sha256(self.data).hexdigest()

    def decode(self, settings: Settings) -> InputImage:
        """Decode once (bounded: a JPEG's scans are counted first) into the stored form."""
        role = self.role
        limit = settings.limits.max_input_jpeg_scans
        if self.format == "JPEG" and jpeg_scans(self.data, limit) > limit:
            raise InvalidRequest(
                f"{role}: the JPEG has more than {limit} scans (a progressive JPEG has about "
                "10): re-encode it",
                param=role,
                code=RequestErrorCode.too_many_scans,
            )
        image = _open(self.data, role=role, settings=settings)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels(role, settings) from None
        except Exception as e:  # truncated or corrupt data
            raise BadRequest(
                f"{role}: the image data is damaged: {e}",
                param=role,
                code=RequestErrorCode.invalid_image,
            ) from None
        if self.openai_mask:
            return _from_openai_mask(image)
        return as_input(image, role)


def check_upload(
    data: bytes, *, role: str, settings: Settings, openai_mask: bool = False
) -> Upload:
    """What the header tells, checked: the error it answers, or the input to decode later."""
    image = _open(data, role=role, settings=settings)
    if openai_mask:
        if "A" not in image.getbands() and "transparency" not in image.info:
            raise InvalidRequest(
                f"mask: must be a PNG with an alpha channel (fully transparent pixels mark "
                f"where to edit); this one is {image.mode} without transparency",
                param="mask",
            )
    elif role == "mask" and image.mode not in SINGLE_CHANNEL:
        raise InvalidRequest(
            f"mask: must be a single-channel (grayscale) image, white = repaint, black = "
            f"keep; this one is {image.mode}",
            param="mask",
        )
    return Upload(role, data, str(image.format), image.width, image.height, openai_mask)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def as_input(image: Image.Image, role: str) -> InputImage:
    """The stored form: RGB for an image (any alpha dropped), L for a mask."""
    image = image.convert("L" if role == "mask" else "RGB")
    return InputImage(role, _png(image), image.width, image.height)


def _from_openai_mask(image: Image.Image) -> InputImage:
    """OpenAI's mask (fully transparent = edit) in the diffusers convention (white = edit)."""
    alpha = image.convert("RGBA").getchannel("A")
    mask = alpha.point(lambda a: 255 if a == 0 else 0)
    return InputImage("mask", _png(mask), mask.width, mask.height)


def parse_image_id(value: str, param: str) -> tuple[str, str]:
    """`<job id>:<rank>`, `<job id>:image` or `<job id>:mask` -> (job id, what)."""
    job_id, sep, what = value.rpartition(":")
    if (
        not sep
        or not job_id
        or not (what in ("image", "mask") or (what.isascii() and what.isdigit()))
    ):
        raise InvalidRequest(
            f"{param}: {value!r} is not an image id (`<job id>:<rank>`, "
            "`<job id>:image` or `<job id>:mask`)",
            param=param,
        )
    return job_id, what


def referenced(svc: Services, tenant_id: str | None, value: str, param: str) -> bytes:
    """The stored bytes of an image of one of the tenant's jobs (404 for anyone else's)."""
    job_id, what = parse_image_id(value, param)
    missing = NotFound(f"{param}: image {value!r} not found", param=param)
    with session_scope(svc.sessions) as session:
        try:
            job = jobs.get(session=session, job_id=job_id, tenant_id=tenant_id)
        except NotFound:
            raise missing from None
        if what.isdigit():
            key = next((i.storage_key for i in job.images if i.rank == int(what)), None)
        else:
            key = (job.inputs or {}).get(what, {}).get("key")
    if key is None:
        raise missing
    try:
        return svc.store.get(key)
    except KeyError:
        raise missing from None


@dataclass(frozen=True)
class Inputs:
    """An edit's inputs, decoded, as they are stored."""

    image: InputImage
    mask: InputImage | None = None

    @property
    def all(self) -> list[InputImage]:
        return [self.image, *([self.mask] if self.mask else [])]


@dataclass(frozen=True)
class Checked:
    """An edit's inputs, checked from their headers: what a submission decides before the
    tenant's limits; `decode` after them."""

    image: Upload
    mask: Upload | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.image.width, self.image.height

    @property
    def byte_size(self) -> int:
        """The bytes sent (the storage quota's estimate before anything is decoded)."""
        return sum(len(u.data) for u in (self.image, self.mask) if u is not None)

    def digest(self) -> dict[str, str]:
        """For the idempotency hash: a retry with other files is another request."""
        return {u.role: u.sha256 for u in (self.image, self.mask) if u is not None}

    def decode(self, settings: Settings) -> Inputs:
        return Inputs(
            self.image.decode(settings), self.mask.decode(settings) if self.mask else None
        )


def gather(
    svc: Services,
    tenant_id: str | None,
    req: JobRequest,
    files: Mapping[str, bytes | Upload],
) -> Checked | None:
    """The job's inputs checked from their headers (None for a text job), or the error that
    refuses it. A file given as an Upload was checked by its route (the OpenAI mask)."""
    settings = svc.settings
    mode = req.mode or "text"

    def refuse(param: str, message: str) -> None:
        raise InvalidRequest(f"{param}: {message}", param=param)

    has_mask = "mask" in files or req.mask_id is not None
    if req.prompt == "" and mode != "image":
        refuse(
            "prompt",
            "must not be empty (only a mode image job may leave it empty: the "
            "image redrawn without a caption)",
        )
    if mode == "text":
        for name, param in params_of(JobRequest).items():
            if param.modes is not None and getattr(req, name) is not None:
                refuse(name, "only for mode image or inpaint (this job's mode is text)")
        for role in files:
            refuse(role, "only for mode image or inpaint (this job's mode is text)")
        return None
    if mode == "image":
        if has_mask:
            refuse("mask", "only for mode inpaint (mode image redraws the whole image)")
        for name, param in params_of(GenerationParams).items():
            if (
                param.modes is not None
                and mode not in param.modes
                and getattr(req, name) is not None
            ):
                refuse(name, f"only for mode {' or '.join(param.modes)}")
    for role, ref in (("image", req.image_id), ("mask", req.mask_id)):
        if role in files and ref is not None:
            refuse(f"{role}_id", f"give either an uploaded {role} part or {role}_id, not both")
    if "image" not in files and req.image_id is None:
        refuse("image", f"mode {mode} needs an input image: a file part `image` or image_id")
    if mode == "inpaint" and not has_mask:
        refuse("mask", "mode inpaint needs a mask (white = repaint): a file part `mask` or mask_id")

    def load(role: str, ref: str | None) -> Upload:
        given = files.get(role)
        if isinstance(given, Upload):
            return given
        data = given if given is not None else referenced(svc, tenant_id, ref or "", f"{role}_id")
        return check_upload(data, role=role, settings=settings)

    image = load("image", req.image_id)
    bounds = settings.limits
    for side, value in (("width", image.width), ("height", image.height)):
        if value % 8 or not bounds.min_size <= value <= bounds.max_size:
            refuse(
                "image",
                f"is {image.width}x{image.height}: an edit's size is its image's, "
                f"whose {side} must be a multiple of 8 between {bounds.min_size} and "
                f"{bounds.max_size}",
            )
    mask = load("mask", req.mask_id) if mode == "inpaint" else None
    if mask is not None and (mask.width, mask.height) != (image.width, image.height):
        refuse(
            "mask",
            f"is {mask.width}x{mask.height} but the image is "
            f"{image.width}x{image.height}; they must be the same size",
        )
    for side, asked in (("width", req.width), ("height", req.height)):
        own = image.width if side == "width" else image.height
        if asked is not None and asked != own:
            refuse(
                side,
                f"{asked} differs from the input image's {own}: an edit keeps its "
                "image's size (omit width and height)",
            )
    return Checked(image, mask)


def store_inputs(svc: Services, job_id: str, inputs: Inputs) -> dict[str, dict[str, Any]]:
    """Upload the inputs under the job's prefix; the records for the job row. On failure the
    ones already stored are deleted again."""
    records: dict[str, dict[str, Any]] = {}
    try:
        for item in inputs.all:
            key = input_key(svc.settings, job_id, item.role)
            svc.store.put(key, item.png, "image/png")
            records[item.role] = item.record(key)
    except BaseException:
        delete_inputs(svc, records)
        raise
    return records


def delete_inputs(svc: Services, records: dict[str, dict[str, Any]]) -> None:
    """Best effort: a store that fails here failed the upload too; the error is logged."""
    for record in records.values():
        try:
            svc.store.delete(record["key"])
        except Exception as e:
            log.warning("could not delete input %s: %s", record["key"], e)

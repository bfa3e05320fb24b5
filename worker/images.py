"""A job's pictures in storage: reading the inputs the API stored for an edit, and storing the
candidates a job keeps. Storage being down is waited out (with backoff, for a bounded time);
what then still fails is raised for the executor to turn into the job's failure."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from tenacity import Retrying, stop_after_delay, wait_exponential

from daikon.contract import JobParams
from db import jobs
from db.models import JobImage
from server.storage import ImageStore, image_key
from worker.families import Candidate, to_pil

log = logging.getLogger(__name__)
PNG = "image/png"


class InputUnavailable(Exception):
    """An edit job's stored input (`role`) is missing, or unreadable: then the error is its
    `__cause__` (the job fails `input_unavailable`)."""

    def __init__(self, role: str):
        super().__init__(role)
        self.role = role


@dataclass
class JobImages:
    store: ImageStore
    key_prefix: str = ""
    retry_seconds: float = 0.0  # keep retrying uploads this long while storage is down

    def read_inputs(self, params: JobParams, inputs: dict[str, Any]) -> dict[str, Image.Image]:
        """An edit job's stored image (RGB) and mask (L), as the API checked and stored them."""
        if params.mode == "text":
            return {}
        roles = ("image", "mask") if params.mode == "inpaint" else ("image",)
        out: dict[str, Image.Image] = {}
        for role in roles:
            record = inputs.get(role)
            if record is None:
                raise InputUnavailable(role)
            try:
                image = Image.open(io.BytesIO(self.store.get(record["key"])))
                out[role] = image.convert("L" if role == "mask" else "RGB")
            except Exception as e:
                raise InputUnavailable(role) from e
        return out

    def keep(
        self,
        job_id: str,
        images: Sequence[Candidate],
        order: Sequence[int],
        scores: Sequence[float],
        seeds: Sequence[int],
    ) -> list[jobs.NewImage]:
        """Store the candidates at `order` (best first) as the job's images 1, 2, ... and
        return their records. On failure nothing stays behind: what was stored is deleted."""
        kept: list[jobs.NewImage] = []
        try:
            for position, index in enumerate(order, start=1):
                picture = to_pil(images[index])
                data = _png(picture)
                key = image_key(self.key_prefix, job_id, position)
                self._put_with_retry(key, data)
                kept.append(
                    jobs.NewImage(
                        rank=position,
                        clip_score=scores[index],
                        seed=seeds[index],
                        width=picture.width,
                        height=picture.height,
                        content_type=PNG,
                        storage_key=key,
                        byte_size=len(data),
                    )
                )
        except Exception:
            self.discard(kept)
            raise
        return kept

    def copy(self, job_id: str, images: Sequence[JobImage]) -> list[jobs.NewImage]:
        """Store copies of another job's images as this job's own objects (same ranks, scores
        and seeds), so deleting either job never takes the other's images. Raises if one cannot
        be read (deleted with its job, say); then nothing stays behind."""
        kept: list[jobs.NewImage] = []
        try:
            for image in images:
                data = self.store.get(image.storage_key)
                key = image_key(self.key_prefix, job_id, image.rank)
                self._put_with_retry(key, data)
                kept.append(
                    jobs.NewImage(
                        rank=image.rank,
                        clip_score=image.clip_score,
                        seed=image.seed,
                        width=image.width,
                        height=image.height,
                        content_type=image.content_type,
                        storage_key=key,
                        byte_size=len(data),
                    )
                )
        except Exception:
            self.discard(kept)
            raise
        return kept

    def discard(self, kept: Sequence[jobs.NewImage]) -> None:
        """Delete stored images no job row will point at (best effort: storage may be down)."""
        for image in kept:
            try:
                self.store.delete(image.storage_key)
            except Exception as e:
                log.warning("could not delete %s: %s", image.storage_key, e)

    def _put_with_retry(self, key: str, data: bytes) -> None:
        """Upload, retrying with backoff (0.5 s doubling to 10 s) while storage is down, for up
        to retry_seconds; then the last error is raised (no row ever points at a missing
        object)."""
        for attempt in Retrying(
            stop=stop_after_delay(self.retry_seconds),
            wait=wait_exponential(multiplier=0.5, max=10.0),
            before_sleep=lambda state: log.warning(
                "upload of %s failed (%s); retrying",
                key,
                state.outcome and state.outcome.exception(),
            ),
            reraise=True,
        ):
            with attempt:
                self.store.put(key, data, PNG)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()

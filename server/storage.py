"""Image storage: a local directory (embedded default) or any S3-compatible endpoint via boto3."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from server.private_files import DIR_MODE, private_dir
from server.settings import Settings


class StorageError(Exception):
    """The store could not be reached or refused the operation."""


class ImageStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def presigned_url(self, key: str) -> str | None:
        """A URL a client can fetch directly, or None when the API must serve the bytes."""
        ...


def image_key(prefix: str, job_id: str, rank: int) -> str:
    return f"{prefix}{job_id}/rank-{rank}.png"


def key_prefix(settings: Settings) -> str:
    """Where a deployment's objects start in its bucket (none in a local folder)."""
    return settings.storage.s3_prefix if settings.storage_backend == "s3" else ""


def input_key(settings: Settings, job_id: str, role: str) -> str:
    """An edit job's input (`image` or `mask`), beside the job's outputs."""
    return f"{key_prefix(settings)}{job_id}/input-{role}.png"


class LocalStore:
    def __init__(self, root: Path):
        self.root = private_dir(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StorageError(f"key escapes the store: {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        # Write-then-rename: a reader never sees a half-written image.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as e:
            raise KeyError(key) from e

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Idempotent (a missing file is fine); a job's folder goes with its last file."""
        path = self._path(key)
        path.unlink(missing_ok=True)
        if path.parent != self.root.resolve():
            with contextlib.suppress(OSError):  # not empty, or gone already
                path.parent.rmdir()

    def presigned_url(self, key: str) -> str | None:
        return None


class S3Store:
    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None,
        region: str,
        presign_seconds: int,
        create_bucket: bool = True,
    ):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.presign_seconds = presign_seconds
        config = Config(
            signature_version="s3v4",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            # Path style works with MinIO, moto and AWS alike, without wildcard DNS.
            s3={"addressing_style": "path"},
        )
        self.client: Any = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )
        if create_bucket:
            self._ensure_bucket(region)

    def _ensure_bucket(self, region: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"cannot reach bucket {self.bucket!r}: {e}") from e
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**kwargs)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StorageError(f"cannot create bucket {self.bucket!r}: {e}") from e

    def put(self, key: str, data: bytes, content_type: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (BotoCoreError, ClientError) as e:
            raise StorageError(f"upload of {key!r} failed: {e}") from e

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise KeyError(key) from e
            raise
        return bytes(body.read())

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        """Idempotent: S3 answers a delete of a missing key with success."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as e:
            raise StorageError(f"delete of {key!r} failed: {e}") from e

    def presigned_url(self, key: str) -> str:
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=self.presign_seconds,
        )
        return url


def make_store(settings: Settings, *, create_bucket: bool = True) -> ImageStore:
    if settings.storage_backend == "s3":
        if not settings.storage.s3_bucket:
            raise ValueError("DAIKON_STORAGE=s3 needs DAIKON_S3_BUCKET")
        return S3Store(
            bucket=settings.storage.s3_bucket,
            endpoint_url=settings.storage.s3_endpoint_url,
            region=settings.storage.s3_region,
            presign_seconds=settings.storage.presign_seconds,
            create_bucket=create_bucket,
        )
    return LocalStore(settings.local_storage_path)

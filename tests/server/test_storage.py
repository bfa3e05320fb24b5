"""Both stores keep exact bytes; S3 works over HTTP against an S3-compatible server."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import pytest
import requests

from server.settings import Settings
from server.storage import LocalStore, S3Store, StorageError, image_key, make_store

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def test_local_store_round_trips_and_deletes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "images")
    key = image_key("", "job-1", 1)
    assert not store.exists(key)
    store.put(key, PNG_BYTES, "image/png")
    assert store.exists(key) and store.get(key) == PNG_BYTES
    assert store.presigned_url(key) is None  # the API serves local images itself
    assert [p.name for p in (tmp_path / "images" / "job-1").iterdir()] == ["rank-1.png"]
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(KeyError):
        store.get(key)


def test_local_store_refuses_keys_outside_its_folder(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "images")
    with pytest.raises(StorageError, match="escapes"):
        store.put("../outside.png", b"x", "image/png")
    assert not (tmp_path / "outside.png").exists()


def test_s3_store_creates_its_bucket_and_serves_presigned_urls(s3_endpoint: str) -> None:
    bucket = f"daikon-{uuid.uuid4().hex[:8]}"
    store = S3Store(
        bucket=bucket, endpoint_url=s3_endpoint, region="us-east-1", presign_seconds=600
    )
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    assert bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]

    key = image_key("jobs/", "job-2", 1)
    store.put(key, PNG_BYTES, "image/png")
    assert store.exists(key) and store.get(key) == PNG_BYTES
    head = client.head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "image/png"

    r = requests.get(store.presigned_url(key), timeout=10)
    assert r.status_code == 200 and r.content == PNG_BYTES

    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(KeyError):
        store.get(key)
    # A second store on the same bucket finds it instead of failing to create it.
    S3Store(bucket=bucket, endpoint_url=s3_endpoint, region="us-east-1", presign_seconds=600)


def test_s3_upload_to_an_unreachable_endpoint_is_a_storage_error() -> None:
    store = S3Store(
        bucket="b",
        endpoint_url="http://127.0.0.1:9",
        region="us-east-1",
        presign_seconds=600,
        create_bucket=False,
    )
    with pytest.raises(StorageError, match="upload of 'k' failed"):
        store.put("k", b"x", "image/png")


def test_settings_pick_the_store(tmp_path: Path, s3_endpoint: str) -> None:
    local = make_store(Settings(data_dir=tmp_path))
    assert isinstance(local, LocalStore) and local.root == tmp_path.resolve() / "images"
    s3 = make_store(Settings(data_dir=tmp_path, s3_bucket="picked", s3_endpoint_url=s3_endpoint))
    assert isinstance(s3, S3Store) and s3.bucket == "picked"

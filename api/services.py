"""The per-app service objects, built once in create_app and reached through `services()`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery
from flask import current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.caches import BodyCache, KeyCache, QueuePlaces
from api.enqueued import EnqueuedMarks
from api.rate_limit import SubmitRateLimit
from api.slots import LongRequests
from db.session import make_engine, make_session_factory, read_engine
from server import encryption
from server.celery_config import make_celery
from server.encryption import Cipher
from server.image_urls import secret_key
from server.live import LiveState
from server.served_models import ServedModels
from server.settings import Settings
from server.storage import ImageStore, make_store


@dataclass(frozen=True)
class Services:
    settings: Settings
    sessions: sessionmaker[Session]
    reads: Engine  # for requests that only read: db.session.read_retrying
    store: ImageStore
    celery: Celery
    live: LiveState
    signing_key: bytes
    long_requests: LongRequests  # this process's slots for streams and waits
    cipher: Cipher  # secrets stored encrypted (webhook signing secrets)
    served_models: ServedModels  # what workers published about the models they loaded
    rate_limit: SubmitRateLimit  # submissions per tenant and minute
    keys: KeyCache[Any]  # principals by key hash (api/auth.py)
    bodies: BodyCache  # job objects as JSON, while their row is unchanged (api/serialize.py)
    places: QueuePlaces  # queue positions of polls deep in a queue, from a shared ranking
    enqueued: EnqueuedMarks  # outbox marks of published jobs, written in batches

    @classmethod
    def build(cls, settings: Settings) -> Services:
        live = LiveState(settings.services.redis_url, settings.services.queue)
        engine = make_engine(settings.sqlalchemy_url)
        sessions = make_session_factory(engine)
        return cls(
            settings=settings,
            sessions=sessions,
            reads=read_engine(settings.sqlalchemy_url, engine),
            enqueued=EnqueuedMarks(sessions),
            # The API only reads and presigns: it must start even while S3 is unreachable,
            # and creating the bucket is the worker's business.
            store=make_store(settings, create_bucket=False),
            celery=make_celery(settings, main="daikon-api"),
            live=live,
            served_models=ServedModels(live.redis, settings),
            rate_limit=SubmitRateLimit(live.redis, settings.limits.tenant_submits_per_minute),
            signing_key=secret_key(settings),
            keys=KeyCache(live.redis),
            # Image URLs stay valid at least presign_seconds (>= 60) from when they are made.
            bodies=BodyCache(ttl_seconds=min(30.0, settings.storage.presign_seconds / 4)),
            places=QueuePlaces(),
            cipher=encryption.cipher(settings),
            long_requests=LongRequests(
                settings.api.max_long_requests,
                min(settings.api.max_long_requests_per_tenant, settings.api.max_long_requests),
            ),
        )


def services() -> Services:
    svc: Services = current_app.extensions["daikon"]
    return svc

"""The per-app service objects, built once in create_app and reached through `services()`."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app
from sqlalchemy.orm import Session, sessionmaker

from api.signing import secret_key
from daikon.celery_config import make_celery
from daikon.live import LiveState
from daikon.settings import Settings
from daikon.storage import ImageStore, make_store
from db.session import make_engine, make_session_factory


@dataclass(frozen=True)
class Services:
    settings: Settings
    sessions: sessionmaker[Session]
    store: ImageStore
    celery: Celery
    live: LiveState
    signing_key: bytes

    @classmethod
    def build(cls, settings: Settings) -> Services:
        return cls(
            settings=settings,
            sessions=make_session_factory(make_engine(settings.sqlalchemy_url)),
            # The API only reads and presigns: it must start even while S3 is unreachable,
            # and creating the bucket is the worker's business.
            store=make_store(settings, create_bucket=False),
            celery=make_celery(settings, main="daikon-api"),
            live=LiveState(settings.redis_url),
            signing_key=secret_key(settings),
        )


def services() -> Services:
    svc: Services = current_app.extensions["daikon"]
    return svc

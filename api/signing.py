"""The API's signed image URLs; the signing itself lives in daikon.image_urls, which the
worker shares for job objects in webhooks."""

from daikon.image_urls import GRID_SECONDS, _mac, secret_key, sign, verify

__all__ = ["GRID_SECONDS", "_mac", "secret_key", "sign", "verify"]

"""Shared contract: settings, job schema, storage and Celery wiring (no torch, no Flask)."""

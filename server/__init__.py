"""The server's core, shared by the API, the workers and the database layer: settings, Celery
and queue configuration, image storage, live state in Redis (every key name in `keys.py`),
secrets at rest, and the job view both the API and webhooks render.

Nothing here is part of the wire contract (`daikon/`, which a client installs alone), and
nothing here imports `api`, `worker` or `db`: the arrows point this way only.
"""

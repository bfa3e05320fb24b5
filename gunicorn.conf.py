"""gunicorn settings for Daikon's API, read automatically from the working directory.

Threads, not processes, carry the concurrency: most requests wait on the database or Redis,
and each open event stream (SSE) or OpenAI-route wait holds a thread. Those are capped per
process by DAIKON_MAX_LONG_REQUESTS (default 100), below the 128 threads, so ordinary
requests always have threads left.
"""

import os

bind = os.environ.get("DAIKON_BIND", f"127.0.0.1:{os.environ.get('DAIKON_PORT', '8000')}")
workers = int(os.environ.get("DAIKON_API_WORKERS", "2"))
# gthread, but no thread waits on a client that sends its request slowly (api/gunicorn_worker.py).
worker_class = "api.gunicorn_worker.SlowClientSafeWorker"
threads = int(os.environ.get("DAIKON_API_THREADS", "128"))
accesslog = "-"
# Event streams are long requests; the gthread worker is not killed for them.
timeout = 60
graceful_timeout = 30

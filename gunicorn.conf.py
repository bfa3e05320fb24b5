"""gunicorn settings for Daikon's API, read automatically from the working directory; the
values come from Daikon's settings (server/settings.py, group `api`).

Threads, not processes, carry the concurrency: most requests wait on the database or Redis,
and each open event stream (SSE) or OpenAI-route wait holds a thread. Those are capped per
process by DAIKON_MAX_LONG_REQUESTS, which settings keep below DAIKON_API_THREADS, so
ordinary requests always have threads left.
"""

from server.settings import Settings

_settings = Settings()
bind = _settings.bind
workers = _settings.api.api_workers
threads = _settings.api.api_threads
# gthread, but no thread waits on a client that sends its request slowly (api/gunicorn_worker.py).
worker_class = "api.gunicorn_worker.SlowClientSafeWorker"
accesslog = "-"
# The access log never shows a signed URL's signature or a credential (api/access_log.py).
logger_class = "api.access_log.AccessLogger"
# Event streams are long requests; the gthread worker is not killed for them.
timeout = 60
graceful_timeout = 30

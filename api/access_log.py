"""Access logs without capabilities or secrets. A signed image URL (server/image_urls.py) opens
its image to whoever holds it, without a key, until it expires; so a request line, query
string, referrer or redirect that carries a signature is logged with its query replaced by
`[redacted]`, and credentials (Authorization, cookies) never reach a log, whatever
access_log_format an operator picks.

`AccessLogger` is gunicorn's (gunicorn.conf.py, `logger_class`); `DevRequestHandler` does the
same for werkzeug's development server (the tests' in-process servers)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from gunicorn import glogging
from werkzeug.serving import WSGIRequestHandler

from server.image_urls import REDACTED, redact_query, redact_url

# gunicorn's atoms: %(r)s the request line, %(f)s the referrer; {name}i request headers,
# {name}o response headers, {name}e the WSGI environ.
URL_ATOMS = ("r", "f", "{referer}i", "{http_referer}e", "{raw_uri}e", "{location}o")
QUERY_ATOMS = ("q", "{query_string}e")
SECRET_ATOMS = (
    "{authorization}i",
    "{cookie}i",
    "{http_authorization}e",
    "{http_cookie}e",
    "{set-cookie}o",
)


class AccessLogger(glogging.Logger):  # type: ignore[misc]
    def atoms(self, resp: Any, req: Any, environ: Any, request_time: timedelta) -> Any:
        atoms = super().atoms(resp, req, environ, request_time)
        for name in URL_ATOMS:
            if isinstance(atoms.get(name), str):
                atoms[name] = redact_url(atoms[name])
        for name in QUERY_ATOMS:
            if isinstance(atoms.get(name), str):
                atoms[name] = redact_query(atoms[name])
        for name in SECRET_ATOMS:
            if name in atoms:
                atoms[name] = REDACTED
        return atoms


class DevRequestHandler(WSGIRequestHandler):
    """werkzeug's request log line: its path's query is redacted the same way (the request
    was handled already: nothing reads these attributes after the log line)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.requestline = redact_url(self.requestline)
        if isinstance(getattr(self, "path", None), str):
            self.path = redact_url(self.path)
        super().log_request(code, size)

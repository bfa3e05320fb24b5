"""Rules for request fields, each stated once.

A rule is an annotated type: the same arguments make its check (with the message a client
reads) and its JSON Schema (what OpenAPI and the generated docs show). Each request field
names its rule in its `Param` (daikon/contract.py); the models built per deployment
(server/requests.py) feed it the deployment's bounds, so a bound is never typed twice.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, WithJsonSchema


def _number_schema(kind: type) -> dict[str, Any]:
    return {"type": "integer" if kind is int else "number"}


def between(lo: float, hi: float, *, kind: type = int, multiple_of: int | None = None) -> Any:
    """A number in lo..hi (and a multiple of `multiple_of`)."""

    def check(v: Any) -> Any:
        if multiple_of is not None and v % multiple_of:
            raise ValueError(f"must be a multiple of {multiple_of} between {lo} and {hi}")
        if not lo <= v <= hi:
            if multiple_of is not None:
                raise ValueError(f"must be a multiple of {multiple_of} between {lo} and {hi}")
            raise ValueError(f"must be between {lo} and {hi}")
        return v

    schema = {**_number_schema(kind), "minimum": lo, "maximum": hi}
    if multiple_of is not None:
        schema["multipleOf"] = multiple_of
    return Annotated[kind, AfterValidator(check), WithJsonSchema(schema)]


def at_least(lo: int, *, documented_maximum: int) -> Any:
    """An integer of at least `lo`, whose upper bound is another field's (checked by the model;
    the schema states the largest it can ever be)."""

    def check(v: int) -> int:
        if v < lo:
            raise ValueError(f"must be at least {lo}")
        return v

    schema = {"type": "integer", "minimum": lo, "maximum": documented_maximum}
    return Annotated[int, AfterValidator(check), WithJsonSchema(schema)]


def visible(char: str) -> bool:
    """A character that draws something: a letter, number, punctuation or symbol (not a space,
    control, format character such as U+200B ZERO WIDTH SPACE, or a lone combining mark)."""
    return unicodedata.category(char)[0] in "LNPS"


def text(max_chars: int, *, drawn: bool = False, empty_allowed: bool = False) -> Any:
    """A string of at most `max_chars`; `drawn`: not empty, with a visible character, except
    that `empty_allowed` lets the empty string through (for a check elsewhere to decide)."""

    def check(v: str) -> str:
        if len(v) > max_chars:
            raise ValueError(f"must be at most {max_chars} characters (got {len(v)})")
        if drawn and not (empty_allowed and v == ""):
            if not v.strip():
                raise ValueError("must not be empty")
            if not any(visible(c) for c in v):
                raise ValueError(
                    "must contain a visible character (it has only invisible ones, such as "
                    "zero-width spaces or joiners)"
                )
        return v

    schema: dict[str, Any] = {"type": "string", "maxLength": max_chars}
    if drawn:
        schema = {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": r"\S"}
        if empty_allowed:
            schema = {"type": "string", "maxLength": max_chars, "pattern": r"^$|\S"}
    return Annotated[str, AfterValidator(check), WithJsonSchema(schema)]


def one_of(names: Sequence[str], *, what: str, aliases: Mapping[str, str] | None = None) -> Any:
    """One of `names`, or an alias of one (normalised to the name)."""
    aliases = dict(aliases or {})

    def check(v: str) -> str:
        if v in names:
            return v
        if v in aliases:
            return aliases[v]
        raise ValueError(f"unknown {what} {v!r}; available: {', '.join(names)}")

    schema = {"type": "string", "enum": [*names, *aliases]}
    return Annotated[str, AfterValidator(check), WithJsonSchema(schema)]


def json_object(max_bytes: int) -> Any:
    """A JSON object of at most `max_bytes` (compactly serialised)."""

    def check(v: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(v, separators=(",", ":"))) > max_bytes:
            raise ValueError(f"must be at most {max_bytes} bytes as JSON")
        return v

    return Annotated[dict[str, Any], AfterValidator(check)]


def http_url(max_chars: int = 2048) -> Any:
    """An absolute http(s) URL without credentials."""

    def check(v: str) -> str:
        url = urlsplit(v)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("must be an absolute http or https URL")
        if url.username or url.password:
            raise ValueError("must not contain credentials")
        if len(v) > max_chars:
            raise ValueError(f"must be at most {max_chars} characters")
        return v

    schema = {"type": "string", "format": "uri", "maxLength": max_chars, "pattern": "^https?://"}
    return Annotated[str, AfterValidator(check), WithJsonSchema(schema)]


def number_as_float(kind: Any) -> Any:
    """JSON has one number type: 7 and 7.0 are the same float (strict mode refuses ints)."""

    def convert(v: Any) -> Any:
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    return Annotated[kind, BeforeValidator(convert)]

"""Settings are grouped, yet every variable keeps its flat name, and rules across groups are
checked when a process loads them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.settings import GROUP_OF, Settings, environment_variables


def test_every_variable_keeps_its_flat_name_and_lands_in_its_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DAIKON_MAX_SIZE", "512")
    monkeypatch.setenv("daikon_webhook_timeout_seconds", "3.5")  # names are case-insensitive
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:6379/2")
    monkeypatch.setenv("DAIKON_MODELS", '{"sd": {"pipeline": "p"}}')
    s = Settings()
    assert s.limits.max_size == 512 and s.webhooks.webhook_timeout_seconds == 3.5
    assert s.services.redis_url == "redis://elsewhere:6379/2"
    assert list(s.model_specs) == ["sd"]
    # A value given in code wins over the environment's, by the same flat name.
    assert Settings(max_size=256).limits.max_size == 256


def test_the_old_unprefixed_spellings_and_the_prefixed_ones_both_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("DAIKON_REDIS_URL", "redis://prefixed:1/0")
    monkeypatch.setenv("DATABASE_URL", "postgres://u@h/db")
    s = Settings()
    assert s.services.redis_url == "redis://prefixed:1/0"
    assert s.sqlalchemy_url == "postgresql+psycopg://u@h/db"
    assert {"REDIS_URL", "DAIKON_REDIS_URL", "DATABASE_URL", "DAIKON_API_THREADS"} <= (
        environment_variables()
    )


def test_long_requests_must_stay_below_the_api_threads() -> None:
    with pytest.raises(
        ValidationError, match="DAIKON_MAX_LONG_REQUESTS must be below DAIKON_API_THREADS"
    ):
        Settings(max_long_requests=128, api_threads=128)
    assert Settings(max_long_requests=127, api_threads=128).api.max_long_requests == 127


def test_an_unknown_setting_in_code_is_refused_not_ignored() -> None:
    with pytest.raises(ValidationError, match="max_sise"):
        Settings(max_sise=64)


def test_evolve_changes_only_what_it_names() -> None:
    base = Settings(max_steps=40)
    changed = base.evolve(webhook_timeout_seconds=0.5)
    assert changed.webhooks.webhook_timeout_seconds == 0.5
    assert changed.limits.max_steps == 40 and base.webhooks.webhook_timeout_seconds == 15.0
    assert set(GROUP_OF) == {
        n for g in Settings.model_fields for n in getattr(Settings(), g).__class__.model_fields
    }


def test_a_tenants_highest_priority_lies_between_the_default_and_the_highest_priority() -> None:
    """DAIKON_TENANT_MAX_PRIORITY's bounds are daikon/contract.py's (settings cannot import it)."""
    from daikon.contract import DEFAULT_PRIORITY, PRIORITY_MAX
    from server.settings import Limits

    field = Limits.model_fields["tenant_max_priority"]
    bounds = {type(m).__name__: m for m in field.metadata}
    assert (bounds["Ge"].ge, bounds["Le"].le) == (DEFAULT_PRIORITY, PRIORITY_MAX)
    assert field.default == DEFAULT_PRIORITY

"""compose.yaml cannot be run here (no Docker engine), so it is kept correct by reading: this
test reads it the way Compose would and checks what a typo would break."""

from __future__ import annotations

from typing import Any

import yaml

from server.settings import environment_variables
from tests.stack import ROOT


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "compose.yaml").read_text()))


def test_the_production_shape_is_complete() -> None:
    services = compose()["services"]
    assert {
        "redis",
        "postgres",
        "minio",
        "createbucket",
        "migrate",
        "api",
        "worker",
        "webhooks",
    } <= set(services)
    for name in ("redis", "postgres", "minio", "api"):
        assert "healthcheck" in services[name], name
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["migrate"]["command"][-2:] == ["upgrade", "head"] or "upgrade head" in str(
        services["migrate"]["command"]
    )


def test_dependencies_name_real_services_and_conditions() -> None:
    services = compose()["services"]
    for name, service in services.items():
        depends = service.get("depends_on", {})
        for target, rule in depends.items() if isinstance(depends, dict) else []:
            assert target in services, f"{name} depends on unknown {target}"
            assert rule["condition"] in (
                "service_healthy",
                "service_completed_successfully",
                "service_started",
            )


def test_every_daikon_variable_given_to_a_service_is_read() -> None:
    fields = environment_variables()
    given: set[str] = set()
    for service in compose()["services"].values():
        env = service.get("environment") or {}
        names = env.keys() if isinstance(env, dict) else (e.split("=")[0] for e in env)
        given |= {n for n in names if n.startswith("DAIKON_")}
    assert given, "no service gets any DAIKON_ setting"
    unknown = given - fields
    assert not unknown, f"compose.yaml sets variables nothing reads: {sorted(unknown)}"

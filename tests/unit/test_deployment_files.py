"""compose.yaml and the Dockerfile refer only to things that exist (no Docker engine runs here)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

from feeder.settings import FeederSettings

ROOT = Path(__file__).resolve().parents[2]


def entry_points() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["scripts"])


def test_compose_services_use_real_entry_points_and_settings() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert "redis" in services and "healthcheck" in services["redis"]
    known_settings = {f"MD_{name.upper()}" for name in FeederSettings.model_fields}
    feeders = 0
    for name, service in services.items():
        if name == "redis":
            continue
        command = service["command"]
        assert command[0] in entry_points(), f"{name}: {command[0]} is not a console script of the package"
        for var in service.get("environment", {}):
            assert var in known_settings, f"{name}: {var} is not a setting"
        if command[0] == "md-feeder":
            feeders += 1
            assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    exchanges = {services[n]["environment"]["MD_EXCHANGES"] for n in ("feeder-upbit", "feeder-binance")}
    assert exchanges == {"upbit", "binance"}
    assert services["sim"]["profiles"] == ["demo"] and services["demo-feeder"]["profiles"] == ["demo"]
    assert feeders == 3
    # the demo feeder shares the Redis of the real ones: never their keys, and its books say they are simulated
    # (was: the demo profile wrote simulated books under the real prefix md, into the keys engines read)
    for name, service in services.items():
        env = service.get("environment", {})
        if service.get("command", [""])[0] != "md-feeder":
            continue
        from_sim = "ws://sim:" in str(env.get("MD_UPBIT_URL", "")) + str(env.get("MD_BINANCE_URL", ""))
        if from_sim:
            assert env.get("MD_PREFIX", "md") != "md", f"{name}: simulated books under the real prefix"
            assert str(env.get("MD_SIMULATED")).lower() == "true", f"{name}: simulated books not marked"
        else:
            assert str(env.get("MD_SIMULATED", "false")).lower() == "false", name


def test_dockerfile_is_slim_non_root_without_test_extras() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "python:3.11-slim" in text
    assert "USER md" in text
    assert "[test]" not in text
    assert (
        "gcc" in text.split("FROM python:3.11-slim\n", 1)[0]
    ), "the build stage compiles feeder/exchanges/_units.c"
    assert "COPY pyproject.toml setup.py" in text
    cmd = text.split("CMD", 1)[1]
    assert any(f'"{ep}"' in cmd for ep in entry_points())


def test_env_example_lists_every_setting_with_its_default() -> None:
    lines = [ln for ln in (ROOT / ".env.example").read_text().splitlines() if ln and not ln.startswith("#")]
    listed = dict(ln.split("=", 1) for ln in lines)
    for name, field in FeederSettings.model_fields.items():
        var = f"MD_{name.upper()}"
        assert var in listed, f"{var} missing from .env.example"
        default = field.default
        if name == "feeder_id":
            continue  # computed per host
        shown = "" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        assert listed[var] == shown, f"{var}: .env.example says {listed[var]!r}, the default is {shown!r}"


def test_operations_doc_gives_exactly_the_acl_lines_the_tests_use() -> None:
    """docs/operations.md's least-privilege lines are the ones tests/support/acl_users.py creates, so the tested
    lines and the documented ones cannot drift apart."""
    from tests.support.acl_users import USERS

    doc = (ROOT / "docs" / "operations.md").read_text()
    documented = {}
    for line in doc.splitlines():
        words = line.split()
        if words[:2] == ["ACL", "SETUSER"]:
            assert words[3:6] == ["reset", "on", ">PASSWORD"], line
            documented[words[2]] = " ".join(words[6:])
    assert documented == USERS

"""MD_EVENT_LOOP: asyncio's loop by default, uvloop where installed with auto, a clear refusal without it."""

from __future__ import annotations

import asyncio
import importlib.util
import sys

import pytest

from feeder import event_loop
from feeder.settings import FeederSettings

pytestmark = pytest.mark.unit


def test_auto_takes_uvloop_when_installed_and_runs_on_it() -> None:
    assert importlib.util.find_spec("uvloop") is not None  # the test extra installs it, as the image does
    name, factory = event_loop.loop_factory("auto")
    assert name == "uvloop" and factory is not None

    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert event_loop.run(which(), "auto").startswith("uvloop")
    assert event_loop.run(which(), "asyncio").startswith("asyncio")


def test_without_uvloop_auto_falls_back_and_uvloop_by_name_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(event_loop.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert event_loop.loop_factory("auto") == ("asyncio", None)

    async def nothing() -> None:
        return None

    with pytest.raises(ValueError, match=r"MD_EVENT_LOOP: uvloop is not installed"):
        event_loop.run(nothing(), "uvloop")


def test_the_setting_names_its_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    from client import SettingsError, load_settings

    assert load_settings(FeederSettings).event_loop == "asyncio"  # the default

    monkeypatch.setenv("MD_EVENT_LOOP", "tokio")
    with pytest.raises(SettingsError, match="MD_EVENT_LOOP"):
        load_settings(FeederSettings)

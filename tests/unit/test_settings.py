"""Settings: environment variables with the MD_ prefix; a bad value names the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from client import ClientSettings, RedisMarketDataProvider, SettingsError, load_settings
from client.masking import mask_url


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(ClientSettings)
    assert (s.redis_url, s.prefix, s.max_age, s.strict) == ("redis://127.0.0.1:6379/0", "md", None, False)


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MD_REDIS_URL", "rediss://engine:s3cret@cache.internal:6380/2")
    monkeypatch.setenv("MD_PREFIX", "mdtest")
    monkeypatch.setenv("MD_MAX_AGE", "2.5")
    monkeypatch.setenv("MD_STRICT", "true")
    s = load_settings(ClientSettings)
    assert (s.redis_url, s.prefix, s.max_age, s.strict) == (
        "rediss://engine:s3cret@cache.internal:6380/2",
        "mdtest",
        2.5,
        True,
    )


def test_dotenv_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("MD_PREFIX=fromfile\nMD_MAX_AGE=off\n")
    s = load_settings(ClientSettings)
    assert s.prefix == "fromfile" and s.max_age is None


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MD_MAX_AGE", "abc"),
        ("MD_MAX_AGE", "-1"),
        ("MD_REDIS_URL", "http://localhost:6379"),
        ("MD_REDIS_URL", "redis://:6379"),
        ("MD_REDIS_URL", "redis://localhost:99999"),
        ("MD_PREFIX", "md:x"),
        ("MD_STRICT", "maybe"),
        ("MD_REDIS_TIMEOUT", "0"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, var: str, value: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=var):
        load_settings(ClientSettings)
    with pytest.raises(SettingsError, match=var):
        RedisMarketDataProvider()


def test_tls_and_acl_urls_build_matching_clients(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    p = RedisMarketDataProvider.from_url("rediss://engine:s3cret@cache.internal:6380/2")
    kwargs = p._sync().connection_pool.connection_kwargs
    assert p._sync().connection_pool.connection_class.__name__ == "SSLConnection"
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("engine", "s3cret", 2)
    assert "s3cret" not in mask_url(p.settings.redis_url)
    assert "s3cret" not in repr(p)

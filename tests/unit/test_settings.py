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


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MD_REDIS_SENTINELS": "s1:26379,nohost"}, "MD_REDIS_SENTINELS"),
        (
            {"MD_REDIS_SENTINELS": "s1:26379", "MD_REDIS_CLUSTER": "true"},
            "MD_REDIS_CLUSTER and MD_REDIS_SENTINELS",
        ),
        ({"MD_REDIS_SENTINEL_TLS": "true"}, "MD_REDIS_SENTINEL_TLS needs MD_REDIS_SENTINELS"),
        (
            {
                "MD_REDIS_SENTINEL_TLS": "true",
                "MD_REDIS_SENTINELS": "s1:26379",
                "MD_REDIS_URL": "redis://p/0",
            },
            "rediss://",
        ),
        ({"MD_REDIS_TLS_CA_FILE": "/no/such/ca.crt", "MD_REDIS_URL": "rediss://p/0"}, "MD_REDIS_TLS_CA_FILE"),
        ({"MD_REDIS_READ_URL": "http://replica:6379"}, "MD_REDIS_READ_URL"),
    ],
)
def test_bad_topology_settings_stop_start_up_naming_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], named: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=named):
        load_settings(ClientSettings)


def test_sentinel_tls_reaches_the_sentinels_with_the_tls_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The Sentinels' own connections get TLS and the same files as the servers, only when asked for."""
    from client.topology import sync_client

    monkeypatch.chdir(tmp_path)
    ca = tmp_path / "ca.crt"
    ca.write_text("not parsed until a connection is made")
    base = {"redis_url": "rediss://primary/0", "redis_sentinels": "127.0.0.1:1", "redis_tls_ca_file": str(ca)}
    for tls in (True, False):
        client = sync_client(load_settings(ClientSettings, **base, redis_sentinel_tls=tls))
        pool = client.connection_pool  # the primary's: TLS in both cases
        assert pool.connection_class.__name__ == "SentinelManagedSSLConnection", pool.connection_class
        assert pool.connection_kwargs["ssl_ca_certs"] == str(ca)
        manager = client.connection_pool.sentinel_manager
        kwargs = manager.sentinels[0].connection_pool.connection_kwargs
        assert (manager.sentinels[0].connection_pool.connection_class.__name__ == "SSLConnection") is tls
        assert (kwargs.get("ssl_ca_certs") == str(ca)) is tls
        client.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"MD_REDIS_URL": "nonsense"},
            "MD_REDIS_URL: must start with redis://, rediss:// or unix:// (got 'nonsense')",
        ),
        (
            {"MD_REDIS_URL": "redis://u:pw@h:99999999/0"},
            "MD_REDIS_URL: the port must be a number from 1 to 65535 (got 'redis://u:***@h:99999999/0')",
        ),
        ({"MD_SHARD": "3/2"}, "MD_SHARD: K/N needs 1 <= K <= N (got '3/2')"),
        (
            {"MD_EXCHANGES": "kraken"},
            "MD_EXCHANGES: must be a comma-separated subset of upbit, binance, bithumb, coinone, bybit, okx (got 'kraken')",
        ),
        ({"MD_UPBIT_URL": "http://x"}, "MD_UPBIT_URL: must be a ws:// or wss:// URL (got 'http://x')"),
        (
            {"MD_HEARTBEAT_TTL": "0.5"},
            "MD_HEARTBEAT_TTL (0.5 s) must be longer than MD_HEARTBEAT_INTERVAL (1 s)",
        ),
        (
            {"MD_METRICS_PORT": "99999"},
            "MD_METRICS_PORT: expected a port number from 0 to 65535, or nothing (off) (got '99999')",
        ),
    ],
)
def test_a_bad_setting_names_the_variable_and_the_rule_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    from feeder.settings import FeederSettings

    monkeypatch.chdir(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(FeederSettings)
    message = str(caught.value)
    assert expected in message
    assert "Value error" not in message and message.count("got ") <= 1  # the rule once, the value once
    assert "pw" not in message  # a password is never shown


def test_an_authentication_failure_says_it_is_one() -> None:
    import redis.exceptions

    from client.errors import redis_failure

    for error in (
        redis.exceptions.AuthenticationError("Authentication required."),
        redis.exceptions.ResponseError("HELLO must be called with the client already authenticated"),
        redis.exceptions.AuthenticationError("invalid username-password pair or user is disabled."),
    ):
        text = redis_failure(error)
        assert text.startswith("authentication failed") and "redis://USER:PASSWORD@" in text
    assert redis_failure(redis.exceptions.ConnectionError("Connection refused")) == "Connection refused"

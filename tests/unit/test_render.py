"""How md shows numbers, ages, spreads and URLs; feeder key parsing."""

from __future__ import annotations

import pytest

import md_cli.render as render
from client.errors import InvalidSymbolError
from client.layout import RedisLayout
from client.masking import mask_url
from md_cli.render import fmt_age, fmt_num

LAYOUT = RedisLayout("md")


# ------------------------------------------------------------------------------------------------- helpers
@pytest.mark.parametrize(
    ("value", "text"),
    [
        (137001000.0, "137001000"),
        (0.03656812, "0.03656812"),
        (1e-05, "0.00001"),
        (70000.02 - 70000.01, "0.01"),
        (0.1 + 0.2, "0.3"),
        (1.23e-10, "0.000000000123"),
        (0.00000912, "0.00000912"),
        (9.110880000000001e-06, "0.00000911088"),
        (0.123456789123, "0.12345679"),
        (12345.123456789, "12345.12345679"),
        (2.5e20, "250000000000000000000"),
        (-1000.0, "-1000"),
        (0.0, "0"),
        (1e300, "1E+300"),
        (None, "-"),
    ],
)
def test_fmt_num(value: float | None, text: str) -> None:
    assert fmt_num(value) == text


def test_fmt_spread_has_no_float_noise() -> None:
    assert render.fmt_spread(70000.01, 70000.02) == "0.01"
    assert render.fmt_spread(0.00000912, 0.00000913) == "0.00000001"
    assert render.fmt_spread(137001000.0, 137002000.0) == "1000"
    assert render.fmt_spread(101.0, 100.5) == "-0.5"  # a crossed book shows as such


def test_fmt_age() -> None:
    assert [fmt_age(s) for s in (None, 0.25, 42.9, 303, 7800, 270000, -0.5)] == [
        "-", "0.2s", "42s", "5m03s", "2h10m", "3d03h", "-0.5s",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("rediss://engine:s3cret@cache.internal:6380/2", "rediss://engine:***@cache.internal:6380/2"),
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://token@host/0", "redis://***@host/0"),
        ("redis://host/0?password=s3cret&db=1", "redis://host/0?password=***&db=1"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_parse_feeder_key() -> None:
    assert LAYOUT.parse_feeder_key(b"md:feeder:host-1:42") == "host-1:42"
    assert LAYOUT.parse_feeder_key(LAYOUT.feeder_key("f1")) == "f1"
    for bad in ("md:upbit:KRW-BTC", "mdx:feeder:f1", "md:feeder:", "md:feeder:a b"):
        with pytest.raises(InvalidSymbolError):
            LAYOUT.parse_feeder_key(bad)

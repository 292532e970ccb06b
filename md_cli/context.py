"""What every ``md`` command gets (`Context`), how it reports a failure (`CliError`), and the exit codes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import redis

from client import ClientSettings, RedisMarketDataProvider
from client.layout import RedisLayout

EXIT_OK = 0
EXIT_NOTHING = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class CliError(Exception):
    """A failure to report as one ``md: ...`` line on stderr with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Context:
    """What every command needs: its arguments and the Redis it reads."""

    args: argparse.Namespace
    settings: ClientSettings
    provider: RedisMarketDataProvider
    client: redis.Redis
    where: str  # the Redis URL with its password masked, for messages

    @property
    def layout(self) -> RedisLayout:
        return self.provider.layout

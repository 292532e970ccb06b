"""The feeder's liveness record, ``<prefix>:feeder:<id>``: heartbeat, counters and connection states.

Readers treat a feeder's books as live only while this hash exists and its ``state`` is not ``offline``; it
expires ``heartbeat_ttl`` seconds after the last heartbeat, so a killed feeder's books go stale within that
time without anyone having to notice the death. A clean shutdown writes ``state=offline`` at once and keeps the
record (with its final counters) for an hour so that operators can read why it stopped.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

import redis.asyncio

from client.layout import FEEDER_OFFLINE, FEEDER_STATE_FIELD, RedisLayout, arun_flow

log = logging.getLogger(__name__)

OFFLINE_KEEP_SECONDS = 3600
StatusFields = Mapping[str, str | int | float]


class FeederStatus:
    """Writes the status hash; `fields` is called for the current counters at every heartbeat."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        layout: RedisLayout,
        feeder_id: str,
        fields: Callable[[], StatusFields],
        *,
        ttl: float,
    ) -> None:
        self._redis = client
        self._key = layout.feeder_key(feeder_id)
        self._fields = fields
        self._ttl_ms = int(ttl * 1000)
        self._started = time.time()
        self._ok = True

    def _record(self, state: str) -> dict[str, str | int | float]:
        record: dict[str, str | int | float] = {
            FEEDER_STATE_FIELD: state,
            "heartbeat": round(time.time(), 3),
            "started": round(self._started, 3),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "ttl_ms": self._ttl_ms,
        }
        record.update(self._fields())
        return record

    async def beat(self, state: str = "running") -> bool:
        """One heartbeat; a Redis error is logged once per outage and reported as False, never raised."""
        record = self._record(state)
        flat = [x for item in record.items() for x in item]
        try:
            await arun_flow(
                self._redis, _single_round([("HSET", self._key, *flat), ("PEXPIRE", self._key, self._ttl_ms)])
            )
        except (redis.exceptions.RedisError, OSError) as exc:
            if self._ok:
                log.warning("heartbeat to Redis failed (%s); will keep trying", exc)
            self._ok = False
            return False
        self._ok = True
        return True

    async def go_offline(self) -> bool:
        """Mark this feeder offline now: its books stop being served as live at once."""
        record = self._record(FEEDER_OFFLINE)
        flat = [x for item in record.items() for x in item]
        try:
            await arun_flow(
                self._redis,
                _single_round([("HSET", self._key, *flat), ("EXPIRE", self._key, OFFLINE_KEEP_SECONDS)]),
            )
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning(
                "could not mark the feeder offline (%s); its books go stale when the heartbeat expires", exc
            )
            return False
        return True


def _single_round(commands: list[tuple[object, ...]]):  # type: ignore[no-untyped-def]
    replies = yield commands
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies

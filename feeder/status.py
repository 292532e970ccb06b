"""`FeederStatus`: keeps this feeder's record ``<prefix>:feeder:<id>`` (heartbeat, counters) in Redis.

What the record holds and how readers judge it is the layout's (`client.layout.feeder_record`); this module
only decides when to write it: a heartbeat every ``MD_HEARTBEAT_INTERVAL`` seconds while running, and the
offline record on a clean shutdown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis.asyncio
import redis.exceptions

from client.layout import OFFLINE, RUNNING, FeederRecord, RedisLayout, heartbeat_flow, offline_flow
from client.layout.feeder_record import Counters
from client.transport import arun_flow

log = logging.getLogger(__name__)

StatusFields = Counters


class FeederStatus:
    """Writes the record; `fields` is called for the current counters at every heartbeat."""

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
        self._layout = layout
        self._id = feeder_id
        self._fields = fields
        self._ttl_ms = int(ttl * 1000)
        self._started = time.time()
        self._ok = True

    def _record(self, state: str) -> FeederRecord:
        return FeederRecord(state, self._started, self._ttl_ms, self._fields())

    async def beat(self, state: str = RUNNING) -> bool:
        """One heartbeat; a Redis error is logged once per outage and reported as False, never raised."""
        try:
            await arun_flow(
                self._redis, heartbeat_flow(self._layout, self._id, self._record(state), self._ttl_ms)
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
        try:
            await arun_flow(self._redis, offline_flow(self._layout, self._id, self._record(OFFLINE)))
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning(
                "could not mark the feeder offline (%s); its books go stale when the heartbeat expires", exc
            )
            return False
        return True

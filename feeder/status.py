"""`FeederStatus`: keeps this feeder's record ``<prefix>:feeder:<id>`` (heartbeat, counters) in Redis.

What the record holds and how readers judge it is the layout's (`client.layout.feeder_record`); this module
decides when to write it:

- at start, `claim` makes sure no other running process uses this id: a record whose heartbeat still moves
  belongs to a live twin, and this feeder stops with `FeederIdInUseError`; a record left by a predecessor that
  died (its heartbeat stands still) or stopped cleanly is taken over;
- `beat` every ``MD_HEARTBEAT_INTERVAL`` seconds, but only while the writer's round trips succeed: a feeder
  whose writes fail (out of memory, read-only replica, no permission) stops vouching for its books, which go
  not-live when the record expires. A heartbeat that finds its record gone reports that Redis lost data
  (restart, flush, fail-over), so that the writer rewrites every book; one that finds the record taken over
  raises `FeederIdInUseError`;
- the offline record on a clean shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable

import redis.asyncio
import redis.exceptions

from client.layout import (
    OFFLINE,
    RECREATED,
    RUNNING,
    TAKEN_OVER,
    Beat,
    FeederRecord,
    RedisLayout,
    feeder_record_flow,
    heartbeat_flow,
    offline_flow,
    record_owner,
)
from client.layout.feeder_record import Counters
from client.transport import arun_flow

log = logging.getLogger(__name__)

StatusFields = Counters
REDIS_ERRORS = (redis.exceptions.RedisError, OSError)


class FeederIdInUseError(RuntimeError):
    """Another running feeder process uses this feeder id: two writers under one name would vouch for each
    other's books."""


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
        writing: Callable[[], bool] = lambda: True,
        on_loss: Callable[[str], None] = lambda why: None,
        identify: bool = True,
    ) -> None:
        self._redis = client
        self._layout = layout
        self._id = feeder_id
        self._fields = fields
        self._writing = writing  # do the writer's round trips succeed?
        self._on_loss = on_loss  # Redis lost this record, or is another server: it lost the books as well
        self._identify = identify  # ask each heartbeat's server for its run id (not on Cluster: one per node)
        self._server: str | None = None  # the run id of the server that took the last heartbeat
        self._identified = True  # False once INFO was refused (logged once)
        self._ttl_ms = int(ttl * 1000)
        self._started = time.time()
        self.instance = secrets.token_hex(8)
        self._ok = True
        self._vouching = True
        self._beaten = False

    def _record(self, state: str) -> FeederRecord:
        return FeederRecord(state, self._started, self._ttl_ms, self.instance, self._fields())

    async def claim(self, interval: float) -> None:
        """Take this feeder's id, or raise FeederIdInUseError if another running process has it.

        A record in state running is watched for two heartbeat intervals: if its heartbeat moves, its owner
        is alive. Redis errors are left to the caller (the feeder starts anyway and keeps trying).
        """
        fields = await arun_flow(self._redis, feeder_record_flow(self._layout, self._id))
        state, owner, heartbeat = record_owner(fields)
        if fields is not None and state != OFFLINE and owner != self.instance:
            deadline = time.monotonic() + 2 * interval + 0.5
            while time.monotonic() < deadline:
                await asyncio.sleep(min(interval / 2, 0.25))
                now = await arun_flow(self._redis, feeder_record_flow(self._layout, self._id))
                now_state, now_owner, now_heartbeat = record_owner(now)
                if now is None or now_state == OFFLINE:
                    break
                if now_heartbeat != heartbeat or now_owner != owner:
                    host = (now or {}).get("host", "?")
                    pid = (now or {}).get("pid", "?")
                    raise FeederIdInUseError(
                        f"feeder id {self._id!r} is in use by a running feeder (host {host}, pid {pid}): "
                        "give this one another MD_FEEDER_ID"
                    )
            log.info("feeder %s: taking over the record of a predecessor that stopped beating", self._id)
        beat = await arun_flow(
            self._redis,
            heartbeat_flow(
                self._layout, self._id, self._record(RUNNING), self._ttl_ms, take_over=True,
                identify=self._identify,
            ),
        )  # fmt: skip
        self._note_server(beat)
        self._beaten = True

    async def beat(self, state: str = RUNNING) -> bool:
        """One heartbeat, if the writer's round trips succeed; False when nothing was written.

        Redis errors are logged once per outage and reported as False, never raised; a record taken over by
        another process raises FeederIdInUseError.
        """
        if not self._writing():
            if self._vouching:
                log.warning(
                    "feeder %s: writes to Redis fail, so no heartbeat: its books go stale within %.1fs",
                    self._id,
                    self._ttl_ms / 1000,
                )
                self._vouching = False
            return False
        if not self._vouching:
            log.info("feeder %s: writes succeed again, heartbeat resumes", self._id)
            self._vouching = True
        try:
            beat = await arun_flow(
                self._redis,
                heartbeat_flow(
                    self._layout, self._id, self._record(state), self._ttl_ms, identify=self._identify
                ),
            )
        except REDIS_ERRORS as exc:
            if self._ok:
                log.warning("heartbeat to Redis failed (%s); will keep trying", exc)
            self._ok = False
            return False
        if beat.code == TAKEN_OVER:
            raise FeederIdInUseError(f"another feeder process took over the feeder id {self._id!r}")
        changed = self._note_server(beat)
        if changed is not None:
            self._on_loss(changed)
        elif beat.code == RECREATED and self._beaten:
            self._on_loss("Redis lost this feeder's record (restart, flush or fail-over)")
        self._beaten = True
        self._ok = True
        return True

    def _note_server(self, beat: Beat) -> str | None:
        """Remember the run id of the server that took a heartbeat; why the books must be rewritten when it is
        another server than the last one (its data is a replica's, or nothing), else None."""
        run_id = beat.run_id
        if run_id is None:
            if beat.unidentified is not None and self._identified:
                log.warning(
                    "feeder %s: Redis does not tell its run id (%s; a feeder's ACL needs +info), so a different "
                    "server behind the same address goes unnoticed; one that lost this feeder's record does not",
                    self._id, beat.unidentified,
                )  # fmt: skip
                self._identified = False
            return None
        previous, self._server = self._server, run_id
        if previous is None or previous == run_id:
            return None
        return f"Redis at the same address is a different server now (run id {previous[:8]}… → {run_id[:8]}…)"

    async def go_offline(self) -> bool:
        """Mark this feeder offline now: its books stop being served as live at once."""
        try:
            await arun_flow(self._redis, offline_flow(self._layout, self._id, self._record(OFFLINE)))
        except REDIS_ERRORS as exc:
            log.warning(
                "could not mark the feeder offline (%r); its books go stale when the heartbeat expires", exc
            )
            return False
        return True

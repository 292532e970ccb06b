"""The feeder record ``<prefix>:feeder:<id>``: the fields a feeder writes and the ones readers rely on.

Readers treat a feeder's books as live only while this hash exists and its ``state`` is not ``offline``; the
feeder pushes its expiry out with every heartbeat, so a killed feeder's books go stale within that time
without anyone having to notice the death. A clean shutdown writes ``state=offline`` at once and keeps the
record (with its final counters) for `OFFLINE_KEEP_SECONDS` so that operators can read why it stopped.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STATE_FIELD = "state"
HEARTBEAT_FIELD = "heartbeat"  # epoch seconds of the feeder's last heartbeat (shown by `md status`)
INSTANCE_FIELD = "instance"  # a token drawn by each feeder process: two processes with one id are told apart
RUNNING = "running"
OFFLINE = "offline"
OFFLINE_KEEP_SECONDS = 3600

Counters = Mapping[str, str | int | float]


@dataclass(frozen=True)
class FeederRecord:
    """One write of the record: liveness fields first, then the feeder's counters (free-form, for people)."""

    state: str
    started: float  # epoch seconds the feeder started
    ttl_ms: int  # the record's expiry after each heartbeat
    instance: str  # this process's token (see INSTANCE_FIELD); the heartbeat script writes it
    counters: Counters = field(default_factory=dict)
    heartbeat: float = field(default_factory=time.time)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    def flat(self) -> list[str | int | float]:
        """Field, value, field, value… for HSET (the instance field is the script's to write)."""
        return [x for item in self.as_dict().items() for x in item]

    def as_dict(self) -> dict[str, str | int | float]:
        fields: dict[str, str | int | float] = {
            STATE_FIELD: self.state,
            HEARTBEAT_FIELD: round(self.heartbeat, 3),
            "started": round(self.started, 3),
            "host": self.host,
            "pid": self.pid,
            "ttl_ms": self.ttl_ms,
        }
        fields.update(self.counters)
        return fields


LATENCY_FIELD = "latency_ms"  # latency_ms:<exchange>:<stage> = "p50 0.41 p99 2.3" (milliseconds)


def stage_latency_field(exchange: str, stage: str) -> str:
    """The record field of one exchange's p50/p99 for one stage of a book's way (`feeder.latency`)."""
    return f"{LATENCY_FIELD}:{exchange}:{stage}"


def stage_latency(fields: Mapping[str, str]) -> dict[str, dict[str, dict[str, float]]]:
    """The stage latency fields of a record read back, as ``{exchange: {stage: {"p50": .., "p99": ..}}}``;
    a field that does not parse is left out (a reader shows nothing rather than something wrong)."""
    found: dict[str, dict[str, dict[str, float]]] = {}
    for name, value in fields.items():
        parts = name.split(":")
        words = value.split()
        if len(parts) != 3 or parts[0] != LATENCY_FIELD or len(words) != 4 or words[::2] != ["p50", "p99"]:
            continue
        try:
            p50, p99 = float(words[1]), float(words[3])
        except ValueError:
            continue
        found.setdefault(parts[1], {})[parts[2]] = {"p50": p50, "p99": p99}
    return found


def feeder_alive(state: Any) -> bool:
    """Liveness of a feeder from its record's ``state``: None (expired), ``offline`` or an error are not."""
    if isinstance(state, bytes):
        return state != b"offline"
    if isinstance(state, str):
        return state != OFFLINE
    return False


def split_record(fields: Mapping[str, str]) -> tuple[str | None, str | None, dict[str, str]]:
    """(state, heartbeat, the other fields) of a record read back with HGETALL (decoded to text)."""
    rest = dict(fields)
    return rest.pop(STATE_FIELD, None), rest.pop(HEARTBEAT_FIELD, None), rest


def record_owner(fields: Mapping[str, str] | None) -> tuple[str | None, str | None, float | None]:
    """(state, instance, heartbeat time) of a record read back as text: who holds this feeder id."""
    if not fields:
        return None, None, None
    try:
        heartbeat = float(fields.get(HEARTBEAT_FIELD, ""))
    except ValueError:
        heartbeat = None
    return fields.get(STATE_FIELD), fields.get(INSTANCE_FIELD), heartbeat

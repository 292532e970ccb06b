"""Faults on command: drop, stall, resume, garbage, error replies, shutdown announcements.

Each is aimed at all open sessions of an exchange, one connection id, and/or the sessions subscribed to a
symbol, and returns how many sessions it hit. `Faults` is a base of `ExchangeServer`: the exchange-specific
frames (what garbage, an error reply, a shutdown look like) come from the exchange's server.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Generic

from exchange_sim.session import Outgoing, Session, SubT


class Faults(ABC, Generic[SubT]):
    """The fault commands of one exchange's server."""

    sessions: dict[int, Session[SubT]]
    counters: dict[str, int]

    @abstractmethod
    def normalise_symbol(self, symbol: str) -> str: ...

    @abstractmethod
    def garbage_payload(self) -> bytes | str:
        """A frame a parser must reject: truncated JSON in the exchange's frame type."""

    @abstractmethod
    def error_items(
        self, session: Session[SubT], name: str | None, code: int | None, message: str | None
    ) -> list[Outgoing]:
        """The exchange's error reply (and a close, where the exchange closes after an error)."""

    @abstractmethod
    def shutdown_items(self, session: Session[SubT]) -> list[Outgoing]:
        """What the exchange sends when it announces a restart."""

    @abstractmethod
    def notify(self) -> None: ...

    @abstractmethod
    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None: ...

    def targets(self, connection: int | None = None, symbol: str | None = None) -> list[Session[SubT]]:
        """The open sessions a fault aims at: all, one connection id, and/or those subscribed to a symbol."""
        sessions = [s for s in self.sessions.values() if not s.closing]
        if connection is not None:
            sessions = [s for s in sessions if s.id == connection]
        if symbol is not None:
            key = self.normalise_symbol(symbol)
            sessions = [s for s in sessions if any(sub.symbol == key for sub in s.subs.values())]
        return sessions

    async def drop(self, connection: int | None = None, symbol: str | None = None) -> int:
        """Abort the targeted TCP connections (no close frame); returns once their sessions are gone."""
        sessions = self.targets(connection, symbol)
        for session in sessions:
            session.abort()
        self.counters["faults"] += bool(sessions)
        ids = {s.id for s in sessions}
        await self.wait_until(lambda: not ids & self.sessions.keys(), timeout=5.0)
        return len(sessions)

    def stall(
        self, seconds: float | None = None, connection: int | None = None, symbol: str | None = None
    ) -> int:
        sessions = self.targets(connection, symbol)
        for session in sessions:
            session.stall(seconds)
        self.counters["faults"] += bool(sessions)
        self.notify()
        return len(sessions)

    def resume(self, connection: int | None = None, symbol: str | None = None) -> int:
        sessions = [s for s in self.targets(connection, symbol) if s.stalled]
        for session in sessions:
            session.resume()
        return len(sessions)

    def send_garbage(
        self, payload: bytes | str | None = None, connection: int | None = None, symbol: str | None = None
    ) -> int:
        sessions = self.targets(connection, symbol)
        for session in sessions:
            session.enqueue(self.garbage_payload() if payload is None else payload)
        self.counters["faults"] += bool(sessions)
        return len(sessions)

    def send_error(
        self,
        *,
        name: str | None = None,
        code: int | None = None,
        message: str | None = None,
        connection: int | None = None,
        symbol: str | None = None,
    ) -> int:
        sessions = self.targets(connection, symbol)
        for session in sessions:
            for item in self.error_items(session, name, code, message):
                session.enqueue(item)
        self.counters["faults"] += bool(sessions)
        return len(sessions)

    def announce_shutdown(self, connection: int | None = None, symbol: str | None = None) -> int:
        sessions = self.targets(connection, symbol)
        for session in sessions:
            for item in self.shutdown_items(session):
                session.enqueue(item)
        self.counters["faults"] += bool(sessions)
        return len(sessions)

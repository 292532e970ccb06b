"""Flows: every round trip to Redis, written once, for the sync and the asyncio client alike.

A flow is a generator that yields the list of commands of one round trip and is sent back their replies
(errors as values, in order); what it returns is the result. It does no I/O itself: `client.transport` drives
it with a sync or an asyncio client, so the logic that matters (which commands, how replies are read, what a
NOSCRIPT means) cannot differ between the two. A driver may also throw a connection error into the flow at
its ``yield``, which lets a flow turn "Redis is away" into a result of its own.

Flows compose with ``yield from``: the provider's read is resolve, then read books, then feeder states.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Generator, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

import orjson
from redis.exceptions import AskError, AuthenticationError, MovedError, NoPermissionError, NoScriptError

from client.errors import CorruptSnapshotError, MarketDataPermissionError, RedisCommandError
from client.layout.codec import READ_FIELDS, Command, EncodedBook
from client.layout.feeder_record import OFFLINE, OFFLINE_KEEP_SECONDS, STATE_FIELD, FeederRecord
from client.layout.names import RedisLayout
from client.layout.scripts import (
    HEARTBEAT,
    MARK_DOWN,
    MARK_DOWN_SHARDED,
    PACE,
    SCRIPTS,
    WRITE_BOOK,
    WRITE_BOOK_HISTORY,
    WRITE_BOOK_HISTORY_SHARDED,
    WRITE_BOOK_SHARDED,
)
from client.models import OrderBookSnapshot

T = TypeVar("T")
Flow = Generator[list[Command], list[Any], T]
"""A flow that returns a `T`: yields the commands of each round trip, is sent their replies."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# Error replies that say Redis refuses writes as a whole (not this one key): a writer whose books hit one of
# these must stop vouching for them (its heartbeat stops) and retry; any other error reply (WRONGTYPE, a script
# error on a hand-edited hash) costs that key only.
_REDIS_WIDE = (
    "OOM", "READONLY", "NOPERM", "MASTERDOWN", "LOADING", "BUSY", "CLUSTERDOWN", "TRYAGAIN", "MISCONF",
    "NOREPLICAS", "MOVED", "ASK", "CROSSSLOT", "NOAUTH", "WRONGPASS",
)  # fmt: skip


_ACL_PHRASES = ("can't run this command", "no permissions to", "No permissions to access")


def refuses_all(error: BaseException) -> bool:
    """True when an error reply means Redis refuses every write (read-only replica, out of memory, ACL…)."""
    error = getattr(error, "error", error)  # a RedisCommandError: judge what Redis said
    if isinstance(error, NoScriptError):
        return False  # the flow loads the script and runs it again
    if isinstance(error, NoPermissionError | AuthenticationError):
        return True
    text = str(error)
    if "WRONGTYPE" in text:
        return False
    if text.startswith("ERR") or "user_script" in text or "Error running script" in text:
        # a command refused inside a script comes back as a script error; an ACL refusal there reads
        # "The user executing the script can't run this command…" (Redis 7), with no NOPERM code
        if any(phrase in text for phrase in _ACL_PHRASES):
            return True
        return any(f" {code} " in f" {text} " for code in _REDIS_WIDE)
    return True  # an error we do not know: assume the worst, the writer backs off and stops vouching


def command_error(command: Command, error: BaseException) -> RedisCommandError:
    """The error to raise for `error`, the reply to `command`: it names the command (a script by its name)
    and its key."""
    name = str(command[0]).upper() if command else "?"
    key: object = None
    if name in ("EVALSHA", "EVAL") and len(command) > 3:
        sha = str(command[1]) if name == "EVALSHA" else hashlib.sha1(str(command[1]).encode()).hexdigest()
        name, key = f"{name} {SCRIPTS.get(sha, 'script')}", command[3]
    elif name != "SCRIPT" and len(command) > 1:
        key = command[1]
    refused = isinstance(error, NoPermissionError) or any(p in str(error) for p in _ACL_PHRASES)
    kind = MarketDataPermissionError if refused else RedisCommandError
    hint = ""
    if isinstance(error, MovedError | AskError):
        hint = f"MOVED to {error.host}:{error.port}: this Redis is a Cluster node, set MD_REDIS_CLUSTER=true"
    return kind(name, key if isinstance(key, str) else None, error, hint)


def _raise_errors(replies: Sequence[Any], commands: Sequence[Command]) -> None:
    """Raise the first error reply, as a `RedisCommandError` naming its command and key."""
    for reply, command in zip(replies, commands, strict=False):
        if isinstance(reply, Exception):
            raise command_error(command, reply) from reply


def _round(commands: list[Command]) -> Flow[list[Any]]:
    """One round trip whose every error reply raises (as a `RedisCommandError` naming its command)."""
    replies = yield commands
    _raise_errors(replies, commands)
    return replies


def _raise_wide_errors(replies: Sequence[Any], commands: Sequence[Command]) -> None:
    """Raise the first error reply that refuses every write (`refuses_all`); others are the caller's."""
    for reply, command in zip(replies, commands, strict=False):
        if isinstance(reply, Exception) and refuses_all(reply):
            raise command_error(command, reply) from reply


def _eval(command: Command, source: str) -> Command:
    """The EVALSHA `command` as an EVAL of the script's source (same keys and arguments)."""
    return ("EVAL", source, *command[2:])


# --------------------------------------------------------------------------------------------- writes
def write_flow(
    layout: RedisLayout, books: Sequence[EncodedBook], *, indexed: Container[str] = (), history: int = 0
) -> Flow[list[int | Exception]]:
    """Write books in one pipelined round trip; each book's result, in order.

    A result is the new seq (> 0), or a refusal code of the script (`REFUSED_OLDER`, `REFUSED_FUTURE`,
    `JOINED`), or the error reply of that book alone (a wrong-typed key): it is that key's, the other books
    are written. An error that refuses every write (`refuses_all`) raises, so that the writer retries the
    batch and stops vouching for its books.

    The symbol and exchange indexes and the per-exchange "last written" pointer are updated in the same
    pipeline (not inside the script: they live in other Cluster slots). Books whose key is in `indexed` skip
    the index update: a feeder remembers what it already indexed since Redis last came back. An error of an
    index command (a wrong-typed index key) costs the index only.

    `history` > 0: every accepted version is also appended, by the same script, to the book's capped
    history stream (that many entries kept; `history_flow` reads them back).
    """
    if history > 0:
        script = WRITE_BOOK_HISTORY_SHARDED if layout.sharded else WRITE_BOOK_HISTORY
        commands: list[Command] = [
            (
                "EVALSHA",
                script.sha,
                2,
                book.key,
                layout.history_key(book.exchange, book.symbol),
                *book.args,
                history,
            )
            for book in books
        ]
    else:
        script = WRITE_BOOK_SHARDED if layout.sharded else WRITE_BOOK
        commands = [("EVALSHA", script.sha, 1, book.key, *book.args) for book in books]
    last: dict[str, str] = {}
    new_exchanges: set[str] = set()
    for book in books:
        if book.key not in indexed:
            commands.append(("SADD", layout.symbols_key(book.exchange), book.symbol))
            new_exchanges.add(book.exchange)
        last[book.exchange] = book.symbol
    if new_exchanges:
        commands.append(("SADD", layout.exchanges_key(), *sorted(new_exchanges)))
    for exchange, symbol in last.items():
        commands.append(("SET", layout.last_key(exchange), symbol))
    replies = yield commands
    _raise_wide_errors(replies, commands)
    results: list[int | Exception] = [0] * len(books)
    retry: list[int] = []
    for i in range(len(books)):
        reply = replies[i]
        if isinstance(reply, NoScriptError):
            retry.append(i)
        elif isinstance(reply, Exception):
            results[i] = reply
        else:
            results[i] = int(reply)
    if retry:
        # Redis restarted (or SCRIPT FLUSH): NOSCRIPT means nothing ran, so running it again is safe. EVAL with
        # the source, not SCRIPT LOAD first: it is routed by the book's key (on Cluster, to the node that
        # answered NOSCRIPT) and caches the script there for the next EVALSHA.
        again = [_eval(commands[i], script.source) for i in retry]
        replies = yield again
        _raise_wide_errors(replies, again)
        for i, reply in zip(retry, replies, strict=True):
            results[i] = reply if isinstance(reply, Exception) else int(reply)
    return results


def mark_down_flow(
    layout: RedisLayout,
    writer: str,
    books: Iterable[tuple[str, str]],
    restarts: Container[tuple[str, str]] = (),
) -> Flow[int]:
    """The writer's connection for these (exchange, symbol) books dropped: it stops holding them (a book no
    feeder holds reads as not live). Returns how many it held. A wrong-typed key costs that key only.

    Books in `restarts` belong to an exchange that restarted their ordering ids: once no feeder holds one, its
    stored ``xid`` is set to -1, so that the new sequence's first book is taken (docs/redis-layout.md)."""
    script = MARK_DOWN_SHARDED if layout.sharded else MARK_DOWN
    commands: list[Command] = []
    for book in books:
        exchange, symbol = book
        middle = orjson.dumps({"exchange": exchange, "symbol": symbol, "feeder": writer})[1:-1]
        restart = "1" if book in restarts else "0"
        commands.append(
            ("EVALSHA", script.sha, 1, layout.book_key(exchange, symbol), writer, middle, restart)
        )
    if not commands:
        return 0
    replies = yield commands
    if any(isinstance(r, NoScriptError) for r in replies):
        replies = yield [_eval(c, script.source) for c in commands]
    _raise_wide_errors(replies, commands)
    return sum(int(r) for r in replies if not isinstance(r, Exception))


# --------------------------------------------------------------------------------------------- reads
def read_book_command(key: str) -> Command:
    """The read of one book: the fields a reader needs (`READ_FIELDS`, decoded by `decode_book_fields`)."""
    return ("HMGET", key, *READ_FIELDS)


class BooksRead(NamedTuple):
    raws: list[Any]  # per key: the reply of `read_book_command` (an error value when unreadable)
    states: dict[str, Any]  # per feeder: its record's state (None when expired; an error value)
    now: float  # Redis's clock when it answered (epoch seconds): the clock that book ages are measured on


def redis_time(reply: Any) -> float:
    """Epoch seconds from the reply of TIME (``[seconds, microseconds]``, as text or as numbers)."""
    if isinstance(reply, Exception):
        raise command_error(("TIME",), reply) from reply
    seconds, micros = reply
    return int(seconds) + int(micros) / 1e6


def read_books_flow(layout: RedisLayout, keys: Sequence[str], feeders: Sequence[str] = ()) -> Flow[BooksRead]:
    """The raw fields of each book (errors as values), in the same round trip the state of `feeders` and
    Redis's time."""
    replies = (
        yield [read_book_command(k) for k in keys]
        + [("HGET", layout.feeder_key(f), STATE_FIELD) for f in feeders]
        + [("TIME",)]
    )
    states = dict(zip(feeders, replies[len(keys) : len(keys) + len(feeders)], strict=True))
    return BooksRead(replies[: len(keys)], states, redis_time(replies[-1]))


def indexed_books_flow(
    layout: RedisLayout, exchanges: Iterable[str] | None = None
) -> Flow[list[tuple[str, str]]]:
    """Every (exchange, symbol) in the indexes of `exchanges` (None: every indexed exchange), sorted."""
    if exchanges is None:
        replies = yield from _round([("SMEMBERS", layout.exchanges_key())])
        names = sorted(_text(x) for x in replies[0])
    else:
        names = sorted(exchanges)
    if not names:
        return []
    replies = yield from _round([("SMEMBERS", layout.symbols_key(ex)) for ex in names])
    return [(ex, _text(s)) for ex, members in zip(names, replies, strict=True) for s in sorted(members)]


def carriers_flow(layout: RedisLayout, symbols: Sequence[str]) -> Flow[dict[str, list[str]]]:
    """For each bare symbol, the exchanges whose index holds it (in exchange order; [] when none)."""
    carriers: dict[str, list[str]] = {s: [] for s in symbols}
    if not carriers:
        return carriers
    replies = yield from _round([("SMEMBERS", layout.exchanges_key())])
    exchanges = sorted(_text(x) for x in replies[0])
    if exchanges:
        pairs = [(s, ex) for s in carriers for ex in exchanges]
        replies = yield from _round([("SISMEMBER", layout.symbols_key(ex), s) for s, ex in pairs])
        for (s, ex), member in zip(pairs, replies, strict=True):
            if member:
                carriers[s].append(ex)
    return carriers


def last_symbol_flow(layout: RedisLayout, exchange: str) -> Flow[str | None]:
    """The symbol most recently written on `exchange` (the legacy ``snapshot_<exchange>``), or None."""
    replies = yield from _round([("GET", layout.last_key(exchange))])
    return None if replies[0] is None else _text(replies[0])


def scan_flow(pattern: str, count: int = 1000) -> Flow[list[bytes | str]]:
    """Every key matching `pattern` (SCAN until the cursor comes back to 0), sorted, without duplicates."""
    cursor: Any = 0
    found: set[bytes | str] = set()
    while True:
        replies = yield from _round([("SCAN", cursor, "MATCH", pattern, "COUNT", count)])
        cursor, keys = replies[0]
        found.update(keys)
        if int(cursor) == 0:
            return sorted(found)


def feeder_keys_flow(layout: RedisLayout) -> Flow[list[bytes | str]]:
    """The keys of every feeder record on the server the flow runs on."""
    return (yield from scan_flow(layout.feeder_pattern()))


# --------------------------------------------------------------------------------------------- feeder record
def feeder_states_flow(layout: RedisLayout, feeders: Sequence[str]) -> Flow[tuple[dict[str, Any], float]]:
    """The ``state`` of each feeder's record (None once it expired, an error value if unreadable) and, in the
    same round trip, Redis's time."""
    replies = yield [("HGET", layout.feeder_key(f), STATE_FIELD) for f in feeders] + [("TIME",)]
    return dict(zip(feeders, replies[:-1], strict=True)), redis_time(replies[-1])


class Beat(NamedTuple):
    """What a heartbeat found: `code` (`BEAT`, `RECREATED` or `TAKEN_OVER`) and the run id of the server that
    took it: None when not asked, or when INFO failed (an ACL without ``+info``; fakeredis), `unidentified`
    then says how."""

    code: int
    run_id: str | None = None
    unidentified: str | None = None


def heartbeat_flow(
    layout: RedisLayout,
    feeder_id: str,
    record: FeederRecord,
    ttl_ms: int,
    *,
    take_over: bool = False,
    identify: bool = False,
) -> Flow[Beat]:
    """Write a feeder's record and push its expiry `ttl_ms` out, in one atomic step: `BEAT`; `RECREATED` when
    the record was gone (Redis lost it); `TAKEN_OVER` (nothing written) when another process holds it.
    `take_over` claims it (at start, once the previous owner is known to be gone). `identify` asks, in the same
    round trip and so of the same server, for its run id: a server that changed behind the same address (a
    replica promoted behind a virtual IP) holds the replicated record, so only its run id tells."""
    key = layout.feeder_key(feeder_id)
    command: Command = (
        "EVALSHA", HEARTBEAT.sha, 1, key, record.instance, ttl_ms, "1" if take_over else "0", *record.flat()
    )  # fmt: skip
    seen = orjson.dumps({**record.as_dict(), "instance": record.instance})
    registry: Command = ("HSET", layout.registry_key(), feeder_id, seen)  # its reply is not waited for
    commands = [command, ("INFO", "server"), registry] if identify else [command, registry]
    replies = yield commands
    if isinstance(replies[0], NoScriptError):
        replies = yield [_eval(command, HEARTBEAT.source), *commands[1:]]
    _raise_errors(replies[:1], [command])  # the registry entry is for people: its failure costs nothing
    if not identify:
        return Beat(int(replies[0]))
    run_id = server_run_id(replies[1])
    if run_id is None:
        return Beat(int(replies[0]), unidentified=f"INFO server: {replies[1]!r:.200}")
    return Beat(int(replies[0]), run_id)


def pace_flow(
    layout: RedisLayout, exchange: str, host: str, limit: int, window_ms: int, token: str
) -> Flow[tuple[int, int]]:
    """One connection open to `exchange` by a feeder of `host`, if the host's opens of the last `window_ms`
    are fewer than `limit`: ``(0, now_ms)``, logged; else ``(wait_ms, now_ms)``: try again that much later.
    ``now_ms`` is Redis's clock."""
    command: Command = ("EVALSHA", PACE.sha, 1, layout.pacing_key(exchange, host), limit, window_ms, token)
    replies = yield [command]
    if isinstance(replies[0], NoScriptError):
        replies = yield [_eval(command, PACE.source)]
    _raise_errors(replies, [command])
    wait, now = replies[0]
    return int(wait), int(now)


def server_run_id(reply: Any) -> str | None:
    """The ``run_id`` of an ``INFO server`` reply (parsed by redis-py into a dict, or raw text); None for an
    error reply or a reply without one."""
    if isinstance(reply, dict):
        run_id = reply.get("run_id")
        return None if run_id is None else _text(run_id) if isinstance(run_id, bytes | str) else str(run_id)
    if isinstance(reply, bytes | str):
        for line in _text(reply).splitlines():
            if line.startswith("run_id:"):
                return line.removeprefix("run_id:").strip()
    return None


def offline_flow(layout: RedisLayout, feeder_id: str, record: FeederRecord) -> Flow[Beat]:
    """Write a feeder's last record, ``state`` offline, kept `OFFLINE_KEEP_SECONDS` for operators to read."""
    assert record.state == OFFLINE
    return (yield from heartbeat_flow(layout, feeder_id, record, OFFLINE_KEEP_SECONDS * 1000))


def history_flow(layout: RedisLayout, exchange: str, symbol: str, last: int) -> Flow[list[OrderBookSnapshot]]:
    """The book's `last` past versions from its history stream, oldest first (empty without history)."""
    key = layout.history_key(exchange, symbol)
    replies = yield from _round([("XREVRANGE", key, "+", "-", "COUNT", last)])
    books: list[OrderBookSnapshot] = []
    for _, raw in reversed(replies[0]):
        fields = {_text(k): _text(v) for k, v in raw.items()}
        try:
            books.append(
                OrderBookSnapshot(
                    symbol, float(fields["ts"]), _levels(fields["bids"]), _levels(fields["asks"]),
                    exchange=exchange, seq=int(fields["seq"]), recv_ts=float(fields["recv_ts"]), xid=int(fields["xid"]),
                )
            )  # fmt: skip
        except (KeyError, ValueError, TypeError) as exc:
            raise CorruptSnapshotError(key, "history entry", f"cannot be decoded ({exc})") from None
    return books


def _levels(text: str) -> list[tuple[float, float]]:
    return [(float(p), float(q)) for p, q in orjson.loads(text)]


def wanted_flow(
    layout: RedisLayout, exchanges: Sequence[str]
) -> Flow[dict[str, tuple[list[str], list[str]]]]:
    """Per exchange: (symbols added at run time, symbols removed at run time), as text, sorted."""
    commands: list[Command] = []
    for exchange in exchanges:
        commands += [("SMEMBERS", layout.wanted_key(exchange)), ("SMEMBERS", layout.unwanted_key(exchange))]
    replies = yield from _round(commands)
    return {
        x: (sorted(_text(s) for s in replies[2 * i]), sorted(_text(s) for s in replies[2 * i + 1]))
        for i, x in enumerate(exchanges)
    }


def change_wanted_flow(
    layout: RedisLayout, exchange: str, symbols: Sequence[str], *, add: bool
) -> Flow[None]:
    """``md subscribe`` (`add`) or ``md unsubscribe``: the symbols move to the added or to the removed set."""
    into, out_of = (layout.wanted_key(exchange), layout.unwanted_key(exchange))[:: 1 if add else -1]
    yield from _round([("SADD", into, *symbols), ("SREM", out_of, *symbols)])


def registry_flow(layout: RedisLayout) -> Flow[dict[str, dict[str, Any]]]:
    """Every feeder ever seen: id -> its last record (decoded JSON); an entry that does not decode is left out."""
    replies = yield from _round([("HGETALL", layout.registry_key())])
    entries: dict[str, dict[str, Any]] = {}
    for key, value in replies[0].items():
        try:
            decoded = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(decoded, dict):
            entries[_text(key)] = decoded
    return entries


def feeder_record_flow(layout: RedisLayout, feeder_id: str) -> Flow[dict[str, str] | None]:
    """One feeder's record as text (None when there is none); an unreadable key raises."""
    replies = yield from _round([("HGETALL", layout.feeder_key(feeder_id))])
    return {_text(k): _text(v) for k, v in replies[0].items()} or None


def feeder_records_flow(
    layout: RedisLayout, keys: Sequence[bytes | str] | None = None
) -> Flow[list[tuple[str, Any, Any]]]:
    """Every feeder record: (key, its fields or an error value, its PTTL in ms), sorted by key. `keys`: the
    record keys when the caller found them (on Cluster, a SCAN per node: `feeder_keys_flow` on each)."""
    if keys is None:
        keys = yield from feeder_keys_flow(layout)
    keys = sorted(set(keys))
    if not keys:
        return []
    replies = yield [("HGETALL", k) for k in keys] + [("PTTL", k) for k in keys]
    return [(_text(k), replies[i], replies[len(keys) + i]) for i, k in enumerate(keys)]

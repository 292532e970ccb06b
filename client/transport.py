"""Drivers of layout flows over redis-py: the only module that touches redis-py's connection internals.

`run_flow` (sync client) and `arun_flow` (asyncio client) run one flow (see `client.layout.flows`): one
pipelined round trip per list of commands it yields. `arun_flows` runs several flows on one connection,
sending each flow's commands before reading the previous flows' replies (the feeder's writer encodes the
next chunk of books while Redis runs this one).

The fast path. redis-py's Pipeline object packs every argument in Python and costs more per read than the
network round trip itself (measured ~35 µs of a ~95 µs two-command read on loopback; in the writer, packing
was the largest cost of a write). For a plain `redis.Redis` / `redis.asyncio.Redis` on an ordinary pool
(`packed_commands` says which), the commands are packed with hiredis in C, sent on a pooled connection with
``send_packed_command`` and read back with ``read_response``; the client's own response callbacks are applied,
so a flow gets exactly the replies a pipeline would give it (errors as values). Any other client (fakeredis,
Sentinel or Cluster clients, wrappers) goes through its pipeline. These are redis-py internals, pinned by the
version range in pyproject.toml; tests/integration/test_transport_fastpath.py proves the fast path is taken
with the installed version and fails if it silently falls back.

A driver throws any exception of a round trip (Redis unreachable, a timeout) into the flow at its ``yield``: a
flow may turn it into a result (the provider's reads answer "unavailable"); if it does not, it propagates. An
``AttributeError`` or ``RuntimeError`` from inside redis-py's I/O is the ``ConnectionError`` it is
(`BROKEN_INSIDE`).
The asyncio drivers also re-raise a cancellation that the client swallowed (`raise_if_cancelled`).
"""

from __future__ import annotations

import asyncio
import math
import select
import socket
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.client
import redis.asyncio.connection
import redis.client
import redis.exceptions

from client.layout.codec import Command
from client.layout.flows import Flow

T = TypeVar("T")

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - redis[hiredis] is a dependency; without it the pipeline is used
    _pack = None
try:  # what redis-py's hiredis parser has its reader return for an incomplete reply
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
except ImportError:  # pragma: no cover - then `_hiredis_reader` finds no hiredis parser either
    _NOT_ENOUGH_DATA = object()

_SYNC_POOLS = (redis.ConnectionPool, redis.BlockingConnectionPool)
_ASYNC_POOLS = (redis.asyncio.connection.ConnectionPool, redis.asyncio.connection.BlockingConnectionPool)


def _plain_pool(client: object) -> Any:
    """The pool of a plain `redis.Redis` / `redis.asyncio.Redis` whose pool hands out plain connections, or
    None (Sentinel pools pick their server per connection; Cluster and other clients are their own)."""
    kind = type(client)
    if kind is redis.Redis:
        pools: tuple[type, ...] = _SYNC_POOLS
    elif kind is redis.asyncio.Redis:
        pools = _ASYNC_POOLS
    else:
        return None
    pool = getattr(client, "connection_pool", None)
    return pool if type(pool) in pools else None


def packed_commands(client: object) -> bool:
    """True when `client` takes the fast path: a plain redis-py client whose pool hands out plain connections.

    Sentinel pools pick their server per connection, and other clients have pipelines of their own: those are
    left to redis-py. hiredis encodes text as strict UTF-8, which is what redis-py does unless told otherwise.
    """
    pool = _plain_pool(client)
    if _pack is None or pool is None:
        return False
    kwargs = pool.connection_kwargs
    encoding = str(kwargs.get("encoding", "utf-8")).lower().replace("-", "")
    return encoding == "utf8" and kwargs.get("encoding_errors", "strict") == "strict"


def raise_if_cancelled() -> None:
    """Re-raise a cancellation of the current task that an awaited library call swallowed.

    CPython 3.11's ``asyncio.wait_for`` loses a cancellation when the awaited result arrives in the same loop
    step (fixed in 3.12); fakeredis waits for replies with it, and redis-py 8 loses one that arrives while it
    opens a connection (tests/integration/test_writer.py). The task then carries on as if never cancelled,
    and an owner that cancelled it and waits for it to end waits forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _packed(commands: list[Command]) -> bytes:
    assert _pack is not None
    pack = _pack
    return b"".join([pack(c) for c in commands])


_UNKNOWN = object()


def _apply(callbacks: Any, command: Command, reply: Any) -> Any:
    callback = callbacks.get(command[0])
    return callback(reply) if callback is not None else reply


# --------------------------------------------------------------------------------------------- sync
BROKEN_INSIDE = (AttributeError, RuntimeError)
"""What redis-py raises when a reconnect races a server that closed the socket, e.g. ``'NoneType' object has
no attribute 'writelines'`` (its writer gone under an AUTH that failed while a Cluster node restarted), or
uvloop's ``RuntimeError`` on a closed transport. A round trip runs only redis-py code, so there these mean a
broken connection, not a bug of the caller's."""


def broken_connection(exc: BaseException) -> redis.exceptions.ConnectionError:
    """`exc` (one of `BROKEN_INSIDE`, from a round trip) as the connection error it is."""
    error = redis.exceptions.ConnectionError(f"the connection broke inside redis-py ({exc!r})")
    error.__cause__ = exc
    return error


def run_flow(client: redis.Redis, flow: Flow[T]) -> T:
    """Drive a flow with a sync client: one pipelined round trip per yielded command list."""
    round_trip = _packed_round_trip if packed_commands(client) else _pipeline_round_trip
    try:
        commands = next(flow)
        while True:
            try:
                replies = round_trip(client, commands)
            except BROKEN_INSIDE as exc:
                commands = flow.throw(broken_connection(exc))
                continue
            except Exception as exc:
                commands = flow.throw(exc)
                continue
            commands = flow.send(replies)
    except StopIteration as stop:
        result: T = stop.value
        return result


SERVER_AWAY = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,  # a Cluster without a quorum of masters, or a master without replicas
    redis.exceptions.TryAgainError,  # a slot being migrated
)
"""Errors that mean the server is away for now (no reply of a key's own): callers treat them as an outage."""


def _pipeline_round_trip(client: redis.Redis, commands: list[Command]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)  # type: ignore[no-untyped-call]
    return _no_lost_connections(pipe.execute(raise_on_error=False))


def _no_lost_connections(replies: list[Any]) -> list[Any]:
    """Replies of a redis-py pipeline, except that a lost connection is raised, not returned as a reply: a
    Cluster pipeline returns a dead node's connection error in place of each of its commands' replies, and
    that is Redis being away (the driver's concern), not an error reply of one key; so is CLUSTERDOWN."""
    for reply in replies:
        if isinstance(reply, SERVER_AWAY):
            raise reply
    return replies


def _packed_round_trip(client: redis.Redis, commands: list[Command]) -> list[Any]:
    if not commands:
        return []
    pool = client.connection_pool
    connection = pool.get_connection()
    callbacks = client.response_callbacks
    replies: list[Any] = []
    try:
        connection.send_packed_command([_packed(commands)])  # type: ignore[no-untyped-call]
        for command in commands:
            try:
                reply = connection.read_response()
            except redis.exceptions.ResponseError as exc:  # an error reply; the stream is still in step
                replies.append(exc)
                continue
            replies.append(_apply(callbacks, command, reply))
    except BaseException:
        connection.disconnect()  # type: ignore[no-untyped-call]  # replies may be in flight: never reuse it
        raise
    finally:
        pool.release(connection)
    return replies


# --------------------------------------------------------------------------------------------- asyncio
async def arun_flow(client: redis.asyncio.Redis, flow: Flow[T]) -> T:
    """Drive a flow with an asyncio client: one pipelined round trip per yielded command list."""
    round_trip = _apacked_round_trip if packed_commands(client) else _apipeline_round_trip
    try:
        commands = next(flow)
        while True:
            try:
                replies = await round_trip(client, commands)
            except BROKEN_INSIDE as exc:
                commands = flow.throw(broken_connection(exc))
                continue
            except Exception as exc:
                commands = flow.throw(exc)
                continue
            raise_if_cancelled()
            commands = flow.send(replies)
    except StopIteration as stop:
        result: T = stop.value
        return result


async def arun_flows(client: redis.asyncio.Redis, flows: Iterable[Flow[Any]]) -> list[Any]:
    """Drive several flows, each flow's result in order; on one connection, overlapped, on the fast path.

    `flows` may be lazy: a flow is taken from it (and so created) only once the previous one's first round
    trip is on its way to Redis. Exceptions are not thrown into these flows: they propagate.
    """
    if not packed_commands(client):
        return [await arun_flow(client, flow) for flow in flows]
    return await _apacked_exchange(client, flows)


async def _apipeline_round_trip(client: redis.asyncio.Redis, commands: list[Command]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return _no_lost_connections(await pipe.execute(raise_on_error=False))


async def _apacked_round_trip(client: redis.asyncio.Redis, commands: list[Command]) -> list[Any]:
    replies: list[Any] = (await _apacked_exchange(client, [_one_round(commands)]))[0]
    return replies


_READ_SIZE = 65536


def _hiredis_reader(
    connection: Any,
) -> tuple[Callable[[], Any], Callable[[bytes], None], asyncio.StreamReader, type | None] | None:
    """The connection's hiredis reader (``gets``, ``feed``), its socket stream and hiredis's push-message type
    (RESP3), when redis-py parses with hiredis; None: read with ``read_response``."""
    parser = getattr(connection, "_parser", None)
    reader = getattr(parser, "_reader", None)
    stream = getattr(parser, "_stream", None)
    if (
        type(parser).__name__ != "_AsyncHiredisParser"
        or reader is None
        or not isinstance(stream, asyncio.StreamReader)
        or str(getattr(connection, "protocol", 2) or 2) not in ("2", "3")
        or not getattr(parser, "_connected", False)
    ):
        return None
    return reader.gets, reader.feed, stream, getattr(parser, "_hiredis_PushNotificationType", None)


def _one_round(commands: list[Command]) -> Flow[list[Any]]:
    replies = yield commands
    return replies


async def _apacked_exchange(client: redis.asyncio.Redis, flows: Iterable[Flow[Any]]) -> list[Any]:
    """Drive `flows` on one connection of the client's pool; each flow's result, in order (see `_exchange`)."""
    pool = client.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        results = await _exchange(connection, client.response_callbacks, flows)
    except BaseException:
        # A failure or a cancellation between the write and the last reply leaves replies in flight:
        # the connection must not be reused.
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
    raise_if_cancelled()  # redis-py 8 on CPython 3.11 can swallow one that hits it while it connects
    return results


class PinnedConnection:
    """One connection of an asyncio client's pool kept across round trips by a single owner (the feeder's
    writer): taking a connection from redis-py's pool and giving it back costs more than a small batch's
    round trip itself (its pool dispatches events and re-auth listeners on every get). `run_flows` is
    `arun_flows` on that connection; after any failure or cancellation the connection is dropped
    (disconnected, given back) and the next call takes a fresh one. `release` gives it back for good.

    Only for a client `packed_commands` accepts; other clients go through `arun_flows` unchanged."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.packed = packed_commands(client)
        self._connection: Any = None

    async def run_flows(self, flows: Iterable[Flow[Any]]) -> list[Any]:
        if not self.packed:
            return await arun_flows(self.client, flows)
        connection = self._connection
        if connection is None or not connection.is_connected:
            if connection is not None:
                await self.release()
            connection = self._connection = await self.client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            results = await _exchange(connection, self.client.response_callbacks, flows)
        except BaseException:
            self._connection = None  # replies may be in flight: never reused
            try:
                await connection.disconnect()
            finally:
                await self.client.connection_pool.release(connection)
            raise
        raise_if_cancelled()
        return results

    async def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await self.client.connection_pool.release(connection)


async def _exchange(connection: Any, callbacks: Any, flows: Iterable[Flow[Any]]) -> list[Any]:
    """Drive `flows` on `connection`; each flow's result, in order. The caller drops the connection when
    this raises (replies may be in flight).

    Every flow's first commands are sent as soon as the flow is taken from `flows`, before the previous flows'
    replies are read, so Redis works on one flow while this process prepares the next. Replies are then read
    in order (errors as values); a flow that asks for a further round (NOSCRIPT after a Redis restart) gets it
    afterwards.
    """
    read = connection.read_response
    direct = _hiredis_reader(connection)
    # redis-py's callbacks by command name, looked up once per exchange: its dict upper-cases every key it is
    # asked for, and a batch repeats the same few commands (EVALSHA, SADD, SET) once per book
    known: dict[Any, Any] = {}

    def callback(name: Any) -> Any:
        found = known.get(name, _UNKNOWN)
        if found is _UNKNOWN:
            found = known[name] = callbacks.get(name)
        return found

    async def send(commands: list[Command]) -> None:
        packed = _packed(commands)
        try:
            await connection.send_packed_command(packed)
        except BROKEN_INSIDE as exc:
            raise broken_connection(exc) from exc

    async def replies(commands: list[Command]) -> list[Any]:
        try:
            got: list[Any] = []
            if direct is not None:
                # The replies of a batch arrive together: take each one from hiredis's buffer, and await the
                # socket only when the buffer runs dry, instead of three coroutines per reply.
                gets, feed, stream, push = direct
                for command in commands:
                    reply = gets()
                    while reply is _NOT_ENOUGH_DATA or (push is not None and isinstance(reply, push)):
                        if reply is _NOT_ENOUGH_DATA:  # a push message (RESP3) is skipped, as redis-py does
                            data = await stream.read(_READ_SIZE)
                            if not data:
                                raise redis.exceptions.ConnectionError("Connection closed by server.")
                            feed(data)
                        reply = gets()
                    if isinstance(reply, redis.exceptions.ResponseError):  # an error reply, as a value
                        got.append(reply)
                    elif isinstance(reply, redis.exceptions.ConnectionError):
                        raise reply
                    else:
                        apply = callback(command[0])
                        got.append(apply(reply) if apply is not None else reply)
                return got
            for command in commands:
                try:  # no timer of its own (the exchange has one deadline)
                    got.append(_apply(callbacks, command, await read(timeout=math.inf)))
                except redis.exceptions.ResponseError as exc:  # an error reply; the stream is still in step
                    got.append(exc)
            return got
        except BROKEN_INSIDE as exc:
            raise broken_connection(exc) from exc

    # One deadline for the whole exchange (the connection's socket timeout) instead of one per reply:
    # the replies of a batch arrive together, and a timer per reply cost more than reading it.
    async with asyncio.timeout(connection.socket_timeout):
        started: list[tuple[Flow[Any], list[Command] | None]] = []
        results: list[Any] = []
        for flow in flows:
            try:
                commands = next(flow)
            except StopIteration as stop:  # nothing to send
                results.append(stop.value)
                started.append((flow, None))
                continue
            await send(commands)
            results.append(None)
            started.append((flow, commands))
        first = [await replies(commands) if commands is not None else [] for _, commands in started]
        for i, ((flow, sent), answer) in enumerate(zip(started, first, strict=True)):
            if sent is None:
                continue
            try:
                while True:
                    more: list[Command] = flow.send(answer)
                    await send(more)
                    answer = await replies(more)
            except StopIteration as stop:
                results[i] = stop.value
    return results


# --------------------------------------------------------------------------------------------- pub/sub
def _resp2_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A pool's connection settings for a RESP2 pool of its own: the same server, TLS, auth and timeouts,
    without the RESP3-only maintenance-notification machinery redis-py 8 adds (and keys it derives)."""
    own = {k: v for k, v in kwargs.items() if not k.startswith(("maint_notifications", "orig_"))}
    own["protocol"] = 2
    return own


class PubSubSource:
    """Where the mirror's subscriber gets its pub/sub connections (sync client).

    redis-py 8 speaks RESP3 by default, and reads a RESP3 pub/sub message about twice as slowly as a RESP2
    one (it arrives as a push notification and goes through the push handlers): measured 11.4 against
    5.8 µs a message. Pub/sub needs nothing RESP3 adds, so for a plain client on an ordinary pool the
    subscriber gets its connections from a pool of its own, built from the client's connection settings
    with ``protocol=2`` (TLS, auth and timeouts included); any other client (Sentinel, Cluster, fakeredis,
    wrappers) gets ``client.pubsub()`` as before. `close` disconnects that pool.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.pool: redis.ConnectionPool | None = None
        pool = _plain_pool(client)
        if pool is not None:
            kwargs = _resp2_kwargs(pool.connection_kwargs)
            self.pool = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)

    def pubsub(self) -> Any:
        if self.pool is None:
            return self.client.pubsub(ignore_subscribe_messages=True)
        return redis.client.PubSub(self.pool, ignore_subscribe_messages=True)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.disconnect()


class AsyncPubSubSource:
    """`PubSubSource` for an asyncio client (same methods, `aclose` instead of `close`)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.pool: redis.asyncio.ConnectionPool | None = None
        pool = _plain_pool(client)
        if pool is not None:
            kwargs = _resp2_kwargs(pool.connection_kwargs)
            self.pool = redis.asyncio.ConnectionPool(connection_class=pool.connection_class, **kwargs)

    def pubsub(self) -> Any:
        if self.pool is None:
            return self.client.pubsub(ignore_subscribe_messages=True)
        return redis.asyncio.client.PubSub(self.pool, ignore_subscribe_messages=True)

    async def aclose(self) -> None:
        if self.pool is not None:
            await self.pool.disconnect()


# A pub/sub reply as the subscriber core takes it is redis-py's RESP2 reply list, kind first and the payload
# last: [b"message", channel, data], [b"pmessage", pattern, channel, data], [b"pong", data], [b"subscribe", …]
# (or a bare b"PONG" when pinged while subscribed to nothing).
_MAX_DRAINED = 4096  # replies taken per receive on the redis-py path (the core pings and refreshes between)


def _as_reply(message: dict[str, Any]) -> list[Any]:
    return [message["type"], message["channel"], message["data"]]


def _raw_pubsub(pubsub: Any) -> Any:
    """The connection of a RESP2 pub/sub whose replies can be taken from hiredis's buffer, or None."""
    connection = getattr(pubsub, "connection", None)
    if connection is None or str(getattr(connection, "protocol", 2) or 2) != "2":
        return None
    parser = getattr(connection, "_parser", None)
    name = type(parser).__name__
    if name == "_HiredisParser" and getattr(parser, "_reader", None) is not None:
        return connection
    if name == "_AsyncHiredisParser" and getattr(parser, "_reader", None) is not None:
        return connection  # `areceive_replies` takes the reader and stream with `_hiredis_reader`
    return None


_POLLERS: weakref.WeakKeyDictionary[socket.socket, select.poll] = weakref.WeakKeyDictionary()


def _poller(sock: socket.socket) -> select.poll:
    poller = _POLLERS.get(sock)
    if poller is None:
        poller = _POLLERS[sock] = select.poll()
        poller.register(sock, select.POLLIN)
    return poller


def receive_replies(pubsub: Any, timeout: float, *, sharded: bool = False) -> list[Any]:
    """Every reply the pub/sub connection holds, waiting up to `timeout` s for the first; [] when none came.

    The fast path (a RESP2 connection parsed by hiredis: what `PubSubSource` gives a plain client) takes the
    replies straight from hiredis's buffer, without redis-py's per-message dict, handlers and health-check
    bookkeeping (~5 µs a message here; the mirror's whole budget for an update). Any other pub/sub (Sentinel,
    fakeredis, RESP3, the pure-Python parser) goes through ``get_message``, each dict turned into a reply list.
    A connection error raises; the subscriber then starts a new session on a new connection. `sharded`: a
    Cluster pub/sub, read with ``get_sharded_message`` (its shard channels live on connections of their own).
    """
    connection = None if sharded else _raw_pubsub(pubsub)
    if connection is None:
        get = pubsub.get_sharded_message if sharded else pubsub.get_message
        message = get(ignore_subscribe_messages=True, timeout=timeout)
        replies = [] if message is None else [_as_reply(message)]
        while message is not None and len(replies) < _MAX_DRAINED:
            message = get(ignore_subscribe_messages=True, timeout=0)
            if message is not None:
                replies.append(_as_reply(message))
        return replies
    parser = connection._parser
    gets = parser._reader.gets
    reply = gets()
    if reply is _NOT_ENOUGH_DATA:
        # One poll on the socket (a poller kept per socket; redis-py's can_read polls twice and builds a poller
        # each time), then recv into hiredis until a whole reply is there. recv raises on a closed connection.
        sock = parser._sock
        if sock is None:
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        pending = getattr(sock, "pending", None)  # TLS: bytes decrypted above the socket count as readable
        if not (pending is not None and pending()) and not _poller(sock).poll(timeout * 1000):
            return []
        while reply is _NOT_ENOUGH_DATA:
            parser.read_from_socket()
            reply = gets()
    replies = [reply]
    while (reply := gets()) is not _NOT_ENOUGH_DATA:
        replies.append(reply)
    return _checked(replies)


async def areceive_replies(pubsub: Any, timeout: float, *, sharded: bool = False) -> list[Any]:
    """`receive_replies` for an asyncio pub/sub (the same fast path and fallback)."""
    connection = None if sharded else _raw_pubsub(pubsub)
    if connection is None:
        get = pubsub.get_sharded_message if sharded else pubsub.get_message
        message = await get(ignore_subscribe_messages=True, timeout=timeout)
        replies = [] if message is None else [_as_reply(message)]
        while message is not None and len(replies) < _MAX_DRAINED:
            message = await get(ignore_subscribe_messages=True, timeout=0)
            if message is not None:
                replies.append(_as_reply(message))
        return replies
    direct = _hiredis_reader(connection)
    if direct is None:  # not connected (or not a stream it can read): redis-py says how
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        return [] if message is None else [_as_reply(message)]
    gets, feed, stream, _ = direct
    reply = gets()
    if reply is _NOT_ENOUGH_DATA:
        try:
            async with asyncio.timeout(timeout):
                while reply is _NOT_ENOUGH_DATA:
                    data = await stream.read(_READ_SIZE)
                    if not data:
                        raise redis.exceptions.ConnectionError("Connection closed by server.")
                    feed(data)
                    reply = gets()
        except TimeoutError:
            return []
    replies = [reply]
    while (reply := gets()) is not _NOT_ENOUGH_DATA:
        replies.append(reply)
    return _checked(replies)


def _checked(replies: list[Any]) -> list[Any]:
    """Raise an error reply (hiredis returns errors as values): the session ends, as redis-py would end it."""
    for reply in replies:
        if isinstance(reply, redis.exceptions.RedisError):
            raise reply
    return replies

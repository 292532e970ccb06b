"""The transport's fast path (hiredis-packed round trips on a pooled connection) is taken, and answers alike.

`client.transport` uses redis-py internals (``send_packed_command``, ``read_response``, the pool's
``get_connection``, the client's ``response_callbacks``) for plain clients. These tests pin that to the
installed redis-py: if an upgrade moved or renamed them, the fast path would silently fall back to the
pipeline (correct but ~35 µs slower a read); here that fails loudly instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio
import redis.asyncio.client
import redis.asyncio.connection
import redis.client
import redis.connection
from support.backends import Backend
from support.pins import installed_within_pin

from client import transport
from client.layout import Command, Flow
from client.transport import arun_flow, arun_flows, packed_commands, run_flow

ROOT = Path(__file__).resolve().parents[2]


def _replies(commands: list[Command]) -> Flow[list[Any]]:
    replies = yield commands
    return replies


def _two_rounds() -> Flow[tuple[list[Any], list[Any]]]:
    first = yield [("SET", "k1", "v1"), ("HSET", "h1", "a", "1", "b", "2"), ("SADD", "s1", "x", "y")]
    second = yield [
        ("GET", "k1"),
        ("HGETALL", "h1"),
        ("HMGET", "h1", "a", "nope"),
        ("SMEMBERS", "s1"),
        ("SISMEMBER", "s1", "x"),
        ("SCAN", 0, "MATCH", "*1", "COUNT", 1000),
        ("PEXPIRE", "k1", 60_000),
        ("INCR", "h1"),  # a WRONGTYPE error reply: a value, and the stream stays in step
        ("PING",),
    ]
    return first, second


class _Wrapped(redis.Redis):
    """Not exactly `redis.Redis`: takes the pipeline, which is the reference the fast path must match."""


def test_pinned_redis_py_is_the_one_installed() -> None:
    inside, spec = installed_within_pin("redis", redis.__version__)
    assert inside, f"redis-py {redis.__version__} outside the pin {spec}: re-check client/transport.py"


def test_plain_clients_take_the_fast_path_and_others_do_not(redis_server: Any) -> None:
    assert packed_commands(redis.Redis.from_url(redis_server.url))
    assert packed_commands(redis.asyncio.Redis.from_url(redis_server.url))
    assert packed_commands(
        redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(redis_server.url))
    )
    assert not packed_commands(_Wrapped.from_url(redis_server.url))
    assert not packed_commands(fakeredis.FakeRedis())
    assert not packed_commands(fakeredis.FakeAsyncRedis())
    assert not packed_commands(redis.Redis.from_url(redis_server.url, encoding="latin-1"))
    assert not packed_commands(object())


def test_sync_fast_path_is_taken_and_gives_the_pipelines_replies(
    real_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert real_backend.url is not None
    reference = run_flow(_Wrapped.from_url(real_backend.url), _two_rounds())
    real_backend.sync.flushall()
    sent: list[int] = []
    real_send = redis.connection.AbstractConnection.send_packed_command

    def counting_send(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        real_send(self, command, check_health)

    def no_pipeline(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the fast path fell back to the pipeline")

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting_send)
    monkeypatch.setattr(redis.client.Pipeline, "execute", no_pipeline)
    client = redis.Redis.from_url(real_backend.url)
    client.ping()  # the connection's handshake is not what is counted
    sent.clear()
    fast = run_flow(client, _two_rounds())
    assert len(sent) == 2, "one packed send per round trip"
    assert _comparable(fast) == _comparable(reference)
    client.close()


async def test_async_fast_path_is_taken_and_gives_the_pipelines_replies(
    real_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert real_backend.url is not None

    class Wrapped(redis.asyncio.Redis):
        pass

    slow = Wrapped.from_url(real_backend.url)
    reference = await arun_flow(slow, _two_rounds())
    await slow.aclose()
    real_backend.sync.flushall()
    sent: list[int] = []
    real_send = redis.asyncio.connection.AbstractConnection.send_packed_command

    async def counting_send(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        await real_send(self, command, check_health)

    def no_pipeline(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the fast path fell back to the pipeline")

    monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "send_packed_command", counting_send)
    monkeypatch.setattr(redis.asyncio.client.Pipeline, "execute", no_pipeline)
    client = redis.asyncio.Redis.from_url(real_backend.url)
    await client.ping()  # the connection's handshake is not what is counted
    sent.clear()

    def no_read_response(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the replies were not read from hiredis's buffer directly")

    # the replies come straight from the connection's hiredis reader, not from read_response
    monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "read_response", no_read_response)
    fast = await arun_flow(client, _two_rounds())
    monkeypatch.undo()
    monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "send_packed_command", counting_send)
    monkeypatch.setattr(redis.asyncio.client.Pipeline, "execute", no_pipeline)
    assert len(sent) == 2
    assert _comparable(fast) == _comparable(reference)  # errors as values, callbacks applied, in step
    connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    assert transport._hiredis_reader(connection) is not None  # the installed redis-py offers it
    await client.connection_pool.release(connection)

    # several flows share one connection, each sent before the previous one's replies are read
    connections: list[Any] = []
    real_get = redis.asyncio.connection.ConnectionPool.get_connection

    async def counting_get(self: Any, *args: Any, **kwargs: Any) -> Any:
        connection = await real_get(self, *args, **kwargs)
        connections.append(connection)
        return connection

    monkeypatch.setattr(redis.asyncio.connection.ConnectionPool, "get_connection", counting_get)
    results = await arun_flows(
        client, [_replies([("PING",)]), _replies([("GET", "k1")]), _replies([("PING",)])]
    )
    assert results == [[True], [b"v1"], [True]] and len(connections) == 1
    await client.aclose()


def test_a_connection_error_is_thrown_into_the_flow(redis_server: Any) -> None:
    """A flow may turn "Redis is away" into a result of its own (the provider's reads do)."""
    from launch.redis_server import free_port

    client = redis.Redis(port=free_port(), socket_connect_timeout=0.2)  # nothing listens there

    def flow() -> Flow[str]:
        try:
            yield [("PING",)]
        except redis.exceptions.ConnectionError:
            return "unavailable"
        return "answered"

    assert run_flow(client, flow()) == "unavailable"
    with pytest.raises(redis.exceptions.ConnectionError):
        run_flow(client, _replies([("PING",)]))


def _comparable(result: Any) -> Any:
    """Replies with error values compared by type and text (exception instances never compare equal)."""
    if isinstance(result, tuple | list):
        return [_comparable(x) for x in result]
    if isinstance(result, Exception):
        return (type(result).__name__, str(result))
    if isinstance(result, dict):
        return {k: _comparable(v) for k, v in result.items()}
    if isinstance(result, set):
        return sorted(result)
    return result


def _no_get_message(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the pub/sub fast path fell back to get_message")


def _published(client: redis.Redis, channel: str, data: list[bytes]) -> None:
    for item in data:
        assert client.publish(channel, item) == 1


def test_sync_pubsub_replies_come_from_hiredis_directly(redis_server: Any) -> None:
    """The mirror's subscriber takes pub/sub replies straight from hiredis (client.transport.receive_replies);
    a redis-py upgrade that moved the parser internals must fail here, not fall back silently."""
    client = redis.Redis.from_url(redis_server.url)
    source = transport.PubSubSource(client)
    pubsub = source.pubsub()
    try:
        pubsub.psubscribe("fast:*")
        assert transport._raw_pubsub(pubsub) is not None  # the fast path is on for this pub/sub
        pubsub.get_message = _no_get_message  # and nothing below goes through redis-py's message handling
        first = transport.receive_replies(pubsub, 1.0)
        assert first == [[b"psubscribe", b"fast:*", 1]]
        _published(client, "fast:a", [b"1", b"2", b"3"])
        got: list[Any] = []
        deadline = 50
        while len(got) < 3 and deadline:
            got += transport.receive_replies(pubsub, 0.1)
            deadline -= 1
        assert got == [[b"pmessage", b"fast:*", b"fast:a", d] for d in (b"1", b"2", b"3")]
        pubsub.ping()
        assert transport.receive_replies(pubsub, 1.0) == [[b"pong", b""]]
        assert transport.receive_replies(pubsub, 0.05) == []  # nothing more: waits, then empty
    finally:
        pubsub.close()
        source.close()
        client.close()


async def test_async_pubsub_replies_come_from_hiredis_directly(redis_server: Any) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    source = transport.AsyncPubSubSource(client)
    pubsub = source.pubsub()
    try:
        await pubsub.psubscribe("fast:*")
        assert transport._raw_pubsub(pubsub) is not None
        pubsub.get_message = _no_get_message
        assert await transport.areceive_replies(pubsub, 1.0) == [[b"psubscribe", b"fast:*", 1]]
        _published(redis.Redis.from_url(redis_server.url), "fast:b", [b"x", b"y"])
        got: list[Any] = []
        for _ in range(50):
            got += await transport.areceive_replies(pubsub, 0.1)
            if len(got) == 2:
                break
        assert got == [[b"pmessage", b"fast:*", b"fast:b", d] for d in (b"x", b"y")]
        assert await transport.areceive_replies(pubsub, 0.05) == []
    finally:
        await pubsub.aclose()
        await source.aclose()
        await client.aclose()


def test_other_pubsubs_fall_back_to_get_message_with_the_same_reply_shape(redis_server: Any) -> None:
    fake = fakeredis.FakeRedis()
    resp3 = redis.Redis.from_url(redis_server.url, protocol=3)
    for client in (fake, resp3):
        pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe("slow")
            assert transport._raw_pubsub(pubsub) is None
            _published(client, "slow", [b"1", b"2"])
            got: list[Any] = []
            for _ in range(50):
                got += transport.receive_replies(pubsub, 0.1)
                if len(got) == 2:
                    break
            assert got == [["message", b"slow", b"1"], ["message", b"slow", b"2"]], client
        finally:
            pubsub.close()
            client.close()


class _BrokenInside(redis.asyncio.Redis):
    """A client whose round trips fail the way redis-py 8 did when a Cluster node restarted without its ACL
    users: its reconnect's AUTH failed, and the next send found the writer gone."""

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        class Pipe:
            def execute_command(self, *args: Any) -> None:
                pass

            async def execute(self, raise_on_error: bool = True) -> Any:
                raise AttributeError("'NoneType' object has no attribute 'writelines'")

        return Pipe()


async def test_an_error_from_inside_redis_py_reaches_the_flow_as_a_connection_error() -> None:
    """Was: the AttributeError reached the feeder's wanted-symbols loop, which stopped the feeder (CI, a
    Cluster node restart); as a ConnectionError it is an outage the loop waits out."""
    client = _BrokenInside()
    assert not packed_commands(client)  # the pipeline path, which the fault goes through

    def flow() -> Flow[str]:
        try:
            yield [("PING",)]
        except redis.exceptions.ConnectionError as exc:
            return str(exc)
        return "answered"

    said = await arun_flow(client, flow())
    assert "broke inside redis-py" in said and "writelines" in said
    with pytest.raises(redis.exceptions.ConnectionError):
        await arun_flow(client, _replies([("PING",)]))
    await client.aclose()

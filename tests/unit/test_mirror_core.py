"""The mirror's subscriber core and the liveness rule, driven by hand: no Redis, no thread, no task.

The core yields operations (subscribe, run a flow, receive, synced) that a driver carries out; here the test
is the driver, so the order of operations and what the core does with each result are visible directly.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.exceptions

from client.freshness import book_state, judge
from client.layout import RedisLayout, StoredBook, encode_book
from client.mirror import BookCache, CallbackConsumer, MirrorPlan, SubscriberCore
from client.mirror.subscriber import Ping, Receive, RunFlow, Subscribe, Synced
from client.models import BookState, OrderBookSnapshot

LAYOUT = RedisLayout()
KEY = LAYOUT.book_key("upbit", "KRW-BTC")


def message(seq: int, feeder: str = "f1") -> list[Any]:
    """One reply as `client.transport.receive_replies` hands it over: [kind, channel, data]."""
    book = OrderBookSnapshot("KRW-BTC", 1000.0 + seq, [(100.0, 1.0)], [(101.0, 1.0)], xid=seq, recv_ts=5.0)
    data = encode_book(LAYOUT, book, exchange="upbit", writer=feeder, heartbeat=True).message(
        seq, "5.000", "5.001", feeder
    )
    return [b"message", KEY.encode(), data]


def answer(command: tuple[Any, ...], state: Any) -> Any:
    if command[0] == "HMGET":
        return [None] * len(command[2:])
    if command[0] == "TIME":
        return (1_700_000_000, 0)
    return state


def run_flow_offline(flow: Any, state: Any = None) -> None:
    """Carry out a flow as if Redis held no book and every feeder's state were `state`."""
    try:
        commands = next(flow)
        while True:
            commands = flow.send([answer(c, state) for c in commands])
    except StopIteration:
        pass


def test_a_session_subscribes_loads_reports_synced_then_applies_messages() -> None:
    cache = BookCache(LAYOUT)
    core = SubscriberCore(MirrorPlan(LAYOUT, keys={KEY}), cache)
    session = core.session()
    assert next(session) == Subscribe([KEY], [])
    load = session.send(None)
    assert isinstance(load, RunFlow)
    run_flow_offline(load.flow)  # the book does not exist yet
    assert not cache.connected
    assert isinstance(session.send(None), Synced) and cache.connected
    receive = session.send(None)
    assert receive == Receive(0.1)
    follow = session.send([message(1)])  # applied; an unknown feeder's state is read at once
    assert cache.books[KEY].seq == 1
    assert isinstance(follow, RunFlow)
    run_flow_offline(follow.flow, b"running")
    assert cache.alive == {"f1"} and not cache.unknown_feeders
    assert session.send(None) == Receive(0.1)
    assert session.send([]) == Receive(0.1)  # nothing came: wait again
    reread = session.send([message(3)])  # seq 2 was lost: the gap makes the key re-read
    assert isinstance(reread, RunFlow) and cache.gaps == 1


def test_keys_added_from_another_thread_are_subscribed_and_loaded_by_the_next_round() -> None:
    cache = BookCache(LAYOUT)
    core = SubscriberCore(MirrorPlan(LAYOUT), cache)
    session = core.session()
    load = next(session)
    assert isinstance(load, RunFlow)  # nothing to subscribe yet
    run_flow_offline(load.flow)
    assert isinstance(session.send(None), Synced)
    core.add_keys([KEY])
    assert session.send(None) == Subscribe([KEY], [])
    assert isinstance(session.send(None), RunFlow)
    assert KEY in core.plan.keys


def test_a_lost_connection_marks_the_cache_unavailable_and_backs_off() -> None:
    cache = BookCache(LAYOUT, connected=True)
    core = SubscriberCore(MirrorPlan(LAYOUT), cache)
    assert core.lost(OSError("reset"), 1) == 0.0  # the first retry is immediate
    assert not cache.connected
    assert 0.0 < core.lost(OSError("reset"), 3) <= 0.1


def test_the_liveness_rule() -> None:
    snap = OrderBookSnapshot("KRW-BTC", 1.0, [(1.0, 1.0)], [(2.0, 1.0)], recv_ts=100.0)
    live = StoredBook(KEY, snap, "f1", True, True, 100.0, 1, holders=("f1",), rts=100.0)
    assert book_state(live, {"f1"}, None) is BookState.LIVE
    assert book_state(live, set(), None) is BookState.FEEDER_DEAD
    down = StoredBook(KEY, snap, "f1", False, True, 100.0, 1, holders=(), rts=100.0)
    assert book_state(down, {"f1"}, None) is BookState.CONNECTION_DOWN
    assert book_state(live, {"f1"}, 5.0, now=104.0) is BookState.LIVE
    assert book_state(live, {"f1"}, 5.0, now=106.0) is BookState.TOO_OLD
    no_heartbeat = StoredBook(KEY, snap, "client:x:1", True, False, 100.0, 1, rts=100.0)
    standby = StoredBook(KEY, snap, "f1", True, True, 100.0, 1, holders=("f1", "f2"), rts=100.0)
    assert book_state(standby, {"f2"}, None) is BookState.LIVE  # a surviving holder keeps it live
    assert book_state(no_heartbeat, set(), None) is BookState.LIVE  # judged by max_age alone
    status = judge("upbit", "KRW-BTC", live, set(), None, 101.0)
    assert status.state is BookState.FEEDER_DEAD and "f1" in status.detail and status.age == 1.0
    assert judge("upbit", "KRW-BTC", None, set(), None, 0.0).state is BookState.MISSING


def test_consumers_register_from_other_threads_while_the_subscriber_publishes() -> None:
    """Registration replaces the tuple the publisher iterates over: a consumer added or removed meanwhile is
    never half seen, and publishing takes no lock."""
    import threading

    cache = BookCache(LAYOUT)
    stop = threading.Event()
    seen: list[int] = []
    steady = CallbackConsumer(None, lambda snapshot: seen.append(snapshot.seq or 0))
    cache.add_consumer(steady)

    def churn() -> None:
        while not stop.is_set():
            consumer = CallbackConsumer(None, lambda snapshot: None)
            cache.add_consumer(consumer)
            cache.remove_consumer(consumer)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for seq in range(1, 3001):
            _, channel, data = message(seq)
            cache.apply(channel, data)
    finally:
        stop.set()
        thread.join()
    assert seen == list(range(1, 3001))  # the steady consumer saw every update, in order, once
    assert cache.consumers == (steady,)


class ShardDriver:
    """Drives a sharded session on a fake clock: every Receive(0.1) moves it 0.1 s on; a Ping is answered with
    the nodes' names and, for the nodes in `answering`, their pongs arrive with the next receive."""

    def __init__(self, monkeypatch: Any, nodes: list[str]) -> None:
        self.now = 1000.0
        self.nodes = nodes
        self.answering = set(nodes)
        self.inbox: list[list[Any]] = []
        self.pings = 0
        self.started = False
        monkeypatch.setattr("client.mirror.subscriber.time.monotonic", lambda: self.now)
        monkeypatch.setattr("client.mirror.cache.time.monotonic", lambda: self.now)

    def run(self, session: Any, seconds: float) -> None:
        """Carry out operations until the fake clock is `seconds` further on."""
        until = self.now + seconds
        result: Any = [] if self.started else None  # what the receive the last run stopped at got
        self.started = True
        while self.now < until:
            operation = session.send(result)
            result = None
            if isinstance(operation, Receive):
                if operation.timeout:
                    self.now += operation.timeout
                result, self.inbox = self.inbox, []
            elif isinstance(operation, RunFlow):
                result = run_flow_with_state(operation.flow, b"running")
            elif isinstance(operation, Ping):
                self.pings += 1
                result = list(self.nodes)
                self.inbox += [[b"pong", n.encode()] for n in self.nodes if n in self.answering]


def run_flow_with_state(flow: Any, state: Any) -> Any:
    try:
        commands = next(flow)
        while True:
            commands = flow.send([answer(c, state) for c in commands])
    except StopIteration as stop:
        return stop.value


def test_a_sharded_session_hears_from_every_node_or_ends_naming_the_silent_one(monkeypatch: Any) -> None:
    """On a Cluster each node's shard connection is pinged with its name: the mirror is only as recent as the
    node it heard from least recently, so a node that goes silent (its books would freeze) makes the cache
    unavailable and ends the session within `HEALTH_TIMEOUT`, even while other nodes and the feeder records
    still answer."""
    layout = RedisLayout(sharded=True)
    cache = BookCache(layout)
    session = SubscriberCore(MirrorPlan(layout, keys={KEY}), cache).session()
    driver = ShardDriver(monkeypatch, ["127.0.0.1:7001", "127.0.0.1:7002"])
    assert next(session) == Subscribe([KEY], [], sharded=True)
    driver.run(session, 3.0)  # both nodes answer: the session goes on
    assert driver.pings >= 8 and cache.available()
    driver.answering.discard("127.0.0.1:7002")
    silenced = driver.now
    with pytest.raises(redis.exceptions.ConnectionError, match=r"shard connection of 127\.0\.0\.1:7002"):
        driver.run(session, 5.0)
    assert driver.now - silenced <= 1.0 + 0.25 + 0.2  # HEALTH_TIMEOUT, a ping interval, two receives
    assert not cache.available()


def test_write_message_seq_reads_only_the_write_scripts_form() -> None:
    from client.layout import write_message_seq

    _, _, data = message(7)
    assert write_message_seq(data) == 7
    assert write_message_seq(data.decode()) is None  # text (decode_responses): the full decode path
    assert write_message_seq(b'{"seq":7,"live":true,"holders":["f1"]}') is None  # a status message
    assert write_message_seq(b'{"seq":-7,"rts":1.0}') is None
    assert write_message_seq(b'{"seq":1_0,"rts":1.0}') is None  # int() would take it; JSON would not
    assert write_message_seq(b'{"rts":1.0,"seq":7}') is None


def test_the_next_version_is_kept_undecoded_unless_a_consumer_or_the_metrics_want_it() -> None:
    from client.mirror import PendingBook

    cache = BookCache(LAYOUT)
    assert cache.apply(KEY, message(1)[2]) is None  # the first version of a key: decoded at once
    assert type(cache.books[KEY]) is StoredBook
    assert cache.apply(KEY, message(2)[2]) is None
    pending = cache.books[KEY]
    assert type(pending) is PendingBook and pending.seq == 2 and pending.holders == ("f1",)
    first = cache.book(KEY)
    assert isinstance(first, StoredBook) and first.seq == 2 and first.snapshot.xid == 2
    assert cache.book(KEY) is first  # decoded once, kept on the message
    seen: list[int] = []
    cache.add_consumer(CallbackConsumer({KEY}, lambda snapshot: seen.append(snapshot.seq or 0)))
    assert cache.apply(KEY, message(3)[2]) is None
    assert type(cache.books[KEY]) is StoredBook and seen == [3]  # a consumer gets it decoded on arrival
    other = BookCache(LAYOUT, on_seen=lambda exchange, seconds: None)
    other.apply(KEY, message(1)[2])
    other.apply(KEY, message(2)[2])
    assert type(other.books[KEY]) is StoredBook  # the latency metrics need wts at arrival

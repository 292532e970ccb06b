"""The promise under faults, end to end: md-feeder subprocesses, the simulator, a private redis-server."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from support.feeder_rig import Rig, poll

from client import BookState

pytestmark = pytest.mark.e2e

QUIET = ["KRW-Q1", "KRW-Q2"]


async def test_a_redundant_pair_keeps_a_quiet_book_live_through_sigkill_and_restart(rig: Rig) -> None:
    """Was: when the feeder that wrote a quiet book died, the book read feeder_dead although the other feeder
    held it (its equal-xid write had been rejected), until the market moved."""
    first = rig.start_feeder(QUIET, [])
    second = rig.start_feeder(QUIET, [])
    await poll(lambda: rig.all_live("upbit", QUIET), 20, f"books not live\n{rig.fail_log()}")
    rig.sim.set_rate(0.0)  # the market goes quiet: Upbit sends nothing more for these codes

    async def held_by_both() -> bool:
        holders = [await rig.raw.hget(f"md:upbit:{s}", "holders") for s in QUIET]
        return all(
            h is not None and set(h.split(b",")) == {b"test-feeder-1", b"test-feeder-2"} for h in holders
        )

    # each feeder delivered the same books (Upbit sends a snapshot on subscribe): both hold them
    await poll(held_by_both, 10, "the second feeder did not join as a holder")
    first.signal(signal.SIGKILL)
    first.wait(5)
    # through the dead feeder's heartbeat expiry (1 s in the tests) and well past it, never not live
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        statuses = [rig.provider.asnapshot_status(s, "upbit") for s in QUIET]
        states = [s.state for s in await asyncio.gather(*statuses)]
        assert states == [BookState.LIVE] * len(QUIET), f"a book held by the live feeder read {states}"
        await asyncio.sleep(0.05)
    assert second.alive()


async def test_a_second_feeder_with_a_live_id_stops_with_a_clear_error(rig: Rig) -> None:
    """Was: two feeders started with the same id were not detected; each vouched for the other's books."""
    first = rig.start_feeder(QUIET, [], MD_FEEDER_ID="same-id")
    await poll(lambda: rig.all_live("upbit", QUIET), 20, f"books not live\n{rig.fail_log()}")
    twin = rig.start_feeder(QUIET, [], MD_FEEDER_ID="same-id")
    assert await asyncio.to_thread(twin.wait, 20) == 2
    assert "in use by a running feeder" in twin.log()
    assert first.alive()


async def test_a_feeder_restarted_after_sigkill_takes_its_id_back(rig: Rig) -> None:
    first = rig.start_feeder(QUIET, [], MD_FEEDER_ID="restarted")
    await poll(lambda: rig.all_live("upbit", QUIET), 20, f"books not live\n{rig.fail_log()}")
    first.signal(signal.SIGKILL)
    first.wait(5)
    again = rig.start_feeder(QUIET, [], MD_FEEDER_ID="restarted")  # the record of the dead one still exists

    async def took_over() -> bool:  # its record now names the new process (its predecessor's may be gone)
        return (await rig.status("restarted")).get("pid") == str(again.pid) or not again.alive()

    await poll(took_over, 20, f"the restarted feeder did not take its id back\n{again.log()}")
    assert again.alive(), again.log()
    await poll(lambda: rig.all_live("upbit", QUIET), 20, f"books not live after the restart\n{again.log()}")


async def test_redis_out_of_memory_makes_the_books_stale_then_they_recover(rig: Rig) -> None:
    """Was: the heartbeat HSET was refused, its PEXPIRE accepted: frozen books stayed live."""
    feeder = rig.start_feeder(["KRW-BTC"], ["BTCUSDT"])
    await poll(lambda: rig.all_live("binance", ["BTCUSDT"]), 20, f"books not live\n{rig.fail_log()}")
    await rig.raw.config_set("maxmemory", "1")
    try:

        async def stale() -> bool:
            status = await rig.provider.asnapshot_status("BTCUSDT", "binance")
            return status.state is BookState.FEEDER_DEAD

        await poll(stale, 5, f"books stayed live while Redis refused every write\n{feeder.log()}")
    finally:
        await rig.raw.config_set("maxmemory", "0")
    await poll(lambda: rig.all_live("binance", ["BTCUSDT"]), 10, f"books did not recover\n{feeder.log()}")


async def test_a_wrong_typed_key_does_not_stop_the_other_books(rig: Rig) -> None:
    """Was: a wrong-typed key plus a dropped connection left a mark-down retrying forever ahead of every write."""
    await rig.raw.set("md:binance:BADUSDT", "junk")
    feeder = rig.start_feeder([], ["BADUSDT", "BTCUSDT"])
    await poll(lambda: rig.all_live("binance", ["BTCUSDT"]), 20, f"books not live\n{rig.fail_log()}")
    dropped = time.time()
    assert await rig.sim.drop("binance") == 1  # the mark-down of BADUSDT fails on its key

    async def fresh() -> (
        bool
    ):  # received after the drop: the book from before it may still read live a moment
        book = await rig.provider.aget_latest_snapshot("BTCUSDT", "binance")
        return book is not None and (book.recv_ts or 0) > dropped

    await poll(fresh, 10, f"no fresh book after the drop\n{feeder.log()}")
    first = await rig.provider.aget_latest_snapshot("BTCUSDT", "binance")
    assert first is not None

    async def moving() -> bool:
        book = await rig.provider.aget_latest_snapshot("BTCUSDT", "binance")
        return book is not None and book.xid is not None and book.xid > (first.xid or 0)

    await poll(moving, 5, f"BTCUSDT stopped updating\n{feeder.log()}")

    async def counted() -> bool:  # the record is refreshed by the next heartbeat
        return int((await rig.status()).get("failed", 0)) >= 1

    await poll(counted, 3, "the refused key was not counted")
    assert "Redis refuses writes of md:binance:BADUSDT" in feeder.log()

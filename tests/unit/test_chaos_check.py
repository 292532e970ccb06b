"""The chaos run's judge (`launch.chaos.check`): each invariant, fed a synthetic run, must flag what breaks it.

The chaos run is only as honest as this checker: if it could not see a stale live book or an id going
backwards, "0 violations" would mean nothing.
"""

from __future__ import annotations

from pathlib import Path

from launch.chaos import Fault, Run, check


def make_run(tmp_path: Path, engine_lines: list[str], **logs: str) -> Run:
    run = Run(seconds=10.0, bound=1.0, seed=1, workdir=tmp_path)
    # the simulator sent xid 1 at t=100, 2 at t=101, 3 at t=105
    run.history["upbit:KRW-BTC"] = [(100.0, 1), (101.0, 2), (105.0, 3)]
    (tmp_path / "engine-0.out").write_text("ready\n" + "".join(line + "\n" for line in engine_lines))
    for name, text in logs.items():
        (tmp_path / name.replace("_", ".")).write_text(text)
    return run


def test_a_clean_run_has_no_violations(tmp_path: Path) -> None:
    run = make_run(
        tmp_path,
        ["100.500 upbit:KRW-BTC 1", "101.200 upbit:KRW-BTC 1", "101.300 upbit:KRW-BTC 2"],
        engine_err="error MarketDataUnavailableError: Redis is down\n",
    )
    run.faults.append(Fault("stall", start=100.0, end=101.0, recovered=0.2, seen=True))
    summary = check(run)
    assert summary["violations"] == {}
    assert summary["samples"] == 3
    # xid 1 read at 101.2 while 2 had been sent at 101.0: 0.2 s behind the exchange
    assert abs(summary["worst_live_age_s"] - 0.2) < 1e-6
    assert summary["recovery_p50_max"] == {"stall": [0.2, 0.2]}


def test_a_book_served_live_longer_than_the_bound_after_a_newer_one_was_sent_is_a_violation(
    tmp_path: Path,
) -> None:
    # xid 2 was superseded by 3 at t=105; reading 2 as live at 106.5 is 1.5 s behind (bound 1 s)
    summary = check(make_run(tmp_path, ["104.000 upbit:KRW-BTC 2", "106.500 upbit:KRW-BTC 2"]))
    assert summary["violations"] == {"stale book served as live": 1}
    assert "xid 2" in summary["examples"]["stale book served as live"]


def test_an_old_but_latest_book_is_not_stale(tmp_path: Path) -> None:
    # nothing newer than 3 was ever sent: a quiet book is the exchange's latest however old it is
    summary = check(make_run(tmp_path, ["200.000 upbit:KRW-BTC 3"]))
    assert summary["violations"] == {}


def test_an_xid_going_backwards_within_one_epoch_is_a_violation_but_not_across_an_empty_restart(
    tmp_path: Path,
) -> None:
    lines = ["101.100 upbit:KRW-BTC 2", "101.200 upbit:KRW-BTC 1"]
    assert check(make_run(tmp_path, lines))["violations"].get("xid went backwards") == 1
    run = make_run(tmp_path, lines)
    run.epochs.append(101.15)  # Redis came back empty between the two reads
    assert "xid went backwards" not in check(run)["violations"]


def test_an_error_that_is_not_a_market_data_error_and_a_traceback_are_violations(tmp_path: Path) -> None:
    run = make_run(
        tmp_path,
        [],
        engine_err="unexpected error ResponseError: WRONGTYPE\n",
        feeder_log="Traceback (most recent call last):\n  ...\n",
    )
    violations = check(run)["violations"]
    assert violations == {"error not a MarketDataError": 1, "traceback": 1}


def test_feeder_memory_growth_and_recovery_failures_are_violations(tmp_path: Path) -> None:
    run = make_run(tmp_path, [])
    run.rss[42] = [60.0, 61.0, 62.0, 150.0]  # 61 MB after start-up, 150 MB later
    run.rss[43] = [60.0, 61.0, 62.0, 63.0]  # flat
    run.violations.append("stall: effect not observed")
    summary = check(run)
    assert summary["violations"] == {"feeder memory grew": 1, "recovery": 1}
    assert "pid 42" in summary["examples"]["feeder memory grew"]

"""The recorded exchange traffic in tests/data (cryptofeed capture format), read as the protocol tests need it."""

from __future__ import annotations

from pathlib import Path

from exchange_sim.replay import load_capture

DATA = Path(__file__).resolve().parent.parent / "data"
FRAMES = DATA / "frames"
RECORDINGS = DATA / "recordings"


def received_frames(path: Path) -> list[bytes | str]:
    """Frames the client received: ``ts: b'...'`` lines are binary frames, ``ts: {...}`` text frames."""
    return [frame.payload for frame in load_capture(path)]

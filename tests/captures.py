"""Reading the recorded exchange traffic in tests/data (cryptofeed capture format), for the protocol tests."""

from __future__ import annotations

import ast
from pathlib import Path

DATA = Path(__file__).parent / "data"
FRAMES = DATA / "frames"


def received_frames(path: Path) -> list[bytes | str]:
    """Frames the client received: ``ts: b'...'`` lines are binary frames, ``ts: {...}`` text frames."""
    frames: list[bytes | str] = []
    for line in path.read_text().splitlines():
        head, sep, payload = line.partition(": ")
        if not sep or " " in head:  # blank, `URL <-> ts` and `URL <- ts: sent` lines
            continue
        frames.append(ast.literal_eval(payload) if payload.startswith("b'") else payload)
    return frames

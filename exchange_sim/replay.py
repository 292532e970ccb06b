"""Recorded captures: parse them, so a connection can be fed real traffic instead of generated books.

The capture format is the one of the cryptofeed sample data in ``tests/data/sim/`` (one event per line):

- ``URL <-> unix_ts``: the connection was opened (skipped);
- ``URL <- unix_ts: PAYLOAD``: a frame the client sent (skipped: the client under test sends its own);
- ``unix_ts: PAYLOAD``: a frame received from the exchange. ``b'...'`` is a Python bytes literal and was a
  **binary** WebSocket frame (Upbit); anything else was a text frame (Binance).

Replaying real frames byte for byte is the point: they carry the quirks (trade frames interleaved with books,
SIMPLE keys, number formats) that generated books do not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class CapturedFrame:
    """One frame the exchange sent: when (seconds since the epoch) and exactly what."""

    ts: float
    payload: bytes | str  # bytes: a binary frame; str: a text frame


class CaptureFormatError(ValueError):
    """A capture line that is neither a connection marker, a sent frame, nor a received frame."""


def parse_capture(lines: Iterable[str]) -> list[CapturedFrame]:
    """The received frames of a capture, in order. Blank lines are ignored; a malformed line raises."""
    frames: list[CapturedFrame] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        head, sep, payload = line.partition(": ")
        if " <-> " in head or " <- " in head:
            continue  # connection opened / frame sent by the recorded client
        try:
            ts = float(head)
        except ValueError:
            raise CaptureFormatError(
                f"line {number}: expected 'unix_ts: payload', got {line[:60]!r}"
            ) from None
        if not sep:
            raise CaptureFormatError(f"line {number}: no payload after the timestamp")
        if payload.startswith(("b'", 'b"')):
            try:
                data = ast.literal_eval(payload)
            except (ValueError, SyntaxError) as exc:
                raise CaptureFormatError(f"line {number}: bad bytes literal: {exc}") from None
            if not isinstance(data, bytes):
                raise CaptureFormatError(f"line {number}: bad bytes literal")
            frames.append(CapturedFrame(ts, data))
        else:
            frames.append(CapturedFrame(ts, payload))
    return frames


def load_capture(path: str | Path) -> list[CapturedFrame]:
    """Read a capture file (UTF-8). Raises CaptureFormatError if it holds no received frame at all."""
    with open(path, encoding="utf-8") as fh:
        frames = parse_capture(fh)
    if not frames:
        raise CaptureFormatError(f"{path}: no received frames in this capture")
    return frames

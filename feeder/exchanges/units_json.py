"""Order-book sides as stored text straight from the frame, in C (`feeder/exchanges/_units.c`), when built.

A book the writer takes undecoded costs, in Python, a decode into floats and tuples and then ``orjson.dumps``
of both sides: 22 to 24 µs for a 30-unit Upbit frame, a quarter of the feeder's CPU per frame at 2,000 frames/s.
`units_to_sides` writes the two sides' text straight from the frame's bytes in 2.6 µs (`pairs_to_sides` does
the same for a Binance partial book): the numbers are
checked and normalised as text (a decimal of at most 15 significant digits is the shortest text of its double,
so it is what orjson writes for it in [1e-5, 1e16)), and only the best prices become floats. Anything it does
not take (another shape, a zero, more digits or a value out of that range) returns None, and the frame is
decoded the ordinary way.

The extension is optional: the package builds it when a C compiler is there (setup.py) and the feeder runs
without it, slower (`AVAILABLE` says which; ``md-feeder`` logs it at start).
tests/unit/test_units_json.py checks it against the Python decoder on captured frames and on random books,
and fails when the extension is missing where the tests run (CI builds it).
"""

from __future__ import annotations

from collections.abc import Callable

# (units, the four keys as spelled, integers allowed, max units, depth or 0) ->
# (asks_json, bids_json, best ask, best bid, units) or None
UnitsToSides = Callable[
    [bytes, tuple[bytes, bytes, bytes, bytes], bool, int, int], tuple[bytes, bytes, float, float, int] | None
]

# (what follows "bids": in a Binance partial book, max levels) -> (bids_json, asks_json, best bid, best ask,
# bid levels) or None
PairsToSides = Callable[[bytes, int], tuple[bytes, bytes, float, float, int] | None]

units_to_sides: UnitsToSides | None
pairs_to_sides: PairsToSides | None
try:
    from feeder.exchanges._units import pairs_to_sides, units_to_sides
except ImportError:  # not built (no compiler when installed): the Python decoders do it all
    units_to_sides = pairs_to_sides = None

AVAILABLE = units_to_sides is not None

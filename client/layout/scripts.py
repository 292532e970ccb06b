"""The Lua scripts of the layout: each one atomic step on one book's key and channel (Cluster-safe).

A script is called by its SHA; when Redis answers NOSCRIPT (it restarted, or SCRIPT FLUSH) the flow that
called it loads it and runs it again, which is safe because NOSCRIPT means nothing ran.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LuaScript:
    """A script called by SHA; the flow that calls it loads it when Redis answers NOSCRIPT (after a restart)."""

    name: str
    source: str
    sha: str = field(init=False)  # computed once: a write batch names the script by it

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# KEYS[1] book key (and channel). ARGV: 1 xid, 2 writer id, 3 the message's middle part (from "exchange" to
# "ask", see `encode_book`), 4 exchange, 5 symbol, 6 bids JSON, 7 asks JSON, 8 best bid, 9 best ask, 10 ts,
# 11 recv_ts, 12 hb. Returns the new seq, or 0 when the write is older than the stored book (or as old and
# from another writer). Field names are literals and the sides travel once (the message is assembled here):
# every argument costs Redis a conversion into Lua, so the fewer and smaller the cheaper the script.
WRITE_BOOK = LuaScript(
    "write_book",
    """
local cur = redis.call('HMGET', KEYS[1], 'xid', 'feeder', 'seq')
local old = tonumber(cur[1])
if old then
  local new = tonumber(ARGV[1])
  if new < old or (new == old and cur[2] ~= ARGV[2]) then
    return 0
  end
end
local seq = (tonumber(cur[3]) or 0) + 1
redis.call('HSET', KEYS[1], 'seq', seq, 'exchange', ARGV[4], 'symbol', ARGV[5], 'bids', ARGV[6], 'asks', ARGV[7],
  'bid', ARGV[8], 'ask', ARGV[9], 'ts', ARGV[10], 'recv_ts', ARGV[11], 'xid', ARGV[1], 'feeder', ARGV[2],
  'live', '1', 'hb', ARGV[12])
redis.call('PUBLISH', KEYS[1],
  '{"seq":' .. seq .. ',' .. ARGV[3] .. ',"bids":' .. ARGV[6] .. ',"asks":' .. ARGV[7] .. '}')
return seq
""",
)


# KEYS[1] book key. ARGV[1] writer id, ARGV[2] status payload without its leading '{"seq":N,'.
# Marks the book not live when (and only when) this writer wrote it, and announces that on the channel.
MARK_DOWN = LuaScript(
    "mark_down",
    """
local cur = redis.call('HMGET', KEYS[1], 'feeder', 'live', 'seq')
if cur[1] ~= ARGV[1] or cur[2] == '0' then
  return 0
end
redis.call('HSET', KEYS[1], 'live', '0')
redis.call('PUBLISH', KEYS[1], '{"seq":' .. (tonumber(cur[3]) or 0) .. ',' .. ARGV[2])
return 1
""",
)

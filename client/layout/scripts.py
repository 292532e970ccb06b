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


# Result codes of WRITE_BOOK besides a new seq (> 0).
REFUSED_OLDER = 0  # older than the stored book, or a client's write over a book feeders hold
REFUSED_FUTURE = -1  # a time-based ordering id further ahead of Redis's clock than the margin allowed
JOINED = -2  # another feeder delivered the stored book again: it is recorded as a holder, no new version
UNCHANGED = (
    -3
)  # the same feeder delivered the same book again (Binance pushes it every interval): no new version

# KEYS[1] book key (and channel). ARGV: 1 xid, 2 writer id, 3 the message's middle part (from "exchange" to
# "ask", see `encode_book`), 4 exchange, 5 symbol, 6 bids JSON, 7 asks JSON, 8 best bid, 9 best ask, 10 ts,
# 11 recv_ts, 12 hb ('1': a feeder whose heartbeat vouches for the book; '0': a client), 13 the margin in ms
# by which a time-based ordering id may lead Redis's clock ('' when the id is not a time), 14 how many ms ago
# (on the writer's clock) the book was received, 15 '1' when the book comes from the exchange simulator.
#
# Ordering, the contract of docs/redis-layout.md:
# - feeder over feeder: a newer xid wins; the same xid from the same feeder is a rewrite when the book differs
#   (consecutive Upbit frames can share a millisecond) and nothing (UNCHANGED) when it does not; the same xid
#   from another feeder adds it to `holders` (JOINED), or, when the book is marked down, makes it live again
#   as a new version;
# - client over feeder: refused while any feeder holds the book (`holders` not empty): a client's id may come
#   from another space (a timestamp where the exchange counts updates) and must not freeze a fed book;
# - feeder over client: always accepted, for the same reason;
# - client over client: a newer xid wins, as for feeders.
# Every accepted write stamps `rts`, when the book was received on Redis's own clock (Redis's TIME minus the
# writer's own measure of how long ago it received it), so that readers measure ages on one clock whatever
# the clocks of feeder and reader hosts say, and `wts`, when Redis accepted it (Redis's TIME): with `ts`
# (the exchange's time) and `recv_ts` every book carries the times of each stage it went through.
# Field names are literals and the sides travel once (the message is assembled here): every argument costs
# Redis a conversion into Lua, so the fewer and smaller the cheaper the script.
WRITE_BOOK = LuaScript(
    "write_book",
    """
local cur = redis.call('HMGET', KEYS[1], 'xid', 'feeder', 'seq', 'hb', 'holders', 'live')
local t = redis.call('TIME')
local new = tonumber(ARGV[1])
if ARGV[13] ~= '' and new > tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[13]) then
  return -1
end
local writer, feeder = ARGV[2], ARGV[12] == '1'
local old = tonumber(cur[1])
local holders = cur[5] or ((cur[4] == '1' and cur[2]) or '')
local keep = false
if old then
  local held = cur[4] == '1'
  if feeder and held then
    if new < old then return 0 end
    if new == old then
      local join = false
      local holding = string.find(',' .. holders .. ',', ',' .. writer .. ',', 1, true)
      if cur[2] == writer then
        keep = cur[6] ~= '0'
        if keep then
          local stored = redis.call('HMGET', KEYS[1], 'bids', 'asks')
          if stored[1] == ARGV[6] and stored[2] == ARGV[7] then
            if holding then return -3 end
            join = true  -- marked down, then back with the same book: a holder again
          end
        end
      elseif cur[6] ~= '0' and holders ~= '' then
        if holding then return -2 end
        join = true
      end
      if join then
        if holders == '' then holders = writer else holders = holders .. ',' .. writer end
        redis.call('HSET', KEYS[1], 'holders', holders)
        redis.call('PUBLISH', KEYS[1], '{"seq":' .. cur[3] .. ',"live":true,"holders":["' ..
          string.gsub(holders, ',', '","') .. '"]}')
        return -2
      end
    end
  elseif not feeder then
    if held and holders ~= '' then return 0 end
    if not held and (new < old or (new == old and cur[2] ~= writer)) then return 0 end
  end
end
if not feeder then
  holders = ''
elseif not keep then
  holders = writer
elseif not string.find(',' .. holders .. ',', ',' .. writer .. ',', 1, true) then
  holders = holders .. ',' .. writer
end
local seq = (tonumber(cur[3]) or 0) + 1
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local received = now_ms - tonumber(ARGV[14])
local rts = math.floor(received / 1000) .. '.' .. string.format('%03d', received % 1000)
local wts = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local listed = '[]'
if holders ~= '' then listed = '["' .. string.gsub(holders, ',', '","') .. '"]' end
redis.call('HSET', KEYS[1], 'seq', seq, 'exchange', ARGV[4], 'symbol', ARGV[5], 'bids', ARGV[6], 'asks', ARGV[7],
  'bid', ARGV[8], 'ask', ARGV[9], 'ts', ARGV[10], 'recv_ts', ARGV[11], 'xid', ARGV[1], 'feeder', writer,
  'live', '1', 'hb', ARGV[12], 'holders', holders, 'rts', rts, 'wts', wts, 'sim', ARGV[15])
redis.call('PUBLISH', KEYS[1], '{"seq":' .. seq .. ',"rts":' .. rts .. ',"wts":' .. wts .. ',"holders":' .. listed .. ',' ..
  ARGV[3] .. ',"bids":' .. ARGV[6] .. ',"asks":' .. ARGV[7] .. '}')
return seq
""",
)


# KEYS[1] book key. ARGV[1] writer id, ARGV[2] the status message's middle ('"exchange":…,"feeder":…'),
# ARGV[3] '1' when the exchange restarted the book's ordering ids.
# The writer's connection for this book dropped: it stops being a holder. When no holder is left the book is
# marked not live. The new holders (and whether the book is live) are announced on the channel either way.
# A restart, once no holder is left (whether or not this writer was one), sets `xid` to -1: the ids of the new
# sequence are lower than the stored one and would be refused as older; -1 is below any id.
MARK_DOWN = LuaScript(
    "mark_down",
    """
local cur = redis.call('HMGET', KEYS[1], 'holders', 'seq', 'hb', 'feeder')
local holders = cur[1] or ((cur[3] == '1' and cur[4]) or '')
local restart = ARGV[3] == '1'
local list = ',' .. holders .. ','
local s, e = string.find(list, ',' .. ARGV[1] .. ',', 1, true)
if not s or holders == '' then
  if restart and holders == '' and cur[2] then
    redis.call('HSET', KEYS[1], 'xid', '-1')
  end
  return 0
end
holders = string.sub(string.sub(list, 1, s) .. string.sub(list, e + 1), 2, -2)
local live = holders ~= ''
local listed = '[]'
if live then listed = '["' .. string.gsub(holders, ',', '","') .. '"]' end
redis.call('HSET', KEYS[1], 'holders', holders, 'live', live and '1' or '0')
if restart and not live then
  redis.call('HSET', KEYS[1], 'xid', '-1')
end
redis.call('PUBLISH', KEYS[1], '{"seq":' .. (tonumber(cur[2]) or 0) .. ',' .. ARGV[2] .. ',"live":' ..
  (live and 'true' or 'false') .. ',"holders":' .. listed .. '}')
return 1
""",
)


# Result codes of HEARTBEAT.
TAKEN_OVER = 0  # another process took the record over: two feeders run with one id (nothing written)
BEAT = 1
RECREATED = 2  # written, but the record was gone: Redis lost it before its expiry (restart, flush, fail-over)

# KEYS[1] feeder record. ARGV[1] this process's instance token, ARGV[2] expiry in ms, ARGV[3] '1' to take the
# record over (at start, once its previous owner is known to be gone), ARGV[4…] field, value, field, value…
# The fields and the expiry move together (a refused HSET, e.g. out of memory, aborts before the PEXPIRE, so
# a feeder whose writes fail lets its books go stale).
HEARTBEAT = LuaScript(
    "heartbeat",
    """
local owner = redis.call('HGET', KEYS[1], 'instance')
if ARGV[3] ~= '1' and owner and owner ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'instance', ARGV[1], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if owner then return 1 end
return 2
""",
)


# KEYS[1] the pacing log of one exchange on one host (`RedisLayout.pacing_key`). ARGV[1] most connection
# opens in any window, ARGV[2] the window in ms, ARGV[3] a unique token for this open.
# A sliding-window log on Redis's clock: the opens of the last window, as a sorted set scored by time. Under the
# limit the open is logged and 0 returned; at it, nothing is logged and the ms until the oldest open leaves the
# window is returned, so that no window, wherever it starts, ever holds more than the limit, whichever of the
# feeders on this host (one IP, as the exchanges count) asks.
PACE = LuaScript(
    "pace",
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {0, now}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {tonumber(oldest[2]) + window - now + 1, now}
""",
)


def with_history(script: LuaScript) -> LuaScript:
    """The same write script that also appends every accepted version to the book's capped history stream:
    KEYS[2] (`RedisLayout.history_key`, in the book's hash slot), at most ARGV[16] entries (exact ``MAXLEN``:
    each append past the cap drops the oldest entry, a constant cost). The entry repeats what a reader of the
    version needs: seq, xid, ts, recv_ts, rts, feeder and both sides as JSON."""
    tail = "\nreturn seq\n"
    assert script.source.endswith(tail), script.name
    append = (
        "\nredis.call('XADD', KEYS[2], 'MAXLEN', ARGV[16], '*', 'seq', seq, 'xid', ARGV[1], 'ts', ARGV[10],"
        "\n  'recv_ts', ARGV[11], 'rts', rts, 'feeder', writer, 'bids', ARGV[6], 'asks', ARGV[7])"
    )
    return LuaScript(script.name + "_history", script.source[: -len(tail)] + append + tail)


def sharded(script: LuaScript) -> LuaScript:
    """The same script announcing with SPUBLISH on the book's own shard channel (Redis Cluster): a classic
    PUBLISH is broadcast over the cluster bus to every node, SPUBLISH stays on the node of the book's slot."""
    return LuaScript(script.name, script.source.replace("'PUBLISH'", "'SPUBLISH'"))


WRITE_BOOK_SHARDED = sharded(WRITE_BOOK)
WRITE_BOOK_HISTORY = with_history(WRITE_BOOK)
WRITE_BOOK_HISTORY_SHARDED = sharded(WRITE_BOOK_HISTORY)
MARK_DOWN_SHARDED = sharded(MARK_DOWN)

SCRIPTS = {
    script.sha: script.name
    for script in (
        WRITE_BOOK,
        MARK_DOWN,
        HEARTBEAT,
        PACE,
        WRITE_BOOK_SHARDED,
        MARK_DOWN_SHARDED,
        WRITE_BOOK_HISTORY,
        WRITE_BOOK_HISTORY_SHARDED,
    )
}
"""Script names by SHA, for error messages."""

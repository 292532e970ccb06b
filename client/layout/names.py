"""Names in Redis: validation of every part that becomes a key, and the keys and channels built from them.

``<prefix>:<exchange>:<symbol>``  hash, one per book; also the pub/sub channel announcing each accepted write
``<prefix>:feeder:<feeder_id>``   hash with an expiry: liveness and counters of one feeder process
``<prefix>:symbols:<exchange>``   set of symbols that have a book on that exchange
``<prefix>:exchanges``            set of exchanges that have at least one book
``<prefix>:last:<exchange>``      the symbol most recently written on that exchange (legacy ``snapshot_upbit``)

People name a book ``EXCHANGE:SYMBOL`` (settings, the ``md`` CLI): `split_target` reads that grammar, and
`RedisLayout.parse_book_key` / `exchange_of` read keys back; nothing outside this package splits a name.
"""

from __future__ import annotations

import os
import re
import socket

from client.errors import InvalidSymbolError

MAX_SYMBOL_LENGTH = 64
_SYMBOL_RE = re.compile(r"[A-Z0-9][A-Z0-9._-]*")
_EXCHANGE_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
WRITER_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
# Names of the non-book keys; an exchange with one of these names would collide with them.
_RESERVED_EXCHANGES = frozenset({"feeder", "symbols", "exchanges", "last"})


# --------------------------------------------------------------------------------------------- validation
def validate_symbol(symbol: object) -> str:
    """Return the symbol unchanged, or raise InvalidSymbolError before it can become part of a key."""
    if not isinstance(symbol, str):
        raise InvalidSymbolError(f"symbol must be a str, not {type(symbol).__name__}")
    if not symbol or len(symbol) > MAX_SYMBOL_LENGTH or not _SYMBOL_RE.fullmatch(symbol):
        shown = symbol if len(symbol) <= 80 else symbol[:77] + "..."
        raise InvalidSymbolError(
            f"invalid symbol {shown!r}: expected 1-{MAX_SYMBOL_LENGTH} characters of [A-Z0-9._-], "
            "starting with a letter or digit"
        )
    return symbol


def validate_exchange(exchange: object) -> str:
    if (
        not isinstance(exchange, str)
        or len(exchange) > 32
        or not _EXCHANGE_RE.fullmatch(exchange)
        or exchange in _RESERVED_EXCHANGES
    ):
        raise InvalidSymbolError(
            f"invalid exchange name {exchange!r}: expected 1-32 characters of [a-z0-9_-], "
            f"not one of {sorted(_RESERVED_EXCHANGES)}"
        )
    return exchange


def validate_writer_id(writer: object) -> str:
    if not isinstance(writer, str) or not WRITER_RE.fullmatch(writer):
        raise InvalidSymbolError(
            f"invalid writer/feeder id {writer!r}: expected 1-128 characters of [A-Za-z0-9_.:@-]"
        )
    return writer


def validate_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise InvalidSymbolError(f"invalid key prefix {prefix!r}: expected 1-32 characters of [A-Za-z0-9_.-]")
    return prefix


def normal_symbol(text: str) -> str:
    """A symbol as people type it (``krw-btc ``) as the feeders store it (``KRW-BTC``), validated."""
    return validate_symbol(text.strip().upper())


def normal_exchange(text: str) -> str:
    """An exchange name as people type it (``Upbit``) as it is in keys (``upbit``), validated."""
    return validate_exchange(text.strip().lower())


def split_target(text: str) -> tuple[str | None, str]:
    """``"upbit:KRW-BTC"`` -> ("upbit", "KRW-BTC"); a bare ``"KRW-BTC"`` -> (None, "KRW-BTC"). Not validated."""
    exchange, _, symbol = text.rpartition(":")
    return exchange or None, symbol


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64] or "host"


def process_writer_id(separator: str) -> str:
    """``<host><separator><pid>``: a writer id unique to this process (the default client id)."""
    return f"{_host()}{separator}{os.getpid()}"


def host_writer_id(*parts: str) -> str:
    """``<host>-<part>-…``: a writer id that stays the same when the same service restarts on this host (the
    default feeder id: readers see a restarted feeder as the same one, not as a dead one and a stranger)."""
    return validate_writer_id("-".join([_host(), *parts])[:128])


# --------------------------------------------------------------------------------------------- key names
class RedisLayout:
    """Key and channel names under one prefix. Channel names equal key names on purpose (Cluster sharding).

    Names are validated once and remembered: engines ask for the same few books in a hot loop.
    """

    __slots__ = ("_keys", "_parsed", "prefix", "sharded")
    _MEMO_LIMIT = 100_000

    def __init__(self, prefix: str = "md", *, sharded: bool = False) -> None:
        """`sharded`: Redis Cluster: books are announced with SPUBLISH on their own (shard) channel and mirrors
        SSUBSCRIBE to each book's channel; otherwise PUBLISH, so that ``PSUBSCRIBE md:*`` sees every book."""
        self.prefix = validate_prefix(prefix)
        self.sharded = sharded
        self._keys: dict[tuple[str, str], str] = {}
        self._parsed: dict[str, tuple[str, str]] = {}

    def book_key(self, exchange: str, symbol: str) -> str:
        """The hash of one book, which is also the name of the channel its writes are announced on."""
        try:
            return self._keys[(exchange, symbol)]
        except (KeyError, TypeError):
            pass
        key = f"{self.prefix}:{validate_exchange(exchange)}:{validate_symbol(symbol)}"
        if len(self._keys) >= self._MEMO_LIMIT:
            self._keys.clear()
        self._keys[(exchange, symbol)] = key
        return key

    def book_pattern(self, exchange: str | None = None) -> str:
        """Glob for PSUBSCRIBE/SCAN over one exchange's books (all exchanges when None)."""
        return f"{self.prefix}:{validate_exchange(exchange)}:*" if exchange else f"{self.prefix}:*:*"

    def parse_book_key(self, key: str | bytes) -> tuple[str, str]:
        """(exchange, symbol) of a book key or channel; InvalidSymbolError for anything else."""
        text = key.decode() if isinstance(key, bytes) else key
        parsed = self._parsed.get(text)
        if parsed is not None:
            return parsed
        head, sep, rest = text.partition(":")
        exchange, sep2, symbol = rest.partition(":")
        if head != self.prefix or not sep or not sep2:
            raise InvalidSymbolError(f"{text!r} is not a book key under prefix {self.prefix!r}")
        parsed = validate_exchange(exchange), validate_symbol(symbol)
        if len(self._parsed) >= self._MEMO_LIMIT:
            self._parsed.clear()
        self._parsed[text] = parsed
        return parsed

    def exchange_of(self, key: str | bytes) -> str:
        """The exchange of a book key or channel; InvalidSymbolError for anything else."""
        return self.parse_book_key(key)[0]

    def feeder_key(self, feeder_id: str) -> str:
        return f"{self.prefix}:feeder:{validate_writer_id(feeder_id)}"

    def history_key(self, exchange: str, symbol: str) -> str:
        """The capped stream of a book's past versions, ``md:hist:{md:upbit:KRW-BTC}``: the braces make Redis
        Cluster hash only the book key, so the stream lives in the book's slot and one script writes both;
        the prefix keeps it under the ACL users' ``~md:*``."""
        return f"{self.prefix}:hist:{{{self.book_key(exchange, symbol)}}}"

    def wanted_key(self, exchange: str) -> str:
        """Symbols operators added on `exchange` at run time (``md subscribe``), fed beside the configured
        ones by every feeder of it."""
        return f"{self.prefix}:wanted:{validate_exchange(exchange)}"

    def unwanted_key(self, exchange: str) -> str:
        """Symbols operators removed on `exchange` at run time (``md unsubscribe``), configured or not."""
        return f"{self.prefix}:unwanted:{validate_exchange(exchange)}"

    def registry_key(self) -> str:
        """The hash of every feeder seen: id -> its last record as JSON, kept after the record expires, so
        that a dead feeder is still listed (``md status``) with its last counters."""
        return f"{self.prefix}:feeders"

    def feeder_pattern(self) -> str:
        return f"{self.prefix}:feeder:*"

    def parse_feeder_key(self, key: str | bytes) -> str:
        """The feeder id of a feeder status key (from SCAN); InvalidSymbolError for anything else."""
        text = key.decode() if isinstance(key, bytes) else key
        head = f"{self.prefix}:feeder:"
        if not text.startswith(head):
            raise InvalidSymbolError(f"{text!r} is not a feeder key under prefix {self.prefix!r}")
        return validate_writer_id(text[len(head) :])

    def pacing_key(self, exchange: str, host: str) -> str:
        """The log of recent connection opens to `exchange` by the feeders of one host (one IP, as the
        exchanges count), shared through Redis so that together they stay under the exchange's limit."""
        return f"{self.prefix}:pacing:{validate_exchange(exchange)}:{validate_writer_id(host)}"

    def symbols_key(self, exchange: str) -> str:
        return f"{self.prefix}:symbols:{validate_exchange(exchange)}"

    def exchanges_key(self) -> str:
        return f"{self.prefix}:exchanges"

    def last_key(self, exchange: str) -> str:
        return f"{self.prefix}:last:{validate_exchange(exchange)}"

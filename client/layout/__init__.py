"""The Redis layout: everything that knows how the cache looks in Redis, in one package.

People read the same layout with ``redis-cli`` (README, "Inspecting with redis-cli"; docs/redis-layout.md).

- `names`: validation of every name that becomes part of a key, and the keys and channels built from them;
- `scripts`: the Lua scripts (atomic write of a book, mark-down), called by SHA;
- `codec`: a snapshot encoded for the write script, decoded back from a hash or a pub/sub message;
- `feeder_record`: the fields of ``<prefix>:feeder:<id>`` that the feeder writes and readers judge by;
- `flows`: every round trip (write, mark-down, reads, index lookups, feeder record), as generators that a
  driver in `client.transport` runs with a sync or an asyncio client.

No other module of the product names a Redis command, a key or a field (tests/unit/test_structure.py).
"""

from client.layout.codec import (
    MAX_TIMESTAMP,
    MAX_XID,
    READ_FIELDS,
    Command,
    EncodedBook,
    MessageHead,
    StoredBook,
    book_identity,
    decode_book,
    decode_book_fields,
    decode_message_book,
    decode_message_head,
    encode_book,
)
from client.layout.feeder_record import (
    HEARTBEAT_FIELD,
    OFFLINE,
    RUNNING,
    STATE_FIELD,
    FeederRecord,
    feeder_alive,
    split_record,
)
from client.layout.flows import (
    Flow,
    carriers_flow,
    feeder_records_flow,
    feeder_states_flow,
    heartbeat_flow,
    indexed_books_flow,
    last_symbol_flow,
    mark_down_flow,
    offline_flow,
    read_book_command,
    read_books_flow,
    scan_flow,
    write_flow,
)
from client.layout.names import (
    MAX_SYMBOL_LENGTH,
    RedisLayout,
    process_writer_id,
    split_target,
    validate_exchange,
    validate_prefix,
    validate_symbol,
    validate_writer_id,
)
from client.layout.scripts import MARK_DOWN, WRITE_BOOK, LuaScript

__all__ = [
    "HEARTBEAT_FIELD",
    "MARK_DOWN",
    "MAX_SYMBOL_LENGTH",
    "MAX_TIMESTAMP",
    "MAX_XID",
    "OFFLINE",
    "READ_FIELDS",
    "RUNNING",
    "STATE_FIELD",
    "WRITE_BOOK",
    "Command",
    "EncodedBook",
    "FeederRecord",
    "Flow",
    "LuaScript",
    "MessageHead",
    "RedisLayout",
    "StoredBook",
    "book_identity",
    "carriers_flow",
    "decode_book",
    "decode_book_fields",
    "decode_message_book",
    "decode_message_head",
    "encode_book",
    "feeder_alive",
    "feeder_records_flow",
    "feeder_states_flow",
    "heartbeat_flow",
    "indexed_books_flow",
    "last_symbol_flow",
    "mark_down_flow",
    "offline_flow",
    "process_writer_id",
    "read_book_command",
    "read_books_flow",
    "scan_flow",
    "split_record",
    "split_target",
    "validate_exchange",
    "validate_prefix",
    "validate_symbol",
    "validate_writer_id",
    "write_flow",
]

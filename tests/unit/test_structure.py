"""The structure rules the code keeps, checked on its source: each concern in one place.

- Only `client.layout` names Redis commands, builds or splits keys; nothing else in the product does.
- Every redis-py internal is used in `client.transport` only; every websockets internal in
  `feeder.websocket_queue` (the feeder) or `exchange_sim.transport` (the simulator) only.
- Layering: the client never imports the feeder or the tools; the simulator imports nothing of the client
  but its models; exchange protocols do no I/O (no redis, websockets or asyncio).
- Every exchange module is registered (descriptor and settings); no ``Any`` alias stands in for a type.

A rule broken here is a concern leaking out of its module: move the code, don't widen the rule.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import feeder.exchanges
from feeder.exchanges.registry import EXCHANGES, ExchangeSettings

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("client", "feeder", "md_cli", "launch", "exchange_sim")

# Commands that read or write data; a string naming one, outside the layout, is a command sent from there.
REDIS_COMMANDS = frozenset(
    "GET SET DEL MGET HSET HGET HMGET HGETALL HDEL HINCRBY PUBLISH SPUBLISH SMEMBERS SISMEMBER SADD SREM SCAN "
    "KEYS EVAL EVALSHA SCRIPT PEXPIRE EXPIRE PTTL TTL EXISTS FLUSHALL FLUSHDB MULTI EXEC INCR".split()
)
# redis-py client methods of those commands (get, set, delete, keys, exists are left out: dicts and paths have them).
REDIS_METHODS = frozenset(
    "hset hget hmget hgetall hdel hincrby publish spublish smembers sismember sadd srem scan scan_iter "
    "eval evalsha script_load script_flush pexpire expire pttl ttl flushall flushdb incr mget".split()
)
# Private internals of the dependencies, and the one module allowed to use each group.
INTERNALS = {
    "client/transport.py": {
        "send_packed_command",
        "read_response",
        "get_connection",
        "response_callbacks",
        "connection_kwargs",
    },
    "feeder/websocket_queue.py": {
        "recv_messages",
        "maybe_resume",
        "maybe_pause",
        "gi_yieldfrom",
        "max_message_size",
    },
    "exchange_sim/transport.py": {
        "send_context",
        "process_event",
        "send_data",
        "data_to_send",
        "send_text",
        "send_binary",
        "pause_reading",
        "resume_reading",
        "set_write_buffer_limits",
        "can_write_eof",
    },
}
# Exchange protocol strings that happen to spell a Redis command (Binance's SUBSCRIBE method...).
EXCHANGE_MODULES = ("feeder/exchanges/", "exchange_sim/")


def modules() -> Iterator[tuple[str, ast.Module]]:
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            yield rel, ast.parse(path.read_text(), filename=rel)


def docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings (or bare strings documenting an attribute)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for stmt in body:
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                    found.add(id(stmt.value))
    return found


def imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def in_layout(rel: str) -> bool:
    return rel.startswith("client/layout/")


def test_the_scan_sees_the_product() -> None:
    """The rules below would pass vacuously on an empty scan: the layout itself must trip them."""
    seen = dict(modules())
    assert {"client/layout/flows.py", "client/transport.py", "feeder/writer.py", "md_cli/commands.py"} <= set(
        seen
    )
    flows = seen["client/layout/flows.py"]
    assert any(isinstance(n, ast.Constant) and n.value == "EVALSHA" for n in ast.walk(flows))
    names = seen["client/layout/names.py"]
    assert any(
        isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "partition"
        and n.args
        and isinstance(n.args[0], ast.Constant)
        and n.args[0].value == ":"
        for n in ast.walk(names)
    )


def test_only_the_layout_names_redis_commands() -> None:
    offenders = []
    for rel, tree in modules():
        if in_layout(rel) or rel.startswith(EXCHANGE_MODULES):
            continue
        docs = docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and id(node) not in docs and node.value in REDIS_COMMANDS:
                offenders.append(f"{rel}:{node.lineno}: {node.value!r}")
            call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if call and node.func.attr in REDIS_METHODS:  # type: ignore[attr-defined]
                offenders.append(f"{rel}:{node.lineno}: .{node.func.attr}()")  # type: ignore[attr-defined]
    assert not offenders, "Redis commands outside client/layout:\n" + "\n".join(offenders)


def test_only_the_layout_builds_or_splits_keys() -> None:
    offenders = []
    for rel, tree in modules():
        if in_layout(rel) or rel == "client/masking.py":  # masking splits a URL's user:password
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("split", "rsplit", "partition", "rpartition")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == ":"
            ):
                offenders.append(f"{rel}:{node.lineno}: .{node.func.attr}(':')")
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
                if any(part in text for part in (":feeder:", ":symbols:", ":last:", ":exchanges")):
                    offenders.append(f"{rel}:{node.lineno}: builds a key: {text!r}")
    assert not offenders, "key grammar outside client/layout:\n" + "\n".join(offenders)


@pytest.mark.parametrize("owner", sorted(INTERNALS))
def test_dependency_internals_stay_behind_their_one_module(owner: str) -> None:
    names = INTERNALS[owner]
    used_by_owner = False
    offenders = []
    for rel, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in names:
                if rel == owner:
                    used_by_owner = True
                else:
                    offenders.append(f"{rel}:{node.lineno}: .{node.attr}")
    assert used_by_owner, f"{owner} no longer uses any of {sorted(names)}: update this test"
    assert not offenders, f"internals that belong in {owner}:\n" + "\n".join(offenders)


def test_layering() -> None:
    problems = []
    for rel, tree in modules():
        package = rel.split("/", 1)[0]
        deps = {name.split(".", 1)[0] for name in imported(tree)}
        full = imported(tree)
        if package == "client" and deps & {"feeder", "md_cli", "launch", "exchange_sim"}:
            problems.append(
                f"{rel}: the client imports {sorted(deps & {'feeder', 'md_cli', 'launch', 'exchange_sim'})}"
            )
        if package == "feeder" and deps & {"md_cli", "launch", "exchange_sim"}:
            problems.append(f"{rel}: the feeder imports a tool")
        if package == "exchange_sim":
            bad = {name for name in full if name.startswith(("client", "feeder")) and name != "client.models"}
            if bad:
                problems.append(f"{rel}: the simulator imports {sorted(bad)} (only client.models is allowed)")
        if rel.startswith("feeder/exchanges/") and deps & {"redis", "websockets", "asyncio", "socket"}:
            problems.append(
                f"{rel}: an exchange protocol does I/O ({sorted(deps & {'redis', 'websockets', 'asyncio'})})"
            )
        if package == "md_cli" and "feeder" in deps:
            problems.append(f"{rel}: the md CLI imports the feeder")
    assert not problems, "\n".join(problems)


def test_every_exchange_module_is_registered() -> None:
    found = [
        m.name
        for m in pkgutil.iter_modules(feeder.exchanges.__path__)
        if m.name not in ("base", "registry", "units_json")
        and not m.name.startswith("_")  # helpers, the C part
    ]
    assert found, "no exchange modules found"
    for name in found:
        module = importlib.import_module(f"feeder.exchanges.{name}")
        descriptor = module.DESCRIPTOR
        assert EXCHANGES.get(descriptor.name) is descriptor, f"{name}: DESCRIPTOR not in the registry"
        assert issubclass(
            ExchangeSettings, module.Settings
        ), f"{name}: Settings not a base of ExchangeSettings"
    assert set(EXCHANGES) == {importlib.import_module(f"feeder.exchanges.{n}").DESCRIPTOR.name for n in found}


def test_md_and_the_simulator_name_every_exchange_the_feeder_speaks() -> None:
    """`md --help` lists the exchange names; the simulator serves each of them (the e2e tests use it)."""
    from exchange_sim import EXCHANGES as SIMULATED
    from md_cli.main import EXCHANGE_NAMES, build_parser

    assert set(EXCHANGE_NAMES) == set(EXCHANGES) == set(SIMULATED)
    help_text = " ".join(build_parser().format_help().split())
    for name in EXCHANGES:
        assert name in help_text


def test_no_any_alias_stands_in_for_a_type() -> None:
    offenders = []
    for rel, tree in modules():
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Name)
                and node.value.id == "Any"
                and all(isinstance(t, ast.Name) for t in node.targets)
            ):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, "module-level aliases of Any: " + ", ".join(offenders)

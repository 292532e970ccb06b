"""Redis topologies on free ports, for the tests and the benchmarks: primary + replica, the same watched by
one Sentinel, and a three-master cluster.

Every class starts its servers with `start()` (or `with ...:`), and `cleanup()` stops each process it started
by its PID (through `LocalRedisServer`) and removes its temporary directories, even when a later start failed
half-way. Nothing here ever talks to a Redis it did not start. Readiness is polled with a deadline, never slept
for.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis

from launch.redis_server import LocalRedisServer, _die_with_parent, free_port

HOST = "127.0.0.1"
POLL_INTERVAL = 0.02


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` until it returns true; connection errors count as "not yet". Raise `TimeoutError`
    naming `what` (and the last error seen) when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            if predicate():
                return
        except (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.ResponseError,
        ) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(POLL_INTERVAL)


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (from `launch.redis_server.free_port`)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def client_for(port: int, **kwargs: Any) -> redis.Redis:
    """A plain client of one of our servers, with short timeouts and no retries."""
    options: dict[str, Any] = {
        "socket_timeout": 2.0,
        "socket_connect_timeout": 2.0,
        "retry_on_error": [],
        "retry": None,
    }
    options.update(kwargs)
    return redis.Redis(host=HOST, port=port, decode_responses=True, **options)


def info_replication(port: int) -> dict[str, Any]:
    with client_for(port) as client:
        info: dict[str, Any] = client.info("replication")
        return info


def log_tail(path: Path, chars: int = 800) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def start_process(
    args: Sequence[str], log: Path, ready: Callable[[], bool], timeout: float, what: str
) -> subprocess.Popen[bytes]:
    """Start a redis-server style process (dies with its parent), poll `ready` until it is true; on failure kill
    it and raise `RuntimeError` with the end of its log."""
    process = subprocess.Popen(
        list(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with {process.returncode}: {log_tail(log)}")
            try:
                if ready():
                    return process
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} was not ready within {timeout}s: {log_tail(log)}")
            time.sleep(POLL_INTERVAL)
    except BaseException:
        if process.poll() is None:
            process.kill()
        process.wait(5)
        raise


class _Topology:
    """Owns the `LocalRedisServer`s it started; `cleanup()` stops and removes all of them."""

    def __init__(self) -> None:
        self._servers: list[LocalRedisServer] = []

    def _new_server(self, extra_args: tuple[str, ...] = (), port: int | None = None) -> LocalRedisServer:
        server = LocalRedisServer(port=port, extra_args=extra_args)
        self._servers.append(server)  # registered before it starts: cleanup() covers a failed start too
        return server

    def start(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Stop every process started (by PID), remove every temporary directory. Safe to call twice."""
        errors: list[BaseException] = []
        for server in reversed(self._servers):
            try:
                server.cleanup()
            except Exception as exc:
                errors.append(exc)
        self._servers.clear()
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


def _replication_is_synced(primary_port: int, replica_port: int, min_offset: int) -> bool:
    replica = info_replication(replica_port)
    if replica.get("role") != "slave" or replica.get("master_link_status") != "up":
        return False
    if int(replica.get("master_port", -1)) != primary_port:
        return False
    if int(replica.get("slave_repl_offset", -1)) < min_offset:
        return False
    primary = info_replication(primary_port)
    for key, value in primary.items():
        if key.startswith("slave") and isinstance(value, dict) and int(value.get("port", -1)) == replica_port:
            return bool(value.get("state") == "online")
    return False


def wait_replica_synced(primary_port: int, replica_port: int, timeout: float = 10.0) -> None:
    """Wait until `replica_port` replicates `primary_port` with the link up, the primary lists it online, and it
    has everything the primary had written when this was called."""
    target = int(info_replication(primary_port).get("master_repl_offset", 0))
    wait_until(
        lambda: _replication_is_synced(primary_port, replica_port, target),
        timeout,
        f"replica :{replica_port} to be in sync with primary :{primary_port}",
    )


class ReplicatedRedis(_Topology):
    """A primary and one replica (``repl-diskless-sync-delay 0`` on both, so the first sync is immediate)."""

    primary: LocalRedisServer
    replica: LocalRedisServer

    def __init__(self, extra_args: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.extra_args = extra_args

    def _start(self) -> None:
        common = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0", *self.extra_args)
        self.primary = self._new_server(common)
        self.primary.start()
        self.replica = self._new_server((*common, "--replicaof", HOST, str(self.primary.port)))
        self.replica.start()
        self.wait_synced()

    def wait_synced(self, timeout: float = 10.0) -> None:
        """Wait until the replica is connected and has all the primary had when this was called."""
        wait_replica_synced(self.primary.port, self.replica.port, timeout)


class SentinelServer(LocalRedisServer):
    """`redis-server <conf> --sentinel` in its own temporary directory (Sentinel rewrites its conf file there)."""

    def __init__(
        self,
        service: str,
        master_port: int,
        *,
        quorum: int = 1,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        parallel_syncs: int = 1,
        port: int | None = None,
    ) -> None:
        super().__init__(port=port)
        self.service = service
        self.conf = self.dir / "sentinel.conf"
        self.log = self.dir / "sentinel.log"
        self.conf.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    f"bind {HOST}",
                    "daemonize no",
                    f'dir "{self.dir}"',
                    f'logfile "{self.log}"',
                    f"sentinel monitor {service} {HOST} {master_port} {quorum}",
                    f"sentinel down-after-milliseconds {service} {down_after_ms}",
                    f"sentinel failover-timeout {service} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {service} {parallel_syncs}",
                    "",
                ]
            )
        )

    def start(self, timeout: float = 10.0) -> None:
        def ready() -> bool:
            with client_for(self.port, socket_timeout=0.5, socket_connect_timeout=0.5) as client:
                return bool(client.ping())

        self.process = start_process(
            [self.binary, str(self.conf), "--sentinel"], self.log, ready, timeout, f"sentinel on :{self.port}"
        )


class SentinelRedis(_Topology):
    """A primary, one replica and ONE Sentinel (quorum 1) watching them as `service`, with short timeouts.

    `primary` and `replica` keep naming the servers that started in those roles; after `failover()` ask
    `master_port()` (Sentinel's answer) or `master()` / `replica_now()` for the current ones."""

    primary: LocalRedisServer
    replica: LocalRedisServer
    sentinel: SentinelServer

    def __init__(self, service: str = "mymaster") -> None:
        super().__init__()
        self.service = service

    @property
    def sentinel_port(self) -> int:
        return self.sentinel.port

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [(HOST, self.sentinel.port)]

    def _start(self) -> None:
        common = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")
        self.primary = self._new_server(common)
        self.primary.start()
        self.replica = self._new_server((*common, "--replicaof", HOST, str(self.primary.port)))
        self.replica.start()
        wait_replica_synced(self.primary.port, self.replica.port)
        self.sentinel = SentinelServer(self.service, self.primary.port)
        self._servers.append(self.sentinel)
        self.sentinel.start()
        wait_until(
            lambda: self.master_port() == self.primary.port, 10.0, f"Sentinel to name :{self.primary.port}"
        )
        self.wait_replica_known(self.replica.port)

    def sentinel_client(self) -> redis.Redis:
        return client_for(self.sentinel.port)

    def master_port(self) -> int | None:
        """The port Sentinel names as master of `service` now."""
        with self.sentinel_client() as client:
            addr = client.sentinel_get_master_addr_by_name(self.service)
        return int(addr[1]) if addr else None

    def server_on(self, port: int) -> LocalRedisServer:
        for server in (self.primary, self.replica):
            if server.port == port:
                return server
        raise KeyError(port)

    def master(self) -> LocalRedisServer:
        port = self.master_port()
        if port is None:
            raise RuntimeError(f"Sentinel names no master for {self.service}")
        return self.server_on(port)

    def replica_now(self) -> LocalRedisServer:
        master = self.master()
        return self.replica if master is self.primary else self.primary

    def _replica_known(self, port: int) -> bool:
        with self.sentinel_client() as client:
            replicas = client.sentinel_slaves(self.service)
        for entry in replicas:
            if int(entry.get("port", -1)) != port:
                continue
            flags = entry.get("flags", "")
            flags = set(flags.split(",")) if isinstance(flags, str) else set(flags)
            return (
                "disconnected" not in flags
                and "s_down" not in flags
                and entry.get("master-link-status") == "ok"
                and int(entry.get("master-port", -1)) == self.master_port()
            )
        return False

    def wait_replica_known(self, port: int, timeout: float = 15.0) -> None:
        """Wait until Sentinel lists `port` as a connected replica whose link to the master is up."""
        wait_until(lambda: self._replica_known(port), timeout, f"Sentinel to know replica :{port}")

    def _failed_over(self, old: int, new: int) -> bool:
        if self.master_port() != new:
            return False
        if info_replication(new).get("role") != "master":
            return False
        demoted = info_replication(old)
        return (
            demoted.get("role") == "slave"
            and int(demoted.get("master_port", -1)) == new
            and demoted.get("master_link_status") == "up"
        )

    def failover(self, timeout: float = 30.0, on_promoted: Callable[[], None] | None = None) -> int:
        """`SENTINEL FAILOVER <service>`, then wait until Sentinel names the other server, that server says
        ``role:master`` and the old master says ``role:slave`` with its link to the new one up. Returns the new
        master's port. `on_promoted` is called as soon as Sentinel names the new master: seconds before the
        old one is demoted (until then it still accepts writes)."""
        deadline = time.monotonic() + timeout
        old = self.master_port()
        if old is None:
            raise RuntimeError(f"Sentinel names no master for {self.service}")
        new = self.replica.port if old == self.primary.port else self.primary.port
        self.wait_replica_known(new, timeout=max(0.1, deadline - time.monotonic()))

        def asked() -> bool:
            with self.sentinel_client() as client:
                try:
                    return bool(client.sentinel_failover(self.service))
                except redis.exceptions.ResponseError as exc:
                    if "NOGOODSLAVE" in str(exc) or "INPROG" in str(exc):
                        return False  # Sentinel has not caught up with the replica yet: ask again
                    raise

        wait_until(asked, max(0.1, deadline - time.monotonic()), "Sentinel to accept SENTINEL FAILOVER")
        if on_promoted is not None:
            wait_until(lambda: self.master_port() == new, max(0.1, deadline - time.monotonic()), "promotion")
            on_promoted()
        wait_until(
            lambda: self._failed_over(old, new),
            max(0.1, deadline - time.monotonic()),
            f"fail-over of {self.service} from :{old} to :{new}",
        )
        return new


class RedisCluster3(_Topology):
    """Three masters, no replicas, slots split by ``redis-cli --cluster create``. Each node has its own directory
    (its ``nodes.conf`` lives there) and an explicit free cluster-bus port."""

    nodes: list[LocalRedisServer]

    def __init__(self, node_timeout_ms: int = 2000) -> None:
        super().__init__()
        self.node_timeout_ms = node_timeout_ms
        self.nodes = []

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(HOST, node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.nodes[0].port}/0"

    def _start(self) -> None:
        redis_cli = shutil.which("redis-cli")
        if redis_cli is None:
            raise RuntimeError(
                "redis-cli is not installed: the cluster fixture needs it to create the cluster"
            )
        ports = free_ports(6)
        for port, bus_port in zip(ports[:3], ports[3:], strict=True):
            node = self._new_server(port=port)
            node.extra_args = (
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node.dir / "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-port", str(bus_port),
            )  # fmt: skip
            self.nodes.append(node)
            node.start()
        create = subprocess.run(
            [
                redis_cli,
                "--cluster",
                "create",
                *(f"{h}:{p}" for h, p in self.startup_nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],  # fmt: skip
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if create.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed ({create.returncode}): {create.stdout[-800:]}{create.stderr[-800:]}"
            )
        self.wait_ok()

    def _state_ok(self) -> bool:
        for node in self.nodes:
            with client_for(node.port) as client:
                info: dict[str, Any] = client.cluster("INFO")  # parsed into {"cluster_state": "ok", ...}
            if info.get("cluster_state") != "ok" or str(info.get("cluster_known_nodes")) != "3":
                return False
        return True

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Wait until every node says ``cluster_state:ok`` and knows all three nodes."""
        wait_until(self._state_ok, timeout, "cluster_state:ok on all three nodes")

    def node_of(self, key: str) -> int:
        """The index in `nodes` of the master that serves `key`'s slot."""
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        with client_for(self.nodes[0].port) as client:
            ranges = client.execute_command("CLUSTER SLOTS")
        entries = (
            [(start, end, entry["primary"][1]) for (start, end), entry in ranges.items()]
            if isinstance(ranges, dict)
            else [(entry[0], entry[1], entry[2][1]) for entry in ranges]
        )
        for start, end, port in entries:
            if int(start) <= slot <= int(end):
                return next(i for i, node in enumerate(self.nodes) if node.port == int(port))
        raise LookupError(f"no master serves slot {slot} ({key})")

    def masters(self) -> list[tuple[str, int]]:
        """(host, port) of every master that serves slots, as ``CLUSTER SLOTS`` on the first node says."""
        with client_for(self.nodes[0].port) as client:
            slots = client.execute_command("CLUSTER SLOTS")
        found: set[tuple[str, int]] = set()
        if isinstance(slots, dict):  # redis-py parses CLUSTER SLOTS into {(start, end): {"primary": ...}}
            for entry in slots.values():
                host, port = entry["primary"][:2]
                found.add((str(host), int(port)))
        else:
            for entry in slots:
                host, port = entry[2][:2]
                found.add((str(host), int(port)))
        return sorted(found, key=lambda hp: hp[1])

    @contextlib.contextmanager
    def paused_node(self, i: int) -> Iterator[None]:
        """Node `i` frozen (SIGSTOP to its PID) inside the block: its connections stay open and say nothing, as
        behind a network partition; resumed (SIGCONT) on leaving. Keep it shorter than the node timeout, or
        the Cluster marks the node failed."""
        process = self.nodes[i].process
        assert process is not None and process.poll() is None, f"node {i} is not running"
        os.kill(process.pid, signal.SIGSTOP)
        try:
            deadline = (
                time.monotonic() + 5.0
            )  # the signal is delivered asynchronously: wait until it took hold
            while process_state(process.pid) != "T":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {i} (pid {process.pid}) did not stop on SIGSTOP")
                time.sleep(0.005)
            yield
        finally:
            os.kill(process.pid, signal.SIGCONT)

    def restart_node(self, i: int, timeout: float = 30.0) -> None:
        """SIGKILL node `i`, start it again on the same port and directory (so it keeps its ``nodes.conf``: same
        id, same slots, data gone), and wait for ``cluster_state:ok`` everywhere."""
        node = self.nodes[i]
        node.kill()
        node.start()
        self.wait_ok(timeout)


def process_state(pid: int) -> str:
    """The state letter of a process in /proc (``T``: stopped by a signal, ``R``/``S``: running)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(") ", 1)[1][0]

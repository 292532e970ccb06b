"""Self-tests of the topology fixtures: each really is what it claims (replication, Sentinel fail-over, a
three-master cluster, TLS with client certificates), and cleans up after itself."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis
import redis.cluster
import redis.sentinel
from support.tls import TlsRedis

from launch.redis_topologies import (
    RedisCluster3,
    ReplicatedRedis,
    SentinelRedis,
    SentinelServer,
    client_for,
    info_replication,
    wait_until,
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- primary + replica ---------------------------------------------------------------------------------------


def test_replica_reads_what_the_primary_wrote_and_refuses_writes(replicated_redis: ReplicatedRedis) -> None:
    primary, replica = replicated_redis.primary, replicated_redis.replica
    assert info_replication(primary.port)["role"] == "master"
    assert info_replication(replica.port)["master_port"] == primary.port
    with client_for(primary.port) as p, client_for(replica.port) as r:
        p.set("book:KRW-BTC", "v1")
        replicated_redis.wait_synced(5.0)
        assert r.get("book:KRW-BTC") == "v1"
        with pytest.raises(redis.exceptions.ReadOnlyError):
            r.set("book:KRW-BTC", "v2")
        assert p.get("book:KRW-BTC") == "v1"


def test_a_topology_that_fails_half_way_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    topology = SentinelRedis()
    seen: list[tuple[int, Path]] = []

    def broken_start(self: SentinelServer, timeout: float = 10.0) -> None:
        for server in (topology.primary, topology.replica):
            assert server.process is not None
            seen.append((server.process.pid, server.dir))
        seen.append((-1, self.dir))
        raise RuntimeError("sentinel refused to start")

    monkeypatch.setattr(SentinelServer, "start", broken_start)
    with pytest.raises(RuntimeError, match="sentinel refused"):
        topology.start()
    assert len(seen) == 3
    for pid, directory in seen:
        assert pid == -1 or not _alive(pid)
        assert not directory.exists()


# --- Sentinel --------------------------------------------------------------------------------------------------


def test_sentinel_fails_over_and_a_sentinel_client_follows(sentinel_redis: SentinelRedis) -> None:
    s = sentinel_redis
    assert s.service == "mymaster"
    assert s.sentinels == [("127.0.0.1", s.sentinel_port)]
    assert s.master_port() == s.primary.port
    sentinel = redis.sentinel.Sentinel(
        s.sentinels, socket_timeout=2.0, sentinel_kwargs={"socket_timeout": 2.0}, decode_responses=True
    )
    assert sentinel.discover_master(s.service) == ("127.0.0.1", s.primary.port)
    master = sentinel.master_for(s.service, socket_timeout=2.0, decode_responses=True)
    try:
        master.set("before", "1")
        # replication is asynchronous: a fail-over right after the write could lose it (that is no test here)
        assert master.execute_command("WAIT", 1, 5000) == 1

        started = time.monotonic()
        new_port = s.failover(timeout=30.0)
        took = time.monotonic() - started

        assert new_port == s.replica.port, f"failover took {took:.1f}s"
        assert s.master_port() == s.replica.port
        assert s.master() is s.replica
        assert s.replica_now() is s.primary
        assert info_replication(s.replica.port)["role"] == "master"
        demoted = info_replication(s.primary.port)
        assert demoted["role"] == "slave"
        assert demoted["master_port"] == s.replica.port
        assert demoted["master_link_status"] == "up"
        assert sentinel.discover_master(s.service) == ("127.0.0.1", s.replica.port)

        # The pooled connection still points at the demoted server: redis-py drops it on READONLY and its retry
        # reconnects to the master Sentinel names now.
        master.set("after", "2")
        with client_for(s.replica.port) as new_master:
            assert new_master.get("before") == "1"
            assert new_master.get("after") == "2"
        with client_for(s.primary.port) as old_primary, pytest.raises(redis.exceptions.ReadOnlyError):
            old_primary.set("x", "y")
    finally:
        master.close()
        for sentinel_client in sentinel.sentinels:
            sentinel_client.close()


# --- Redis Cluster ---------------------------------------------------------------------------------------------


def _cluster_client(cluster: RedisCluster3) -> redis.cluster.RedisCluster:
    return redis.cluster.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(host, port) for host, port in cluster.startup_nodes],
        decode_responses=True,
        socket_timeout=2.0,
    )


def _keys_on_every_node(rc: redis.cluster.RedisCluster) -> dict[int, str]:
    """One key per node port."""
    keys: dict[int, str] = {}
    for i in range(1000):
        key = f"book:SYM{i}"
        keys.setdefault(rc.get_node_from_key(key).port, key)
        if len(keys) == 3:
            break
    return keys


def test_cluster_has_three_masters_and_routes_keys(redis_cluster: RedisCluster3) -> None:
    ports = sorted(node.port for node in redis_cluster.nodes)
    assert [port for _, port in redis_cluster.masters()] == ports
    assert redis_cluster.url == f"redis://127.0.0.1:{redis_cluster.nodes[0].port}/0"
    with client_for(ports[0]) as c:
        nodes = c.cluster("NODES")
    assert (
        sorted(int(addr.split(":")[1].split("@")[0]) for addr, n in nodes.items() if "master" in n["flags"])
        == ports
    )

    rc = _cluster_client(redis_cluster)
    try:
        keys = _keys_on_every_node(rc)
        assert sorted(keys) == ports
        assert len({rc.keyslot(k) for k in keys.values()}) == 3
        for port, key in keys.items():
            rc.set(key, f"on-{port}")
        for port, key in keys.items():
            assert rc.get(key) == f"on-{port}"
            with client_for(port) as owner:  # the key really lives on the node the slot map names
                assert owner.get(key) == f"on-{port}"
    finally:
        rc.close()


def test_cluster_sharded_pubsub(redis_cluster: RedisCluster3) -> None:
    rc = _cluster_client(redis_cluster)
    pubsub = rc.pubsub()
    try:
        channels = list(_keys_on_every_node(rc).values())
        for channel in channels:
            pubsub.ssubscribe(channel)
        confirmed: set[str] = set()

        def all_confirmed() -> bool:
            message = pubsub.get_sharded_message(timeout=0.1)
            if message is not None and message["type"] == "ssubscribe":
                confirmed.add(message["channel"])
            return len(confirmed) == 3

        wait_until(all_confirmed, 5.0, "the three ssubscribe confirmations")
        assert confirmed == set(channels)
        for channel in channels:
            assert rc.spublish(channel, f"hello {channel}") == 1
        received: dict[str, str] = {}

        def got_all() -> bool:
            message = pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None and message["type"] == "smessage":
                received[message["channel"]] = message["data"]
            return len(received) == 3

        wait_until(got_all, 5.0, "the three sharded messages")
        assert received == {channel: f"hello {channel}" for channel in channels}
    finally:
        pubsub.close()
        rc.close()


def test_cluster_node_restart_comes_back(redis_cluster: RedisCluster3) -> None:
    node = redis_cluster.nodes[1]
    with client_for(node.port) as c:
        node_id = c.execute_command("CLUSTER MYID")
    rc = _cluster_client(redis_cluster)
    try:
        key = _keys_on_every_node(rc)[node.port]
        rc.set(key, "before")
    finally:
        rc.close()

    redis_cluster.restart_node(1)

    with client_for(node.port) as c:
        assert c.execute_command("CLUSTER MYID") == node_id  # same nodes.conf, same identity and slots
        assert c.cluster("INFO")["cluster_state"] == "ok"
    assert [port for _, port in redis_cluster.masters()] == sorted(n.port for n in redis_cluster.nodes)
    rc = _cluster_client(redis_cluster)
    try:
        assert rc.get(key) is None  # no persistence: the data is gone, the slots are not
        rc.set(key, "after")
        assert rc.get(key) == "after"
    finally:
        rc.close()


# --- TLS -------------------------------------------------------------------------------------------------------


def test_tls_only_with_a_client_certificate(tls_redis: TlsRedis) -> None:
    assert tls_redis.url == f"rediss://127.0.0.1:{tls_redis.port}/0"
    m = tls_redis.material
    for path in (m.ca_cert, m.server_cert, m.server_key, m.client_cert, m.client_key):
        assert path.is_file()

    with redis.Redis.from_url(tls_redis.url, **tls_redis.client_kwargs(), decode_responses=True) as good:
        assert good.set("k", "v")
        assert good.get("k") == "v"
        assert good.config_get("port") == {"port": "0"}  # no plain TCP listener at all

    with tls_redis.client(with_client_cert=False) as no_cert, pytest.raises(redis.exceptions.ConnectionError):
        no_cert.ping()
    wait_until(
        lambda: "peer did not return a certificate" in tls_redis.log.read_text(errors="replace"),
        5.0,
        "the server to log the refused client",
    )

    with client_for(tls_redis.port) as plain, pytest.raises(redis.exceptions.ConnectionError):
        plain.ping()

"""The least-privilege ACL users of docs/operations.md, as the tests create them (keep the two in step)."""

from __future__ import annotations

# The lines of docs/operations.md ("Least-privilege ACL users"), with a password added. Keep them in step.
FEEDER_ACL = (
    "resetkeys ~md:* resetchannels &md:* -@all "
    "+evalsha +eval +hgetall +sadd +smembers +set +info "  # what the feeder sends (EVAL after NOSCRIPT)
    # what its scripts run (Redis checks them too)
    "+hmget +hget +hset +time +publish +spublish +pexpire +zadd +zcard +zrange +zremrangebyscore +xadd"
)
# A PSUBSCRIBE pattern must equal one of the user's channel patterns: the mirror's is md:*:* (md:<exchange>:*
# for MD_MIRROR_EXCHANGES, which then needs &md:<exchange>:* as well); md:*:* also admits SUBSCRIBE md:upbit:X.
ENGINE_ACL = (
    "resetkeys %R~md:* resetchannels &md:*:* -@all "
    "+hmget +hget +time +smembers +sismember +get +ping +xrevrange "
    "+subscribe +psubscribe +unsubscribe +punsubscribe +ssubscribe +sunsubscribe"  # s*: Cluster mirrors
)
OPERATOR_ACL = ENGINE_ACL + " +scan +hgetall +pttl"
# On a Cluster every user also needs what redis-py's cluster client sends to learn the slots and the commands'
# keys (tests/integration/test_topology_clients.py runs the feeder, both modes and md with these).
CLUSTER_ACL = "+cluster|slots +command"
USERS = {"md-feeder": FEEDER_ACL, "md-engine": ENGINE_ACL, "md-operator": OPERATOR_ACL}

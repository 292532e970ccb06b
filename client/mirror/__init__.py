"""Live mirror: a local copy of books kept current by pub/sub, and the update streams built on it.

- `cache`: the mirrored books and feeder states (pure code), and the plan of what to mirror;
- `subscriber`: the subscriber core and its two drivers (a thread for sync providers, a task for asyncio);
- `updates`: the consumers of updates (latest-wins buffers, callbacks).
"""

from client.mirror.cache import BookCache, MirrorPlan, PendingBook
from client.mirror.subscriber import SubscriberCore, TaskSubscriber, ThreadSubscriber
from client.mirror.updates import CallbackConsumer, Consumer, UpdateCallback, UpdateQueue

__all__ = [
    "BookCache",
    "CallbackConsumer",
    "Consumer",
    "MirrorPlan",
    "PendingBook",
    "SubscriberCore",
    "TaskSubscriber",
    "ThreadSubscriber",
    "UpdateCallback",
    "UpdateQueue",
]

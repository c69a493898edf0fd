"""Who may work a store's shards: the start check of a runtime, and taking over a dead holder.

The store's leases are the truth (:class:`~understudy.persistence.base.Lease`): a shard belongs
to the holder whose epoch is current, and every write is fenced by it. This module adds what a
lease cannot know, from the machine a runtime starts on:

- a starting runtime takes every shard's lease before any actor starts, and is refused at once
  when another live runtime holds one (:class:`~understudy.errors.StoreInUse`), instead of
  waiting on it;
- a lease whose holder process is known to have exited (same machine, pid and start time gone)
  is expired at once, so a restart after a crash does not wait out the lease;
- a lease whose holder still runs but whose application process has exited (an orphaned saga
  host that has not yet noticed its owner is gone) is waited for: it releases its shard within
  its watch interval, or its lease expires.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from understudy.actors.watch import ProcessIdentity, is_running, process_identity
from understudy.errors import StoreInUse
from understudy.persistence import redact
from understudy.persistence.base import Lease, SagaStore

#: Seconds a shard lease lasts unless renewed; hosts renew every third of it.
DEFAULT_TTL = 10.0

#: How an operator applying a verb itself names itself as a shard's holder (for a moment).
OPERATOR_HOLDER = "operator:"

#: The ids of the runtimes running in this process. A lease that names this very process as its
#: holder for a runtime not among them is left over from one that stopped or failed here (its
#: shutdown hung, or its failed start could not give its leases back): it is as good as dead.
RUNNING_HERE: set[str] = set()


def about_me(
    app: ProcessIdentity | None, supervisor: ProcessIdentity | None = None
) -> dict[str, Any]:
    """What a lease says about its holder: machine, process, the application behind it, and the
    process supervising it (a saga host's coordinator, on multi-process bases)."""
    pid, started = process_identity(os.getpid())
    about: dict[str, Any] = {"node": socket.gethostname(), "pid": pid, "started": started}
    if app is not None:
        about["app_pid"], about["app_started"] = app
    if supervisor is not None:
        about["supervisor_pid"], about["supervisor_started"] = supervisor
    return about


def _process(about: dict[str, Any], pid: str, started: str) -> ProcessIdentity | None:
    value = about.get(pid)
    if not isinstance(value, int):
        return None
    start = about.get(started)
    return value, start if isinstance(start, str) else None


def holder_state(lease: Lease) -> str:
    """``"free"`` (nobody, or expired), ``"dead"`` (its process on this machine has exited),
    ``"orphan"`` (it runs, its application or its coordinator does not), ``"live"``, or
    ``"remote"`` (another machine: only the lease can tell)."""
    if not lease.holder:
        return "free"
    if lease.about.get("node") != socket.gethostname():
        return "remote"
    holder = _process(lease.about, "pid", "started")
    if holder is None or not is_running(holder):
        return "dead"
    if holder[0] == os.getpid() and lease.holder not in RUNNING_HERE:
        return "dead"
    app = _process(lease.about, "app_pid", "app_started")
    if app is not None and not is_running(app):
        return "orphan"
    supervisor = _process(lease.about, "supervisor_pid", "supervisor_started")
    if supervisor is not None and not is_running(supervisor):
        return "orphan"  # its coordinator died: it stops on its own within its watch
    return "live"


def take_over_dead(store: SagaStore, lease: Lease) -> bool:
    """Expire ``lease`` when its holder process is known to have exited; True if it did."""
    if holder_state(lease) == "dead":
        store.expire(lease.shard, lease.epoch)
        return True
    return False


def claim_shards(
    store: SagaStore,
    location: str,
    runtime: str,
    ttl: float,
    about: dict[str, Any],
) -> dict[int, Lease]:
    """Take every shard of the store for a starting runtime, in shard order, or refuse.

    Shards are taken in order, so of two runtimes starting at once the one that takes shard 0
    takes them all and the other is refused at shard 0, before it holds anything: never both
    waiting on each other. A shard whose holder died is taken at once; one held by an orphaned
    host (its application exited) is left for the runtime's host to take when the orphan lets
    go. A shard held by a live runtime refuses the start with :class:`StoreInUse`, and gives back
    what this start took (keeping each shard's blame)."""
    taken: dict[int, Lease] = {}
    for current in store.leases():
        lease = store.acquire(current.shard, runtime, ttl, about)
        if lease is None and take_over_dead(store, current):
            lease = store.acquire(current.shard, runtime, ttl, about)
        if lease is not None:
            taken[lease.shard] = lease
            continue
        holder = store.leases()[current.shard]
        if holder_state(holder) == "orphan" or holder.holder.startswith(OPERATOR_HOLDER):
            # Let go of soon: an orphaned host winding down, or an operator applying a verb
            # (for a moment). The shard's host takes it once it is free.
            continue
        for mine in taken.values():
            store.blame(mine, mine.blamed)  # what the previous holder left stays for the next
            store.expire(mine.shard, mine.epoch)
        who = f"pid {holder.about.get('pid')} on {holder.about.get('node')}"
        raise StoreInUse(
            f"saga store {redact(location)!r} is in use by another understudy runtime: shard "
            f"{holder.shard} is held by {who} (lease valid for another "
            f"{max(0.0, holder.expires_at - store.now()):.1f} s); stop that runtime first (two "
            "runtimes never work one store's shards at once), or if it was killed on another "
            "machine, start again once its lease has expired"
        )
    return taken


def give_back(store: SagaStore, taken: dict[int, Lease]) -> None:
    """After a failed start: free the shards it took that no saga host took over (the lease
    still names this process), keeping each shard's blame for the next holder."""
    me = os.getpid()
    current = {lease.shard: lease for lease in store.leases()}
    for lease in taken.values():
        now = current.get(lease.shard)
        if now is not None and now.epoch == lease.epoch and now.about.get("pid") == me:
            store.blame(lease, lease.blamed)
            store.expire(lease.shard, lease.epoch)


def renew_every(ttl: float) -> float:
    """Seconds between a holder's renewals: three chances before the lease runs out."""
    return ttl / 3

"""Killing saga host processes on purpose, and watching the supervisor replace them.

A SIGKILL is the crash nothing can clean up after: no exception handler, no ``finally``, no
flush. The host's sagas are mid-step, some requests are on the wire and some replies will
arrive at a dead address. The coordinator notices the exit, starts a new host for the shard,
and the new host resumes every unfinished saga of the shard from the store. Before the next kill
the demo waits until the coordinator reports the new host's pid, so every kill hits a host that
has recovered and is running sagas again.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable

from understudy import Understudy


class HostKiller:
    """Kills saga hosts at planned points of the run and counts the restarts it observes."""

    def __init__(
        self,
        runtime: Understudy,
        kills: int,
        total: int,
        seed: int,
        say: Callable[[str], None],
    ) -> None:
        self.runtime = runtime
        self.say = say
        self.rng = random.Random(seed)
        # Spread the kills evenly over the submissions, never at the very start or end.
        self.points = [(k + 1) * total // (kills + 1) for k in range(kills)]
        self.kills = 0
        self.restarts_observed = 0
        self.awaiting: tuple[int, int, float] | None = None  # shard, old pid, killed at
        self.pids: dict[int, int] = {
            shard: pid for shard, pid in runtime.hosts().host_pids.items() if pid
        }

    @property
    def planned(self) -> int:
        return len(self.points)

    def due(self, submitted: int) -> bool:
        """Whether the next kill is due now that ``submitted`` orders have been sent."""
        return (
            self.awaiting is None
            and self.kills < len(self.points)
            and submitted >= self.points[self.kills]
        )

    def kill(self, in_flight: int) -> None:
        """SIGKILL one saga host, chosen by the seed among those currently running."""
        pids = {shard: pid for shard, pid in self.runtime.hosts().host_pids.items() if pid}
        if not pids:
            return  # every host is starting; try again on the next turn
        shard = self.rng.choice(sorted(pids))
        pid = pids[shard]
        os.kill(pid, signal.SIGKILL)
        self.kills += 1
        self.awaiting = (shard, pid, time.monotonic())
        self.say(
            f"kill {self.kills}/{len(self.points)}: SIGKILL saga host {shard} (pid {pid}) "
            f"with {in_flight} saga(s) in flight"
        )

    def poll(self) -> None:
        """Ask the coordinator for host pids; count each shard whose pid changed as a restart."""
        info = self.runtime.hosts()
        for shard, pid in info.host_pids.items():
            if not pid:
                continue  # a new host that has not finished recovering yet
            before = self.pids.get(shard)
            if before is not None and before != pid:
                self.restarts_observed += 1
            self.pids[shard] = pid
        if self.awaiting is not None:
            shard, old, killed_at = self.awaiting
            new = info.host_pids.get(shard, 0)
            if new and new != old:
                self.awaiting = None
                self.say(
                    f"saga host {shard} is back as pid {new} "
                    f"({time.monotonic() - killed_at:.2f} s after the kill)"
                )

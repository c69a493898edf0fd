"""Restart policy: how often a crashed saga (or saga host) may be restarted.

Erlang-style intensity: at most ``max_restarts`` restarts within ``within`` seconds, counted in
memory by whoever restarts; past it the saga parks as failed-needs-attention instead of looping.
``max_recovery_attempts`` is the persisted cap: every time a saga is loaded after a crash its
stored recovery count grows, and any progress (an accepted reply) resets it. A saga that crashes
its host process over and over without progress therefore parks even though no in-memory
counter survives those crashes.
"""

from __future__ import annotations

from collections import deque

import attrs


@attrs.frozen
class RestartPolicy:
    max_restarts: int = 3
    within: float = 10.0
    max_recovery_attempts: int = 10
    host_restart_delay: float = 0.05
    #: A participant that exits more than ``max_restarts`` times within ``within`` seconds is
    #: restarted after this delay instead of at once: a participant that dies on every request
    #: would otherwise be restarted, re-sent its request and killed again in a tight loop.
    participant_restart_delay: float = 0.5


class RestartWindow:
    """Counts restarts in a sliding window of ``policy.within`` seconds."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Record a restart at ``now``; False when it exceeds the policy's intensity."""
        while self._times and now - self._times[0] > self.policy.within:
            self._times.popleft()
        self._times.append(now)
        return len(self._times) <= self.policy.max_restarts

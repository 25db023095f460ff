"""GIL pacing: the writer's threads work in short slices and give the GIL back in between.

Why: the writer's CPU work (minimising, Arrow conversion) is Python code holding the GIL.
CPython hands the GIL to a waiting thread only every `sys.getswitchinterval()` (5 ms), and
uvloop takes the GIL anew for each I/O callback, so while a background thread computes, the
event loop gets about one callback per switch interval: a 50 ms flush becomes a 50 ms stall
for every request in flight. A paced thread calls `pace()` between steps of its work; once
it has used a slice of CPU time (0.5 ms) while the application is busy, it sleeps three
times as long, so the loop runs freely most of the time and the writer's work is spread
thinly over the flush interval instead of arriving in bursts. (CPU time, not wall time: on
a machine shared with other processes the writer must not pause more because it waited.)

The application counts as busy when new items arrived in the writer's queue since the
last slice. With no arrivals (a drain at shutdown, the CLI, a benchmark of the writer
alone) nothing waits for the GIL and the writer never pauses. A growing backlog shortens
the pauses, down to none, so pacing cannot turn into spilling or dropping.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class Pacer:
    """Call `pace()` often from a background thread; call `enter()` first in that thread."""

    def __init__(self, arrivals: Callable[[], int], backlog: Callable[[], float], *,
                 slice_s: float = 0.0005, ratio: float = 3.0) -> None:
        #: a counter that grows when the application hands the writer new items
        self.arrivals = arrivals
        #: how full the writer's queue is, 0..1 (pauses shrink as it fills)
        self.backlog = backlog
        self.slice = slice_s
        self.ratio = ratio
        self.paused = 0.0  # seconds slept in total (observability and tests)
        self._local = threading.local()

    def enter(self) -> None:
        """Pace the calling thread from now on (threads that never enter are never paused)."""
        local = self._local
        local.active = True
        local.since = time.thread_time()
        local.seen = self.arrivals()

    def leave(self) -> None:
        """Stop pacing the calling thread (a drain at shutdown runs at full speed)."""
        self._local.active = False

    def pace(self) -> None:
        local = self._local
        if not getattr(local, "active", False):
            return
        ran = time.thread_time() - local.since  # CPU time: a busy machine does not make it pause more
        if ran < self.slice:
            return
        seen = self.arrivals()
        if seen != local.seen:  # the application is serving: give it the GIL for a while
            fill = self.backlog()
            pause = min(ran, 4 * self.slice) * self.ratio * max(0.0, 1.0 - 2.0 * fill)  # none once half full
            if pause > 0:
                time.sleep(pause)
                self.paused += pause
            local.seen = self.arrivals()
        local.since = time.thread_time()

    __call__ = pace


def no_pace() -> None:
    """The pacer of work that runs where nobody waits for the GIL (tests, the CLI)."""

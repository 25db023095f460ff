"""The writer's GIL pacer pauses a background thread only while the application is serving,
only in threads that asked for it, and never once the queue fills up; and a paced
collector still stores everything."""

from __future__ import annotations

import threading
import time
from typing import Any

from consentmw.store.pacing import Pacer


def burn(seconds: float) -> None:
    """Use CPU time (the pacer counts CPU time, not wall time)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class App:
    """Stands in for the event loop: a counter of arrivals and a queue fill level."""

    def __init__(self) -> None:
        self.arrived = 0
        self.fill = 0.0


def in_thread(fn: Any) -> None:
    t = threading.Thread(target=fn)
    t.start()
    t.join(30)


def make(app: App) -> Pacer:
    return Pacer(lambda: app.arrived, lambda: app.fill, slice_s=0.001, ratio=2.0)


def test_pauses_while_items_arrive() -> None:
    app = App()
    pacer = make(app)

    def work() -> None:
        pacer.enter()
        for _ in range(20):
            burn(0.0012)
            app.arrived += 1
            pacer.pace()

    in_thread(work)
    assert pacer.paused > 20 * 0.001 * 2.0 * 0.9


def test_no_pause_when_nothing_arrives_or_the_queue_is_half_full() -> None:
    app = App()
    pacer = make(app)

    def idle_app() -> None:
        pacer.enter()
        for _ in range(10):
            burn(0.0012)
            pacer.pace()

    in_thread(idle_app)
    assert pacer.paused == 0

    app.fill = 0.5

    def backlog() -> None:
        pacer.enter()
        for _ in range(10):
            burn(0.0012)
            app.arrived += 1
            pacer.pace()

    in_thread(backlog)
    assert pacer.paused == 0


def test_threads_that_did_not_enter_or_left_are_never_paused() -> None:
    app = App()
    pacer = make(app)
    for _ in range(10):  # this thread never entered
        burn(0.0012)
        app.arrived += 1
        pacer.pace()
    assert pacer.paused == 0

    def left() -> None:
        pacer.enter()
        pacer.leave()
        for _ in range(10):
            burn(0.0012)
            app.arrived += 1
            pacer.pace()

    in_thread(left)
    assert pacer.paused == 0

"""Short full garbage collections in a long-running server: freeze the start-up heap.

CPython's full (generation 2) collection walks every tracked object in the process. A
server that has imported chDB, pyarrow and clickhouse-connect holds a few hundred thousand
of them, and the page hits waiting in the collector's queue are what keeps triggering such
collections: on the benchmark machine one took about 80 ms, on the event loop, in the middle
of serving (`benchmarks/bench_http.py`; 14 ms once frozen). What exists once the app has
started (modules, classes, the policy, the store client) lives as long as the process, so
`gc.freeze()` moves it to the permanent generation that collections skip. Everything
allocated later is collected exactly as before; only reference cycles among the frozen
start-up objects would stay, which is why garbage is collected first.

Once per process, whichever middleware starts first; `freeze_gc=False`
(`CONSENTMW_FREEZE_GC=0`) leaves the collector alone for apps that manage it themselves.
"""

from __future__ import annotations

import atexit
import gc
import threading

_lock = threading.Lock()
_frozen = False


def freeze_startup_heap() -> bool:
    """Collect start-up garbage, then freeze what is left; False if this process already did."""
    global _frozen
    with _lock:
        if _frozen:
            return False
        _frozen = True
    gc.collect()
    gc.freeze()
    # Thaw at exit: interpreter shutdown then collects and finalizes these objects in the
    # order it would without the freeze. Left frozen, chDB's objects outlived its engine
    # and the process crashed on the way out (SIGSEGV, ~1 exit in 3).
    atexit.register(gc.unfreeze)
    return True

"""The server process around us: how many worker processes it was told to run.

The embedded chDB store belongs to one process, so a server told to run several workers
on it must not start: each worker would fight for the directory and all but one would
spool forever. Which server runs us, and with how many workers, is read from the server's
own configuration object in this worker process:

* gunicorn (any worker class, e.g. `uvicorn_worker.UvicornWorker`): its `Worker` object;
* `uvicorn --workers N`: the config uvicorn spawned this worker with (multiprocessing);
* `hypercorn -w N`: the multiprocessing keyword arguments of this worker.

gunicorn stops with a non-zero status when a worker fails its start-up. uvicorn's
supervisor (workers > 1) and hypercorn's stop too but exit 0, so a worker that refuses to
start also ends its supervisor, by SIGKILL (every other signal is turned into a graceful,
successful exit), so that process managers and deploy scripts see the failure.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Server:
    name: str       # gunicorn, uvicorn, hypercorn
    workers: int    # worker processes it was told to run
    flag: str       # how its users set that number
    master: int | None = None  # the supervisor's pid, when it must be told to stop


def current_server() -> Server | None:
    """The multi-process server this worker belongs to, if it can be told."""
    base = sys.modules.get("gunicorn.workers.base")
    if base is not None:
        for obj in gc.get_objects():
            if isinstance(obj, base.Worker):
                return Server("gunicorn", int(obj.cfg.workers), "-w/--workers")
    # uvicorn and hypercorn spawn their workers with multiprocessing, passing their config
    process = multiprocessing.current_process()
    parent = multiprocessing.parent_process()
    config = (getattr(process, "_kwargs", None) or {}).get("config")
    module = type(config).__module__ if config is not None else ""
    master = parent.pid if parent is not None else None
    if module.startswith("uvicorn."):
        # Only uvicorn's multiprocess supervisor needs ending; its --reload watcher keeps
        # waiting for a fixed file, as it should during development.
        supervisor = master if not getattr(config, "reload", False) else None
        return Server("uvicorn", int(getattr(config, "workers", 1) or 1), "--workers", supervisor)
    if module.startswith("hypercorn."):
        return Server("hypercorn", int(getattr(config, "workers", 1) or 1), "-w/--workers", master)
    return None


def several_workers_problem(data_dir: str) -> str | None:
    """The one-line reason this worker must not start on an embedded store, or None."""
    server = current_server()
    if server is None or server.workers <= 1:
        return None
    return (f"consentmw: {server.name} runs {server.workers} worker processes, but the embedded chDB store "
            f"({data_dir}) belongs to one process: run one worker ({server.flag} 1), or set "
            f"CONSENTMW_CLICKHOUSE_DSN to a ClickHouse server (http(s)://user:password@host:8443/) for several")


def stop_supervisor(reason: str) -> None:
    """After this worker refused to start (and the server logged `reason`): make sure the
    whole server stops with a non-zero status.

    gunicorn does that itself. uvicorn's supervisor (--workers N) and hypercorn's (any -w)
    stop their other workers but exit 0, so they are ended by SIGKILL; hypercorn would also
    print a traceback of the refusal from the worker, so its worker writes the one line
    and exits at once. Only our own, still living parent is signalled (an orphaned
    worker's parent is init or a subreaper, never signalled)."""
    server = current_server()
    if server is None or server.name not in ("uvicorn", "hypercorn") or server.master is None:
        return
    if server.name == "hypercorn":
        sys.stderr.write(reason + "\n")
        sys.stderr.flush()
    if os.getppid() == server.master:
        try:
            os.kill(server.master, signal.SIGKILL)
        except OSError:
            pass
    if server.name == "hypercorn":
        os._exit(3)


def gunicorn_child_exit(server: object, worker: object) -> None:
    """gunicorn `child_exit` hook: forget an exited worker's live gauges in /metrics
    (prometheus-client multiprocess mode). In gunicorn.conf.py:
    `from consentmw.serving import gunicorn_child_exit as child_exit`."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(getattr(worker, "pid"))

"""Who holds a chDB data directory: ClickHouse's status-file lock, read from the outside.

chDB allows one process per directory. At start-up a process must tell apart a worker
being replaced (a graceful reload: the old worker, a child of the same server master,
still finishes its requests) from a real second owner (a misconfiguration).
"""

from __future__ import annotations

import os


def locked_elsewhere(path: str) -> bool:
    """True when another process holds the ClickHouse status-file lock of a chDB directory.

    chDB reports this case in more than one way (a lock error, or a bare initialisation
    error), so the lock itself is asked.
    """
    import fcntl

    status = os.path.join(path, "status")
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what ClickHouse's status file holds
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def lock_holder(path: str) -> int | None:
    """The pid holding the directory's status-file lock (Linux /proc/locks), if known."""
    try:
        st = os.stat(os.path.join(path, "status"))
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2291468 0 EOF" (a "->" marks a waiter)
        if len(fields) < 6 or "->" in fields:
            continue
        try:
            inode = int(fields[5].rsplit(":", 1)[1])
            pid = int(fields[4])
        except (ValueError, IndexError):
            continue
        if inode == st.st_ino and pid != os.getpid():
            return pid
    return None


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int | str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return None


def held_by_a_sibling(path: str) -> int | None:
    """The pid of the lock holder if it is another worker of our server master (a child of
    our parent running the same command line: the worker a graceful reload replaces), else
    None. Two unrelated services under one process manager are not siblings in this sense."""
    holder = lock_holder(path)
    ppid = os.getppid()
    if holder is None or ppid <= 1 or parent_of(holder) != ppid:
        return None
    mine = _cmdline("self")
    return holder if mine is not None and _cmdline(holder) == mine else None

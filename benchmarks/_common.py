"""Shared helpers for the benchmark scripts: tables, medians, ports, subprocess servers.

Every script prints one or more tables. With `--markdown` the same tables are printed as
Markdown (run_all.py --markdown collects them into BENCHMARKS.md). A table is a title,
column names, rows, and notes (the verdict against the goal, and what the numbers mean).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECRET = "benchmark-secret-key-0123456789abcdef"
BROWSER_UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
              "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36")
#: Marks the start of every table in text output (the smoke test looks for it).
TABLE_MARK = "=== "


@dataclass
class Table:
    title: str
    columns: Sequence[str]
    rows: list[Sequence[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *row: Any) -> None:
        self.rows.append(row)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def text(self) -> str:
        cells = [[str(c) for c in self.columns]] + [[fmt(v) for v in row] for row in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        lines = [TABLE_MARK + self.title]

        def line(r: list[str]) -> str:
            return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()

        lines.append(line(cells[0]))
        lines.append("  ".join("-" * w for w in widths))
        lines.extend(line(r) for r in cells[1:])
        lines.extend("  * " + n for n in self.notes)
        return "\n".join(lines)

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
               "|" + "|".join("---" if i == 0 else "--:" for i in range(len(self.columns))) + "|"]
        out.extend("| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |" for row in self.rows)
        if self.notes:
            out.append("")
            out.extend("- " + n for n in self.notes)
        return "\n".join(out)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a fast smoke run (tiny sizes, one repeat)")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    p.add_argument("--repeats", type=int, default=None, help="repeats per measurement (median reported)")
    return p


def emit(tables: Sequence[Table], markdown: bool) -> None:
    text = "\n\n".join(t.markdown() if markdown else t.text() for t in tables)
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start within {timeout} s")


def stop_server(proc: subprocess.Popen[Any], timeout: float = 60.0) -> int:
    """SIGTERM (graceful: lifespan shutdown drains the collector), then wait; SIGKILL only on timeout."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def consent_cookie(granted: Iterable[str] | None = None) -> str:
    """A valid signed consent cookie value (all optional purposes unless told otherwise)."""
    from consentmw.core.consent import ConsentCodec, new_id
    from consentmw.core.policy import Policy

    policy = Policy.default()
    codec = ConsentCodec(SECRET, policy)
    ids = list(granted) if granted is not None else sorted(policy.optional_ids)
    value, _ = codec.issue(ids, visitor_id=new_id() if codec.needs_visitor_id(ids) else None)
    return value


def count_rows(data_dir: str, database: str, tables: Sequence[str]) -> dict[str, int]:
    """Row counts from a chDB directory, in a fresh subprocess (one chDB directory per process)."""
    code = (
        "import json, sys, clickhouse_connect\n"
        "c = clickhouse_connect.get_client(dsn='chdb://' + sys.argv[1])\n"
        "out = {}\n"
        "for t in sys.argv[3:]:\n"
        "    out[t] = int(c.command(f'SELECT count() FROM {sys.argv[2]}.{t}'))\n"
        "print(json.dumps(out))\n")
    res = subprocess.run([sys.executable, "-c", code, data_dir, database, *tables],
                         capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError("counting rows failed: " + res.stderr[-2000:])
    import json
    return json.loads(res.stdout.strip().splitlines()[-1])


def machine() -> str:
    """One line about the machine: cores, memory, CPU model, Python."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
                break
    except OSError:
        pass
    load = ""
    try:
        load = "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return ", ".join(x for x in (f"{cores} cores", mem, cpu, f"Python {sys.version.split()[0]}", load) if x)


def rss_kib(pid: int | None = None) -> int:
    """Resident set size of a process in KiB (Linux /proc)."""
    path = f"/proc/{pid or 'self'}/status"
    for line in Path(path).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def which(cmd: str) -> str | None:
    return shutil.which(cmd)

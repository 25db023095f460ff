"""Run every benchmark (benchmarks/bench_*.py) and print their tables.

    python benchmarks/run_all.py              # all benchmarks, full size (what `make bench` runs)
    python benchmarks/run_all.py --quick      # a fast smoke run
    python benchmarks/run_all.py --markdown   # also rewrite the results section of BENCHMARKS.md
    python benchmarks/run_all.py --only writer,http

Each script runs in its own process (chDB allows one data directory per process). With
--markdown the tables are collected into BENCHMARKS.md between the `results:start` and
`results:end` markers; the hand-written discussion outside the markers is kept.
"""

from __future__ import annotations

import argparse
import re
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import BENCH_DIR, ROOT, machine  # noqa: E402

ORDER = ["middleware", "http", "beacon", "writer", "store", "banner_size", "overload", "memory"]
#: a note line of a benchmark that states a goal and its verdict
GOAL_LINE = re.compile(r"^\s*(?:[-*]\s+)?(goal\b.*\b(?:met|MISSED)\b.*)$", re.IGNORECASE)


def server_stack() -> str:
    """Which uvicorn stack the HTTP benchmarks get: the production one needs uvloop + httptools."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("uvicorn", "uvloop", "httptools"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = ""
    if found["uvloop"] and found["httptools"]:
        return (f"HTTP stack: uvicorn {found['uvicorn']} with uvloop {found['uvloop']} + httptools "
                f"{found['httptools']} (uvicorn[standard]); asyncio + h11 measured as a second row")
    return f"HTTP stack: uvicorn {found['uvicorn'] or '?'} with asyncio + h11 only (install uvicorn[standard])"


def goals(outputs: list[tuple[str, str]]) -> list[str]:
    """Every goal verdict the scripts printed, prefixed by the script's name."""
    found = []
    for name, out in outputs:
        for line in out.splitlines():
            m = GOAL_LINE.match(line)
            if m:
                found.append(f"{name}: {m.group(1).strip()}")
    return found
START, END = "<!-- results:start -->", "<!-- results:end -->"


def scripts(only: list[str] | None) -> list[Path]:
    found = {p.stem[len("bench_"):]: p for p in BENCH_DIR.glob("bench_*.py")}
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    if only:
        names = [n for n in names if n in only]
    return [found[n] for n in names]


def run(script: Path, flags: list[str], markdown: bool, timeout: float) -> tuple[int, str, float]:
    """Run one script; drop flags it does not know (a script written elsewhere may lack some)."""
    wanted = list(flags) + (["--markdown"] if markdown else [])
    start = time.perf_counter()
    while True:
        res = subprocess.run([sys.executable, str(script), *wanted], capture_output=True, text=True,
                             timeout=timeout, cwd=ROOT)
        unknown = [f for f in wanted if res.returncode == 2 and "unrecognized arguments" in res.stderr
                   and f in res.stderr.split("unrecognized arguments", 1)[1]]
        if not unknown:
            break
        wanted = [f for f in wanted if f not in unknown]
    out = res.stdout.rstrip()
    if res.returncode != 0:
        out += f"\n\n(exit code {res.returncode})\n" + res.stderr.strip()[-3000:]
    if markdown and "--markdown" not in wanted:
        out = "```text\n" + out + "\n```"
    return res.returncode, out, time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description="Run every benchmark and print their tables.")
    p.add_argument("--quick", action="store_true", help="fast smoke run of every script")
    p.add_argument("--markdown", action="store_true", help="write the results into BENCHMARKS.md")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"), help="Markdown file to update")
    p.add_argument("--only", default="", help="comma-separated names, e.g. writer,http")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per script")
    args = p.parse_args()
    flags = ["--quick"] if args.quick else []
    only = [x.strip() for x in args.only.split(",") if x.strip()] or None
    started = dt.datetime.now(dt.timezone.utc)
    info = machine()
    stack = server_stack()
    print(f"# consentmw benchmarks, {started:%Y-%m-%d %H:%M} UTC, {info}\n{stack}\n", flush=True)
    sections = []
    outputs: list[tuple[str, str]] = []
    failed = []
    for script in scripts(only):
        print(f"## {script.name}", flush=True)
        try:
            # With --markdown the scripts print Markdown tables (readable in a terminal too).
            code, out, took = run(script, flags, args.markdown, args.timeout)
        except subprocess.TimeoutExpired:
            code, out, took = -1, f"(timed out after {args.timeout:.0f} s)", args.timeout
        print(out + f"\n({took:.0f} s)\n", flush=True)
        outputs.append((script.stem, out))
        if code != 0:
            failed.append(script.name)
        sections.append(f"## {script.stem}\n\n{out}\n")

    verdicts = goals(outputs)
    if verdicts:
        print("## Goals (each against its baseline measured in the same run)")
        for v in verdicts:
            print("- " + v)
        print(flush=True)
        sections.append("## Goals\n\n" + "\n".join("- " + v for v in verdicts) + "\n")

    if args.markdown:
        cmd = "python benchmarks/run_all.py --markdown" + (" --quick" if args.quick else "")
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        head = (f"Run: {started:%Y-%m-%d %H:%M} UTC  \n"
                f"Machine: {info}  \n"
                f"{stack}  \n"
                f"Commit: {commit.stdout.strip() or '?'}  \n"
                f"Command: `{cmd}` (or `make bench` for the terminal tables)\n")
        body = f"{START}\n{head}\n" + "\n".join(sections) + f"\n{END}"
        path = Path(args.output)
        if path.exists() and START in path.read_text() and END in path.read_text():
            old = path.read_text()
            new = old[:old.index(START)] + body + old[old.index(END) + len(END):]
        else:
            new = "# Benchmarks\n\n" + body + "\n"
        path.write_text(new)
        print(f"wrote {path}")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

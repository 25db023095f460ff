"""Smoke test of benchmarks/: every script runs with --quick and prints a table.

No timing is asserted (machines are noisy); the scripts' own correctness checks do count:
a benchmark that stores fewer events than the server accepted exits non-zero.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(BENCH.glob("bench_*.py"))
TABLE_MARK = "=== "  # benchmarks/_common.py starts every text table with it


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_benchmark_runs_quick(script: Path) -> None:
    res = run(str(script), "--quick")
    assert "unrecognized arguments: --quick" not in res.stderr, f"{script.name} needs a --quick flag (fast smoke run)"
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    if "_common" in script.read_text():
        assert TABLE_MARK in out, out
        # a title, a header row and a dashed rule under it
        lines = out.splitlines()
        assert any(set(line.replace(" ", "")) == {"-"} for line in lines), out
    else:  # written without the shared helpers: some tabular output at least
        assert len([line for line in out.splitlines() if line.strip()]) >= 3, out


def test_run_all_markdown(tmp_path: Path) -> None:
    out = tmp_path / "BENCH.md"
    res = run(str(BENCH / "run_all.py"), "--quick", "--only", "banner_size", "--markdown", "--output", str(out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    text = out.read_text()
    assert "<!-- results:start -->" in text and "<!-- results:end -->" in text
    assert "| consentmw first visit (en) |" in text
    # Regenerating keeps what is written outside the markers.
    out.write_text("intro\n\n" + text + "\ndiscussion\n")
    res = run(str(BENCH / "run_all.py"), "--quick", "--only", "banner_size", "--markdown", "--output", str(out))
    assert res.returncode == 0
    again = out.read_text()
    assert again.startswith("intro\n") and again.rstrip().endswith("discussion")
    assert again.count("<!-- results:start -->") == 1

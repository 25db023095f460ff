"""The package's type hints hold: mypy over consentmw/ reports nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_finds_no_errors(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "consentmw", "--ignore-missing-imports",
                             "--cache-dir", str(tmp_path / "cache")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


README_SNIPPET = '''
from fastapi import FastAPI
from starlette.applications import Starlette
from consentmw import ConsentMiddleware, Policy

app = Starlette(routes=[])
app.add_middleware(
    ConsentMiddleware,
    secret_key="a long random secret",
    clickhouse_dsn="chdb://./consentmw-data",
    policy=Policy.default(),
    spool_dir="./consentmw-spool",
    admin_token=None,
)
api = FastAPI()
api.add_middleware(ConsentMiddleware, secret_key=["new secret 0123456789", "old secret 0123456789"],
                   trusted_proxies=["10.0.0.0/8"], flush_interval=0.5)
'''


def test_the_readme_add_middleware_call_type_checks(tmp_path: Path) -> None:
    """Starlette's typed `add_middleware` takes the class with its keyword parameters, and a
    misspelt or mistyped setting is a type error (it was all `**options: Any`)."""
    good = tmp_path / "good.py"
    good.write_text(README_SNIPPET)
    bad = tmp_path / "bad.py"
    bad.write_text(README_SNIPPET + "app.add_middleware(ConsentMiddleware, secret_kee='x')\n"
                   "app.add_middleware(ConsentMiddleware, batch_size='many')\n")
    run = [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run([*run, str(good)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run([*run, str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Found 2 errors" in result.stdout
    assert "secret_kee" in result.stdout and "batch_size" in result.stdout


def test_every_setting_is_a_keyword_of_the_middleware() -> None:
    import dataclasses
    import inspect

    from consentmw import ConsentMiddleware, Settings

    keywords = set(inspect.signature(ConsentMiddleware).parameters) - {"app", "collector"}
    assert keywords == {f.name for f in dataclasses.fields(Settings)}

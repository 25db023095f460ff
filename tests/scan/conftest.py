"""Fixtures for the scanner tests: the test site (first party on 127.0.0.1 behind
ConsentMiddleware, third party on 127.0.0.2), and one scan of it shared by a module."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from consentmw import ConsentMiddleware
from tests.scan.sites import Server, first_party_app, third_party_app

SECRET = "scan-test-secret-0123456789abcdef"


@dataclass
class ScanSite:
    url: str
    third: str
    hits: Counter[str]


@pytest.fixture(scope="module")
def test_site(ch: Any, chdb_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScanSite]:
    database = "t_" + uuid.uuid4().hex[:12]
    hits: Counter[str] = Counter()
    with Server(third_party_app(hits), host="127.0.0.2") as third:
        app = ConsentMiddleware(first_party_app(third.url), secret_key=SECRET, clickhouse_dsn=chdb_dsn,
                                database=database, spool_dir=str(tmp_path_factory.mktemp("spool")),
                                flush_interval=0.2)
        with Server(app) as first:
            yield ScanSite(url=first.url, third=third.url, hits=hits)
        for t in getattr(app.collector.writer, "_threads", None) or ():
            t.join(10)
    ch.command(f"DROP DATABASE IF EXISTS {database} SYNC")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: runs in a real headless chromium")


def pytest_collection_modifyitems(items: list[Any]) -> None:
    # the scanner needs Chromium: skip clearly (not fail obscurely) where there is none
    if not Path("/usr/bin/chromium").exists():
        skip = pytest.mark.skip(reason="Debian's chromium is not installed (make browser)")
        for item in items:
            if "scan" in str(item.fspath) and "browser" in item.keywords:
                item.add_marker(skip)

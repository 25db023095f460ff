"""Operator input that ends up in SQL or in the banner is checked: table, database and cluster
names are plain identifiers, privacy_url is a path or an http(s) URL, admin_token is long."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import pytest

from consentmw.cli import main
from consentmw.core.policy import Policy, PolicyError
from consentmw.core.settings import Settings, SettingsError

from tests.conftest import SECRET
from tests.faults.helpers import closed_port


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("table, message", [
    ("events_statistics WHERE 0 UNION ALL SELECT name FROM system.users --", "not a valid ClickHouse identifier"),
    ("events_statistics;DROP TABLE x", "not a valid ClickHouse identifier"),
    ("consent_log", "not one of the policy's event tables"),
    ("events_marketing", "not one of the policy's event tables"),  # a purpose that stores nothing
])
def test_prove_refuses_a_table_that_is_not_an_event_table(table: str, message: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENTMW_SECRET_KEY", SECRET)
    # the store is unreachable: the check must come before any query
    code, out, err = run_cli("prove", "--dsn", f"http://127.0.0.1:{closed_port()}/", "--table", table, "--event", "x")
    assert code != 0 and message in err, err
    assert len(err.strip().splitlines()) == 1 and not out


@pytest.mark.parametrize("options, message", [
    ({"admin_token": "short"}, "admin_token must be at least 16 characters"),
    ({"admin_token": "   " + "x" * 10 + "   "}, "admin_token must be at least 16 characters"),
    ({"database": "consentmw; DROP DATABASE x"}, "database 'consentmw; DROP DATABASE x' must be a plain"),
    ({"database": "1abc"}, "must be a plain ClickHouse identifier"),
    ({"cluster": "c1 ON CLUSTER x", "clickhouse_dsn": "http://127.0.0.1:8123/"}, "cluster 'c1 ON CLUSTER x'"),
])
def test_settings_refuse_unsafe_operator_values(options: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message[:30].replace("(", r"\(")):
        Settings.build({"secret_key": SECRET, **options}, environ={})


def test_settings_accept_sane_values() -> None:
    s = Settings.build({"secret_key": SECRET, "admin_token": "a" * 16, "database": "site_stats"}, environ={})
    assert s.admin_token == "a" * 16 and s.database == "site_stats"


@pytest.mark.parametrize("url", ["javascript:alert(1)", "data:text/html,<script>x</script>", "//evil.test/p",
                                 "vbscript:x", " https://x.test/", "https:///nohost", "ftp://x.test/p", "/a b"])
def test_privacy_url_must_be_a_path_or_http_url(url: str) -> None:
    with pytest.raises(PolicyError, match="privacy_url"):
        Policy.from_dict({**_policy_dict(), "privacy_url": url})


@pytest.mark.parametrize("url", ["/privacy", "https://example.com/privacy#cookies", "http://example.com/p?x=1", ""])
def test_privacy_url_accepts_paths_and_http_urls(url: str) -> None:
    assert Policy.from_dict({**_policy_dict(), "privacy_url": url}).privacy_url == url


def _policy_dict() -> dict[str, Any]:
    import tomllib
    from importlib import resources

    return tomllib.loads(resources.files("consentmw.core").joinpath("default_policy.toml").read_text())

"""Every ClickHouse DSN form the README shows parses into client arguments; bad ones fail
with a reason; passwords never reach a message."""

from __future__ import annotations

from pathlib import Path

import pytest

from consentmw.store.dsn import DsnError, choose_database, parse_dsn, redact


def test_credentials_database_and_port_from_the_url() -> None:
    d = parse_dsn("http://alice:p%40ss%3Aw%2Frd@db.example:8123/analytics")
    assert not d.embedded and d.database == "analytics"
    assert d.client_kwargs == {"interface": "http", "host": "db.example", "port": 8123, "username": "alice",
                               "password": "p@ss:w/rd", "database": "analytics"}


def test_credentials_as_query_parameters() -> None:
    d = parse_dsn("http://db.example:8123/?user=alice&password=s%26cret&connect_timeout=2")
    kw = d.client_kwargs
    assert (kw["username"], kw["password"], kw["connect_timeout"], d.database) == ("alice", "s&cret", 2, None)


def test_tls_forms() -> None:
    assert parse_dsn("https://db.example/").client_kwargs["port"] == 8443
    secure = parse_dsn("http://db.example:9443/?secure=true")
    assert (secure.client_kwargs["interface"], secure.client_kwargs["port"]) == ("https", 9443)
    assert parse_dsn("https://db.example/?verify=false").client_kwargs["verify"] is False
    assert parse_dsn("clickhouses://db.example/").client_kwargs["interface"] == "https"


def test_ca_file_must_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert parse_dsn(f"https://db.example/?ca_cert={ca}").client_kwargs["ca_cert"] == str(ca)
    with pytest.raises(DsnError, match="not a readable file"):
        parse_dsn(f"https://db.example/?ca_cert={tmp_path / 'missing.pem'}")
    with pytest.raises(DsnError, match="need https"):
        parse_dsn(f"http://db.example/?ca_cert={ca}")


def test_chdb_paths_are_absolute(tmp_path: Path) -> None:
    assert parse_dsn(f"chdb://{tmp_path}/data").chdb_path == f"{tmp_path}/data"
    assert Path(parse_dsn("chdb://./rel").chdb_path or "").is_absolute()


@pytest.mark.parametrize("dsn, reason", [
    ("", "empty"),
    ("mysql://db.example/", "unsupported scheme"),
    ("http:///nohost", "names no host"),
    ("http://db.example:99999/", "not a valid URL"),
    ("http://db.example/?pasword=x", "unknown parameter 'pasword'"),
    ("http://alice@db.example/?user=bob", "names the user twice"),
    ("http://alice:a@db.example/?password=b", "password twice"),
    ("http://db.example/a/b", "one database"),
    ("http://db.example/a?database=b", "two databases"),
    ("http://db.example/bad-name", "letters, digits"),
    ("http://db.example/?secure=maybe", "true or false"),
    ("https://db.example/?secure=false", "contradicts"),
    ("http://db.example/?connect_timeout=-1", "positive whole number"),
    ("http://db.example/?user=a&user=b", "given twice"),
])
def test_bad_dsns_say_why(dsn: str, reason: str) -> None:
    with pytest.raises(DsnError, match=reason):
        parse_dsn(dsn)


def test_errors_and_redaction_never_show_the_password() -> None:
    for dsn in ("http://alice:hunter2secret@db.example/a/b", "http://db.example/a/b?user=al&password=hunter2secret"):
        with pytest.raises(DsnError) as err:
            parse_dsn(dsn)
        assert "hunter2secret" not in str(err.value)
    assert redact("https://alice:hunter2@db:8443/x?password=hunter2&user=alice") == \
        "https://alice:***@db:8443/x?password=***&user=alice"
    assert redact("http://db:8123/") == "http://db:8123/"


def test_the_dsn_database_is_the_store_database() -> None:
    assert choose_database(parse_dsn("http://db/analytics"), "consentmw") == "analytics"
    assert choose_database(parse_dsn("http://db/"), "mine") == "mine"
    assert choose_database(parse_dsn("http://db/mine"), "mine") == "mine"
    with pytest.raises(DsnError, match="keep one of them"):
        choose_database(parse_dsn("http://db/analytics"), "other")

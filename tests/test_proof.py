"""Every stored row's lawful basis can be proven, statistics rows included (no raw id there)."""

from __future__ import annotations

from typing import Any

import httpx

from consentmw.rights.proof import prove
from tests.conftest import BROWSER_UA, SECRET


def client(mw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=mw, client=("81.2.69.160", 1)),
                             base_url="http://site.test", headers={"user-agent": BROWSER_UA})


async def test_each_row_leads_back_to_the_choice_that_allowed_it(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app(secret_key=["rotated-new-key-0123456789", SECRET])
    async with client(mw) as first, client(mw) as second:
        await first.post("/_consent/choice", json={"all": True})
        await second.post("/_consent/choice", json={"granted": ["statistics"]})
        await first.get("/articles/one")
        await second.get("/articles/two")
    mw.collector.flush()
    rows = ch.query(f"SELECT toString(event_id), path FROM {database}.events_statistics ORDER BY path").result_rows
    ledger = dict(ch.query(f"SELECT consent_id, granted FROM {database}.consent_log").result_rows)
    proofs = {path: prove(mw.collector.sink, [SECRET, "rotated-new-key-0123456789"], "events_statistics", eid)
              for eid, path in rows}
    assert all(p.granted for p in proofs.values())
    assert proofs["/articles/one"].consent_id != proofs["/articles/two"].consent_id
    assert set(ledger[proofs["/articles/two"].consent_id]) == {"necessary", "statistics"}
    [(pid,)] = ch.query(f"SELECT toString(event_id) FROM {database}.events_personalisation").result_rows
    personal = prove(mw.collector.sink, [SECRET], "events_personalisation", pid)
    assert personal.granted and personal.consent_id == proofs["/articles/one"].consent_id
    # Without the key that signed, a statistics row cannot be attributed.
    unknown = prove(mw.collector.sink, ["some-other-key-0123456789"], "events_statistics", rows[0][0])
    assert unknown.consent_id is None and not unknown.granted


def test_cli_prove_answers_in_one_line_on_bad_input(chdb_dsn: str, database: str, make_app: Any,
                                                    monkeypatch: Any, capsys: Any) -> None:
    from consentmw.cli import main

    make_app().collector.sink.client()  # the schema exists
    monkeypatch.setenv("CONSENTMW_SECRET_KEY", SECRET)
    args = ["prove", "--dsn", chdb_dsn, "--database", database, "--table", "events_statistics"]
    assert main(args + ["--event", "00000000-0000-4000-8000-000000000000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("consentmw: no row with event_id") and "\n" not in err
    assert main(["prove", "--dsn", chdb_dsn, "--database", database, "--table", "consent_log", "--event", "x"]) == 1
    assert "not one of the policy's event tables" in capsys.readouterr().err
    monkeypatch.delenv("CONSENTMW_SECRET_KEY")
    assert main(args + ["--event", "x"]) == 2
    assert "CONSENTMW_SECRET_KEY" in capsys.readouterr().err

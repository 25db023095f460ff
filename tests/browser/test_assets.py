"""Serving the banner's assets: config, caching, ETags, gzip, size budget (no browser needed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from consentmw.web import assets
from consentmw.web.api import ConsentAPI
from consentmw.web.assets import SOURCE_STATIC_DIR, sizes, strip_js
from consentmw.core.consent import ConsentCodec
from consentmw.core.settings import Settings
from consentmw.core.policy import Policy

BUDGETS = {"en": 6000, "ru": 7500, "kk": 7500}


class NullCollector:
    """Serving static assets needs no store: nothing is collected in these tests."""

    def submit(self, hit: Any) -> bool:
        return True

    def submit_many(self, hits: Any) -> int:
        return len(hits)

    def record(self, record: Any) -> None:
        pass


def make_app(**options: Any) -> ConsentAPI:
    """The consent router with only the core and the assets registered."""
    settings = Settings.build({"secret_key": "assets-test-secret-0123456789", **options})
    api = ConsentAPI(settings, ConsentCodec(settings.secret_key, settings.policy), NullCollector())
    assets.register(api)
    return api


@pytest.fixture
def client() -> Any:
    return TestClient(make_app())


def config_of(body: str) -> dict[str, Any]:
    match = re.search(r"\}\)\((\{.*\}),window,document\);\s*$", body, re.S)
    assert match, body[-300:]
    return json.loads(match.group(1))


def test_banner_js_carries_its_config(client: Any) -> None:
    r = client.get("/_consent/banner.js", headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert r.headers["cache-control"] == "public, max-age=3600, must-revalidate"
    assert re.fullmatch(r'"[0-9a-f]{12}"', r.headers["etag"])
    assert "CONSENTMW_CONFIG" not in r.text
    config = config_of(r.text)
    policy = Policy.default()
    assert config["p"] == "/_consent" and config["v"] == policy.version and config["f"] is True
    assert config["u"] == [[p.id, int(p.required), int(p.gpc_opt_out), int(p.collects)] for p in policy.purposes]
    assert config["r"]["ru"] == policy.texts["ru"]["reopen"]
    # the versioned sub-resources named in the config are cached for a year
    for name, key in (("banner.css", "hc"), ("beacon.js", "hb")):
        versioned = client.get(f"/_consent/{name}?v={config[key]}")
        assert versioned.status_code == 200
        assert versioned.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert versioned.headers["etag"].strip('"').startswith(config[key])
        stale = client.get(f"/_consent/{name}?v=0123456789ab")
        assert stale.headers["cache-control"] == "public, max-age=3600, must-revalidate"


def test_etag_revalidation_and_gzip(client: Any) -> None:
    plain = client.get("/_consent/banner.js", headers={"Accept-Encoding": "identity"})
    etag = plain.headers["etag"]
    for tag in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        r = client.get("/_consent/banner.js", headers={"If-None-Match": tag, "Accept-Encoding": "identity"})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
    assert client.get("/_consent/banner.js", headers={"If-None-Match": '"other"'}).status_code == 200
    raw = client.get("/_consent/banner.js", headers={"Accept-Encoding": "gzip"})
    assert raw.headers["content-encoding"] == "gzip" and raw.headers["vary"] == "Accept-Encoding"
    assert raw.headers["etag"] != etag  # each representation has its own strong ETag
    assert raw.content == plain.content  # httpx decodes it
    assert client.head("/_consent/banner.css").status_code == 200
    assert client.post("/_consent/banner.js").status_code == 405


def test_settings_reach_the_config() -> None:
    c = TestClient(make_app(prefix="/privacy-api", floating_button=False))
    config = config_of(c.get("/privacy-api/banner.js").text)
    assert config["p"] == "/privacy-api" and config["f"] is False
    assert c.get("/privacy-api/beacon.js").status_code == 200


def test_served_scripts_parse_and_stay_csp_safe(client: Any, tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "node is needed to syntax-check the served scripts"
    for name in ("banner.js", "beacon.js"):
        path = tmp_path / name
        path.write_bytes(client.get(f"/_consent/{name}").content)
        check = subprocess.run([node, "--check", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    for name in ("banner.js", "beacon.js"):
        source = (SOURCE_STATIC_DIR / name).read_text("utf-8")
        for banned in ("eval(", "Function(", "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                       ".style", '"style"', "setTimeout(\"", "localStorage", "sessionStorage", "indexedDB"):
            assert banned not in source, (name, banned)


def test_strip_js_keeps_literals() -> None:
    src = 'const a = "x  y", b = /a b/g, c = `p  q`;\n// gone\n  if (a - -1) f(a + +b);\n'
    assert strip_js(src) == 'const a="x  y",b=/a b/g,c=`p  q`;\nif(a- -1)f(a+ +b);\n'


def test_size_budget() -> None:
    """A first visit (banner.js + banner.css + /state, gzip as served) stays within budget per language."""
    measured = sizes()
    for lang, budget in BUDGETS.items():
        assert measured[f"first visit ({lang})"] <= budget, measured
        assert measured[f"state ({lang})"] > 500, measured  # the texts are really there
    assert all(measured[n] > 0 for n in ("banner.js", "banner.css", "beacon.js"))

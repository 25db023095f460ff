"""The package as users get it: a wheel built from the repository, installed into a fresh
virtualenv, serves the banner and answers `consentmw --version`; its metadata says what it
is; the sdist ships no tests it could not run; optional dependencies fail with one line
naming the extra; the embedded store works without pandas."""

from __future__ import annotations

import email
import os
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

import consentmw

ROOT = Path(__file__).resolve().parent.parent


def test_the_repository_holds_no_symlinks() -> None:
    """A clone without symlinks (Windows, some CI checkouts) must build the same wheel."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert [line for line in listed.splitlines() if line.startswith("120000")] == []


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "-o", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_wheel_metadata_and_contents(dist: Path) -> None:
    [wheel] = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = email.message_from_bytes(z.read(f"consentmw-{consentmw.__version__}.dist-info/METADATA"))
    assert {"consentmw/static/banner.js", "consentmw/static/banner.css", "consentmw/static/beacon.js",
            "consentmw/py.typed", "consentmw/core/default_policy.toml",
            "consentmw/scan/trackers.toml", "consentmw/scan/hooks.js"} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    assert meta["Version"] == consentmw.__version__  # one source: consentmw.__version__
    classifiers = set(meta.get_all("Classifier"))
    assert {"Framework :: FastAPI", "Framework :: Django", "Typing :: Typed", "Programming Language :: Python :: 3.11",
            "License :: OSI Approved :: MIT License"} <= classifiers
    assert meta.get_all("Project-URL")
    assert {"embedded", "demo", "scan", "dev"} <= set(meta.get_all("Provides-Extra"))
    requires = meta.get_all("Requires-Dist")
    base = [r for r in requires if "extra ==" not in r]
    assert not any(r.startswith(("chdb", "uvicorn", "pandas")) for r in base), base  # extras only
    assert any(r.startswith("chdb") and 'extra == "embedded"' in r for r in requires)
    assert any(r.startswith("uvicorn") and 'extra == "demo"' in r for r in requires)


def test_sdist_ships_no_tests_it_cannot_run(dist: Path) -> None:
    [sdist] = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as t:
        names = [n.split("/", 1)[1] for n in t.getnames() if "/" in n]
    assert "LICENSE" in names and "static/banner.js" in names and "consentmw/middleware.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/", ".ci/")) for n in names)


INSIDE = textwrap.dedent("""
    import asyncio, json, sys, pathlib
    import consentmw
    from consentmw import ConsentMiddleware
    from starlette.applications import Starlette

    here = pathlib.Path(consentmw.__file__).resolve()
    assert str(here).startswith(sys.prefix), (str(here), sys.prefix)  # the wheel, not the checkout

    async def main():
        mw = ConsentMiddleware(Starlette(), secret_key="wheel-test-secret-0123456789", collect=False,
                               clickhouse_dsn="chdb://" + sys.argv[1], spool_dir=sys.argv[1] + "-spool")
        sent = []
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}
        async def send(message):
            sent.append(message)
        scope = {"type": "http", "method": "GET", "path": "/_consent/banner.js", "raw_path": b"/_consent/banner.js",
                 "query_string": b"", "headers": [], "root_path": "", "scheme": "http",
                 "server": ("test", 80), "client": ("127.0.0.1", 1)}
        await mw(scope, receive, send)
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        print(json.dumps({"status": sent[0]["status"], "size": len(body),
                          "config": b'"p":"/_consent"' in body}))

    asyncio.run(main())
""")


def test_wheel_in_a_fresh_virtualenv_serves_the_banner(dist: Path, tmp_path: Path) -> None:
    [wheel] = dist.glob("*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=300)
    # Dependencies come from this environment's site-packages (a plain path entry: its .pth
    # files, among them the editable install of the checkout, are not processed).
    fresh_site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     capture_output=True, text=True, check=True).stdout.strip())
    (fresh_site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) and not k.startswith("CONSENTMW_")}
    result = subprocess.run([str(py), "-c", INSIDE, str(tmp_path / "data")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = result.stdout.strip().splitlines()[-1]
    assert '"status": 200' in answer and '"config": true' in answer, answer
    version = subprocess.run([str(venv / "bin" / "consentmw"), "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"consentmw {consentmw.__version__}"


BLOCKED = textwrap.dedent("""
    import sys
    sys.modules[sys.argv[1]] = None   # as if the extra were not installed
    from starlette.applications import Starlette
    from consentmw import ConsentMiddleware
    try:
        ConsentMiddleware(Starlette(), secret_key="blocked-test-secret-0123456789", clickhouse_dsn="chdb:///tmp/x")
    except Exception as exc:
        print(type(exc).__name__, exc)
""")


def test_chdb_dsn_without_the_embedded_extra_names_it() -> None:
    result = subprocess.run([sys.executable, "-c", BLOCKED, "chdb"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "consentmw[embedded]" in result.stdout and result.stdout.count("\n") == 1


def test_demo_without_the_demo_extra_names_it() -> None:
    code = ("import sys; sys.modules['uvicorn'] = None\n"
            "from consentmw.cli import main\n"
            "sys.exit(main(['demo', '--port', '0']))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == "consentmw: the demo is served by uvicorn: pip install 'consentmw[demo]'"


NO_PANDAS = textwrap.dedent("""
    import importlib.abc, sys, time, json
    class NoPandas(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "pandas" or name.startswith("pandas."):
                raise ImportError("pandas is not installed")
    sys.meta_path.insert(0, NoPandas())
    from consentmw.collect.hit import Hit
    from consentmw.core.settings import Settings
    from consentmw.pipeline import Collector
    s = Settings.build({"secret_key": "no-pandas-secret-0123456789", "clickhouse_dsn": "chdb://" + sys.argv[1],
                        "spool_dir": sys.argv[1] + "-spool", "flush_interval": 0.1}, environ={})
    c = Collector(s)
    c.start()
    now = time.time()
    for i in range(50):
        c.submit(Hit(now, "pageview", b"site.test", f"/p/{i}", "cid", s.policy.version,
                     frozenset({"statistics", "personalisation"}), "vid0123456789", "81.2.69.160", b"",
                     b"Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0", b"en", b"", None, 200, 1.0))
    c.flush()
    c.stop()
    n = c.sink.query("SELECT count() FROM consentmw.events_statistics").result_rows[0][0]
    print(json.dumps({"rows": int(n), "pandas": any(m.startswith("pandas") for m in sys.modules)}))
""")


def test_the_embedded_store_needs_no_pandas(tmp_path: Path) -> None:
    """chDB declares pandas as a dependency; consentmw's use of it (Arrow in, rows out) never
    imports it, so `pip install --no-deps chdb chdb-core` after consentmw saves ~85 MB."""
    result = subprocess.run([sys.executable, "-c", NO_PANDAS, str(tmp_path / "data")], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == '{"rows": 50, "pandas": false}'

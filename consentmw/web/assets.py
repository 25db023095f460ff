"""The banner's static assets: `<prefix>/banner.js`, `banner.css` and `beacon.js`.

`banner.js` is the one URL sites put in their pages, so it cannot carry a version: it
is served with a short revalidating cache and a strong, content-hashed ETag (a
returning visitor gets a 304 at most). Its generated config embeds the content hashes
of the CSS and the beacon, which the banner requests as `?v=<hash>`: those versioned
URLs are cached for a year, `immutable`. Every file is kept in memory, with a gzip -9
copy sent to clients that accept it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from importlib import resources
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from consentmw.core.policy import LANGUAGES, Policy
from consentmw.web.http import accepts_gzip, etag_matches

if TYPE_CHECKING:  # pragma: no cover
    from consentmw.web.api import ConsentAPI

#: static/ of a source checkout (the wheel ships it as the package consentmw.static)
SOURCE_STATIC_DIR = Path(__file__).resolve().parent.parent.parent / "static"
CONFIG_TOKEN = "CONSENTMW_CONFIG"
REVALIDATE = "public, max-age=3600, must-revalidate"
IMMUTABLE = "public, max-age=31536000, immutable"
_MAX_MOUNT_POINTS = 16
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


@dataclass(frozen=True)
class Asset:
    """One file ready to serve: plain and gzip bodies, each with its own strong ETag."""

    body: bytes
    gz: bytes
    media_type: str
    digest: str

    @classmethod
    def build(cls, body: bytes, media_type: str) -> "Asset":
        return cls(body, gzip.compress(body, 9, mtime=0), media_type,
                   hashlib.sha256(body).hexdigest()[:12])

    def response(self, request: Request, versioned: bool = False) -> Response:
        use_gz = accepts_gzip(request.headers.get("accept-encoding"))
        etag = f'"{self.digest}-gz"' if use_gz else f'"{self.digest}"'
        headers = {
            "ETag": etag,
            "Cache-Control": IMMUTABLE if versioned and request.query_params.get("v") == self.digest else REVALIDATE,
            "Vary": "Accept-Encoding",
            "X-Content-Type-Options": "nosniff",
        }
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        if use_gz:
            headers["Content-Encoding"] = "gzip"
        return Response(self.gz if use_gz else self.body, media_type=self.media_type, headers=headers)


def read_static(name: str) -> bytes:
    """One of the banner's files, from the installed package `consentmw.static` (a wheel, or
    an editable install mapping it to the repository's static/ directory); from the source
    tree's static/ when consentmw runs uninstalled from a checkout."""
    try:
        return resources.files("consentmw.static").joinpath(name).read_bytes()
    except ModuleNotFoundError:
        if (SOURCE_STATIC_DIR / name).is_file():
            return (SOURCE_STATIC_DIR / name).read_bytes()
        raise RuntimeError(f"consentmw's static file {name} is missing: the package was built without "
                           "consentmw.static (reinstall consentmw)") from None


_WORD = re.compile(r"[\w$]")
# string, template or regex literal (a regex only where an operand may start), or one other character
_TOKEN = re.compile(r"""("(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|`(?:\\.|[^`\\])*`)"""
                    r"""|(?<=[(,=:[!&|?{};])\s*(/(?![/*])(?:\\.|\[(?:\\.|[^\]\n])*\]|[^/\\\n])+/[a-z]*)|(\s+)|(.)""",
                    re.S)


def strip_css(source: str) -> str:
    """Drop the comments of a stylesheet written one rule per line."""
    return re.sub(r"/\*.*?\*/\s*", "", source, flags=re.S)


def strip_js(source: str) -> str:
    """Drop comment lines (`//` or a one-line `/* */`), indentation and the spaces no token needs.

    The sources stay readable and commented; the wire copy does not pay for it. A space
    is kept only between two word characters or two identical operator signs (`a - -b`),
    newlines are kept (no reliance on them changes), and string, template and regex
    literals are copied untouched. Enough for our own files, not a general minifier.
    """
    lines = (line.strip() for line in source.splitlines())
    text = "\n".join(line for line in lines if line and not line.startswith(("//", "/*")))
    out: list[str] = []
    pending = ""
    for literal, regex, space, char in _TOKEN.findall(text):
        if space:
            pending = "\n" if "\n" in space else pending or " "
            continue
        piece = literal or regex or char
        if pending:
            prev = out[-1][-1] if out else ""
            if pending == "\n" or (_WORD.match(prev) and _WORD.match(piece[0])) or (prev in "+-" and prev == piece[0]):
                out.append(pending)
            pending = ""
        out.append(piece)
    return "".join(out) + "\n"


def banner_config(policy: Policy, prefix: str, floating_button: bool, css_digest: str,
                  beacon_digest: str, key_ids: list[str] | None = None, host_cookie: bool = True) -> dict[str, Any]:
    """What banner.js needs before any request: enough to decide, for a returning visitor,
    whether to show anything (policy version, purposes) and to draw the floating button."""
    langs = [lang for lang in LANGUAGES if lang in policy.texts] or ["en"]
    return {
        "p": prefix,
        "v": policy.version,
        # the ids of the keys that sign this site's cookies: a cookie with another id is not ours
        "k": list(key_ids or []),
        # 1: on https the cookie is __Host-consentmw (no cookie_domain, cookie_secure not off)
        "s": int(host_cookie),
        "l": langs,
        # [id, required, GPC opt-out, collects data]
        "u": [[p.id, int(p.required), int(p.gpc_opt_out), int(p.collects)] for p in policy.purposes],
        "f": bool(floating_button),
        "r": {lang: policy.texts[lang].get("reopen", "") for lang in langs if lang in policy.texts},
        "hc": css_digest,
        "hb": beacon_digest,
    }


def build_assets(policy: Policy, prefix: str = "/_consent", floating_button: bool = True,
                 key_ids: list[str] | None = None, host_cookie: bool = True) -> dict[str, Asset]:
    """The three assets, with the banner's config generated from the policy and settings."""
    css = Asset.build(strip_css(read_static("banner.css").decode("utf-8")).encode("utf-8"), _TYPES[".css"])
    beacon = Asset.build(strip_js(read_static("beacon.js").decode("utf-8")).encode("utf-8"), _TYPES[".js"])
    config = banner_config(policy, prefix, floating_button, css.digest, beacon.digest, key_ids, host_cookie)
    source = strip_js(read_static("banner.js").decode("utf-8"))
    if CONFIG_TOKEN not in source:
        raise RuntimeError(f"static/banner.js lacks the {CONFIG_TOKEN} placeholder")
    # JSON is a JS expression; the file is external, so no </script> escaping is needed.
    banner = source.replace(CONFIG_TOKEN, json.dumps(config, ensure_ascii=False, separators=(",", ":")), 1)
    return {"banner.js": Asset.build(banner.encode("utf-8"), _TYPES[".js"]),
            "banner.css": css, "beacon.js": beacon}


def register(api: "ConsentAPI") -> dict[str, Asset]:
    """Serve GET (and HEAD) `<prefix>/banner.js`, `/banner.css` and `/beacon.js` from `api`.

    The banner calls `<root_path><prefix>/...`: an app mounted below a path (uvicorn
    `--root-path`, a Starlette `Mount`) gets a banner.js whose config carries that path.
    Each mount point's copy is built once (mount points come from the server and router
    configuration, not from clients; the cache is bounded all the same).
    """
    settings = api.settings
    host_cookie = settings.cookie_domain is None and settings.cookie_secure is not False

    def build(prefix: str) -> dict[str, Asset]:
        return build_assets(api.policy, prefix, settings.floating_button, api.codec.key_ids, host_cookie)

    assets = build(settings.prefix)
    mounted: dict[str, dict[str, Asset]] = {"": assets}

    def assets_for(root: str) -> dict[str, Asset]:
        found = mounted.get(root)
        if found is None:
            if len(mounted) >= _MAX_MOUNT_POINTS:
                mounted.clear()
                mounted[""] = assets
            found = mounted[root] = build(root + settings.prefix)
        return found

    def handler(name: str, versioned: bool):
        async def serve(request: Request) -> Response:
            root = request.scope.get("root_path") or ""
            return (assets_for(root) if root else assets)[name].response(request, versioned)

        serve.__name__ = "serve_" + name.replace(".", "_")
        return serve

    api.add("GET", "/banner.js", handler("banner.js", False))
    api.add("GET", "/banner.css", handler("banner.css", True))
    api.add("GET", "/beacon.js", handler("beacon.js", True))
    return assets


def sizes(policy: Policy | None = None) -> dict[str, int]:
    """Bytes on the wire (gzip, as served) of what a first visit downloads for the banner in each
    language: banner.js, banner.css and the `/state` answer the banner fetches to draw itself.
    The beacon is listed apart: it is loaded only once statistics or personalisation is granted."""
    from consentmw.web.state import StateAnswers, public_policy

    policy = policy or Policy.default()
    assets = build_assets(policy, key_ids=["0" * 8])  # one key id, as a site serves it
    answers = StateAnswers(lambda lang: public_policy(policy, lang))
    out = {name: len(asset.gz) for name, asset in assets.items()}
    for lang in LANGUAGES:
        out[f"state ({lang})"] = len(answers.newcomer(lang)[1])
        out[f"first visit ({lang})"] = out["banner.js"] + out["banner.css"] + out[f"state ({lang})"]
    return out

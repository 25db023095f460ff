"""The one place credentials are taken out of text that may be shown, logged or counted.

A ClickHouse DSN (`http://user:password@host:8123/`, or `?password=` in its query) and
the driver's exception texts (which may repeat the URL) reach HTTP answers, logs,
`/health` and the CLI. Every such text goes through `redact` first. Besides the
patterns (URL user-info, `password=`-style parameters), the passwords of DSNs the
process was configured with are remembered (`remember_dsn`) and masked wherever they
appear, raw or percent-decoded, whatever text carries them.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import parse_qsl, quote, unquote, urlsplit

MASK = "***"

#: scheme://user:password@ (the password may hold anything but white space and '@')
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<secret>[^@\s]*)@")
#: password=..., token=... in query strings, settings dumps and messages
_PARAMS = re.compile(r"(?P<head>\b(?:password|passwd|pwd|secret|token|access_token|api_key)\s*[=:]\s*)"
                     r"(?P<secret>[^&\s,;'\"]+)", re.IGNORECASE)

_known: set[str] = set()
_known_lock = threading.Lock()
#: secrets this short would mask ordinary words; patterns still catch them in URLs
_MIN_KNOWN = 6


def remember_dsn(dsn: str) -> None:
    """Remember the password of a configured DSN so it is masked wherever it shows up."""
    try:
        parts = urlsplit(dsn)
        found = [parts.password or ""] + [v for k, v in parse_qsl(parts.query) if k.lower() in ("password", "pwd")]
    except ValueError:
        return
    with _known_lock:
        for secret in found:
            for form in {secret, unquote(secret), quote(unquote(secret), safe=""), quote(unquote(secret))}:
                if len(form) >= _MIN_KNOWN:
                    _known.add(form)


def redact(text: str) -> str:
    """`text` with every credential replaced by `***`."""
    if not text:
        return text
    out = _USERINFO.sub(lambda m: m["head"] + MASK + "@", text)
    out = _PARAMS.sub(lambda m: m["head"] + MASK, out)
    for secret in sorted(_known, key=len, reverse=True):
        if secret in out:
            out = out.replace(secret, MASK)
    return out


def redact_dsn(dsn: str) -> str:
    """A DSN fit to print: the same store, no password."""
    return redact(dsn)


def exception_text(exc: BaseException) -> str:
    """A whole traceback as text, redacted: for logging a bug without leaking what it carried."""
    import traceback

    return redact("".join(traceback.format_exception(exc)))

"""Referrer host and source (search engine, social network) from a Referer URL."""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple
from urllib.parse import urlsplit

_SOURCES = {
    "google": "Google", "bing": "Bing", "yandex": "Yandex", "duckduckgo": "DuckDuckGo",
    "yahoo": "Yahoo", "baidu": "Baidu", "ecosia": "Ecosia", "mail.ru": "Mail.ru",
    "facebook": "Facebook", "fb.com": "Facebook", "instagram": "Instagram", "t.co": "Twitter",
    "twitter": "Twitter", "x.com": "Twitter", "linkedin": "LinkedIn", "reddit": "Reddit",
    "vk.com": "VK", "telegram": "Telegram", "t.me": "Telegram", "youtube": "YouTube",
    "github": "GitHub", "news.ycombinator": "Hacker News", "chatgpt": "ChatGPT", "perplexity": "Perplexity",
}


class Referrer(NamedTuple):
    host: str
    source: str
    url: str


NONE = Referrer("", "", "")


#: Referers this long are parsed each time, not remembered: the cache holds at most
#: 8,192 x (512 + a host name) characters.
_CACHED_MAX = 512


def parse_referrer(value: str, own_host: str) -> Referrer:
    """Split a Referer; the site's own host counts as no referrer (internal navigation)."""
    if len(value) > _CACHED_MAX or len(own_host) > 300:
        return _parse_referrer(value, own_host)
    return _cached(value, own_host)


def _parse_referrer(value: str, own_host: str) -> Referrer:
    if not value:
        return NONE
    try:
        parts = urlsplit(value[:2048])
        host = (parts.hostname or "").lower()
    except ValueError:
        return NONE
    if not host or parts.scheme not in ("http", "https", "android-app"):
        return NONE
    if host.startswith("www."):
        host = host[4:]
    own = own_host.split(":")[0].lower()
    if own.startswith("www."):
        own = own[4:]
    if host == own:
        return NONE
    source = ""
    for key, name in _SOURCES.items():
        if key in host and (host == key or f".{key}" in f".{host}" or host.startswith(key + ".")):
            source = name
            break
    # Strip the query and fragment: search terms and tokens are not ours to keep.
    url = f"{parts.scheme}://{parts.netloc}{parts.path}"[:1024]
    return Referrer(host[:255], source, url)


_cached = lru_cache(maxsize=8192)(_parse_referrer)

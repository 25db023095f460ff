"""Crawler and automation user agents, from the maintained `crawler-user-agents` list, in linear time.

The list (~1,500 patterns: crawlers, headless browsers, Lighthouse, monitoring and
automation tools) is meant to be matched one regex after another, which costs 2-5 ms
per string here; CrawlerDetect's single regex costs ~100 ms for a 500-byte string. Either
lets a client who sends distinct user agents buy the writer thread cheaply.

So each pattern is indexed by a literal every match must contain (the pattern itself
for the ~1,100 plain ones; for a regex, its longest literal run outside any group,
class or optional item), keyed by that literal's first three characters. A user agent
is checked by looking up each of its three-character windows (one dict look-up per
character) and running only the patterns found; the few patterns without a usable
literal run on every string. Cost: tens of microseconds, linear in the string's length.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

_META = set(".^$*+?{}[]\\|()")
_CLASS_ESCAPES = set("dDwWsSbBAZ")
_KEY = 3


def required_literal(pattern: str) -> str:
    """A substring present in every match of `pattern` (maybe ""), read conservatively."""
    if not set(pattern) & _META:
        return pattern
    best = ""
    run: list[str] = []
    depth = 0
    i = 0

    def close() -> None:
        nonlocal best, run
        if len(run) > len(best):
            best = "".join(run)
        run = []

    n = len(pattern)
    while i < n:
        c = pattern[i]
        nxt = pattern[i + 1] if i + 1 < n else ""
        if c == "\\" and nxt:
            literal = None if nxt.isalnum() and nxt in _CLASS_ESCAPES or nxt.isdigit() else nxt
            if nxt.isalpha() and nxt not in _CLASS_ESCAPES:
                literal = None  # \t, \n, \x..: not worth reading
            i += 2
            token = literal
        elif c == "[":
            j = pattern.find("]", i + 2)
            i = j + 1 if j > 0 else n
            token = None
        elif c in "()":
            depth += 1 if c == "(" else -1
            if c == "(" and pattern[i + 1:i + 2] == "?":
                return ""  # look-arounds and flags: not worth reading
            i += 1
            token = None
        elif c == "|":
            if depth == 0:
                return ""  # a top-level alternative: nothing is required
            i += 1
            token = None
        elif c in ".^$":
            i += 1
            token = None
        elif c in "?*{+":
            i += 1
            token = None
        else:
            i += 1
            token = c
        following = pattern[i:i + 1]
        if token is None or depth > 0:
            close()
            continue
        if following in ("?", "*", "{"):
            close()  # the character may be absent
            continue
        run.append(token)
        if following == "+":
            close()  # repeated: the run cannot go on past it
    close()
    return best


class CrawlerList:
    """`matches(user_agent)`: True when any pattern of the list matches."""

    def __init__(self, patterns: Iterable[str]) -> None:
        #: first three characters of a required literal -> (literal, the pattern or None if it is the literal)
        self.index: dict[str, list[tuple[str, re.Pattern[str] | None]]] = {}
        self.always: list[re.Pattern[str]] = []
        for pattern in patterns:
            literal = required_literal(pattern)
            if len(literal) >= _KEY:
                plain = None if literal == pattern else re.compile(pattern)
                self.index.setdefault(literal[:_KEY], []).append((literal, plain))
            else:
                self.always.append(re.compile(pattern))

    def matches(self, user_agent: str) -> bool:
        get = self.index.get
        for i in range(len(user_agent) - _KEY + 1):
            found = get(user_agent[i:i + _KEY])
            if found is not None:
                for literal, pattern in found:
                    if user_agent.startswith(literal, i) and (pattern is None or pattern.search(user_agent)):
                        return True
        return any(p.search(user_agent) for p in self.always)


@lru_cache(maxsize=1)
def crawler_list() -> CrawlerList:
    """The list as installed (`crawler-user-agents` on PyPI), indexed once per process."""
    import crawleruseragents

    return CrawlerList(entry["pattern"] for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA)


def is_crawler(user_agent: str) -> bool:
    return crawler_list().matches(user_agent)

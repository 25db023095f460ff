"""User-Agent parsing: the cost that decided which parser the enrichment uses.

Every unseen User-Agent string is parsed once (then cached), so the cold cost matters for
new traffic and the warm cost for everything else. Compared in one run: the `user-agents`
package (the design card's choice, built on ua-parser's legacy pure-Python path) and
`ua_parser.parse` from ua-parser 1.x with its Rust matcher, which
`consentmw.collect.useragent.parse_agent` uses behind a bounded LRU cache.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

from _common import Table, emit, parser


def agents(n: int, seed: int) -> list[str]:
    """N distinct, realistic strings (build numbers vary, so no parser cache can help)."""
    bases = [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.{a}.{b} Safari/537.36",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{a} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.{b} Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.{a}.{b} Safari/605.1.15",
        "Mozilla/5.0 (X11; Linux x86_64; rv:{a}.{b}) Gecko/20100101 Firefox/{a}.0",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.{a}.{b} Mobile Safari/537.36",
    ]
    return [bases[i % len(bases)].format(a=seed * 7 + i // 5 % 97, b=i) for i in range(n)]


def per_call_us(fn: Callable[[str], object], strings: list[str]) -> float:
    start = time.perf_counter()
    for s in strings:
        fn(s)
    return (time.perf_counter() - start) / len(strings) * 1e6


def main() -> int:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    n = 50 if args.quick else 400
    repeats = args.repeats or (1 if args.quick else 5)

    import ua_parser
    import user_agents

    from consentmw.collect.useragent import parse_agent

    def legacy(s: str) -> object:
        ua = user_agents.parse(s)
        return ua.browser.family, ua.os.family, ua.is_mobile, ua.is_tablet, ua.is_bot

    ua_parser.parse(agents(1, 999)[0])  # load the matcher once, outside the timings
    legacy(agents(1, 998)[0])
    cold: dict[str, list[float]] = {"user-agents": [], "ua-parser 1.x (Rust)": [], "parse_agent, cold": []}
    warm: list[float] = []
    for r in range(repeats):
        cold["user-agents"].append(per_call_us(legacy, agents(n, 3 * r)))
        cold["ua-parser 1.x (Rust)"].append(per_call_us(ua_parser.parse, agents(n, 3 * r + 1)))
        fresh = agents(n, 3 * r + 2)
        cold["parse_agent, cold"].append(per_call_us(parse_agent, fresh))
        warm.append(per_call_us(parse_agent, fresh))
    base = statistics.median(cold["user-agents"])
    table = Table(f"User-Agent parsing, {n} unseen strings x {repeats} (medians)",
                  ["parser", "µs per string", "ratio to user-agents"])
    for name, values in cold.items():
        med = statistics.median(values)
        table.add(name, round(med, 1), f"{med / base:.3f}x")
    med = statistics.median(warm)
    table.add("parse_agent, warm (LRU hit)", round(med, 2), f"{med / base:.4f}x")
    table.note("parse_agent = ua-parser plus bot and device-type rules; it is what the writer thread calls")
    emit([table], args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

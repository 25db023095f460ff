"""Runs a scan: one Chromium, pages crawled breadth first, each page in three fresh contexts.

Several pages are visited at once (`concurrency`). Until a page has shown the consentmw
banner, a page's "no choice yet" visit goes first (it tells whether there is a banner to
click: a site without one costs one visit per page); from then on a page's three visits run
side by side. Only same-origin pages are navigated to.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable

from consentmw.core.policy import Policy
from consentmw.scan.classify import Rules, classify
from consentmw.scan.crawl import Frontier, PathFilter, origin_of, start_url
from consentmw.scan.model import MODES, Observation, PageResult, ScanResult
from consentmw.scan.visit import Visit, VisitOptions

BROWSER_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/lib/chromium/chromium",
                      "/usr/bin/google-chrome", "/usr/bin/google-chrome-stable")
# no traffic of the browser's own: a scan sends nothing but what the pages load
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-default-apps", "--disable-domain-reliability",
                 "--disable-client-side-phishing-detection", "--metrics-recording-only", "--no-pings",
                 "--disable-features=OptimizationHints,MediaRouter,Translate,InterestFeedContentSuggestions"]


class ScanError(Exception):
    """The scan cannot start (no browser, bad URL, the first page does not load): one line."""


@dataclass
class ScanConfig:
    url: str
    max_pages: int = 50
    max_seconds: float | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    browser: str | None = None
    concurrency: int = 4
    policy: Policy = field(default_factory=Policy.default)
    visit: VisitOptions = field(default_factory=VisitOptions)


def find_browser(path: str | None) -> str:
    """The Chromium to drive: `path` if given, else Debian's where it usually is."""
    if path:
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ScanError(f"--browser {path}: not an executable file")
        return path
    for candidate in (*BROWSER_CANDIDATES, shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise ScanError("no Chromium found: install Debian's (apt-get install chromium) or name one with --browser PATH")


def _labels(policy: Policy, key: str, default: str) -> tuple[str, ...]:
    return tuple({texts.get(key, "") for texts in policy.texts.values()} - {""}) or (default,)


Progress = Callable[[int, int], None]   # (visits done, visits planned so far)


async def scan(config: ScanConfig, progress: Progress | None = None) -> ScanResult:
    from playwright.async_api import async_playwright

    first = start_url(config.url)
    executable = find_browser(config.browser)
    policy = config.policy
    options = config.visit
    options.accept_labels = _labels(policy, "accept_all", "Accept all")
    options.reject_labels = _labels(policy, "reject_all", "Reject all")
    options.required = policy.required_ids
    rules = Rules.from_policy(policy)
    frontier = Frontier(first, max(1, config.max_pages), PathFilter(config.include, config.exclude))
    origin = origin_of(first)
    started = time.monotonic()
    deadline = started + config.max_seconds if config.max_seconds else None
    pages: list[PageResult] = []
    done = 0
    stopped = ""
    report = progress or (lambda _d, _t: None)

    async with async_playwright() as pw:
        try:
            browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        except Exception as exc:  # noqa: BLE001
            raise ScanError(f"could not start {executable}: {str(exc).splitlines()[0][:200]}") from None
        version = browser.version
        wake = asyncio.Event()
        active = 0

        banner_seen = False   # once a page had the banner, a page's three visits run side by side

        async def visit_page(url: str, depth: int) -> None:
            nonlocal done, banner_seen
            result = PageResult(url=url, depth=depth, observations={})
            pages.append(result)
            together = banner_seen
            modes = MODES if together else MODES[:1]
            first = await asyncio.gather(*(Visit(browser, url, m, origin, options).run() for m in modes))
            none = first[0]
            result.observations["none"] = none
            done += len(modes)
            frontier.offer(none.links, depth)
            wake.set()
            report(done, 3 * frontier.admitted)
            why = ""
            if none.error or not none.is_page:
                why = "the page did not load" if none.error else "not an HTML page"
            elif not none.banner.shown:
                why = "no consentmw banner to click" if not none.banner.consentmw else "the banner did not appear"
            if why:
                for mode in MODES[1:]:
                    result.observations[mode] = Observation(mode=mode, url=url, skipped=why)
            else:
                banner_seen = True
                others = first[1:] if together else await asyncio.gather(
                    *(Visit(browser, url, m, origin, options).run() for m in MODES[1:]))
                for o in others:
                    result.observations[o.mode] = o
                    frontier.offer(o.links, depth)
            if not together:
                done += 2
            report(done, 3 * frontier.admitted)
            result.findings = classify(result, rules)

        async def worker() -> None:
            nonlocal active, stopped
            while True:
                item = frontier.pop()
                if item is None:
                    if active == 0:
                        wake.set()
                        return
                    wake.clear()
                    await wake.wait()
                    continue
                if deadline and pages and time.monotonic() > deadline:   # the start page is always visited
                    stopped = f"--max-seconds {config.max_seconds:g} reached"
                    frontier.queue.clear()
                    wake.set()
                    return
                active += 1
                try:
                    await visit_page(*item)
                finally:
                    active -= 1
                    wake.set()

        try:
            await asyncio.gather(*(worker() for _ in range(max(1, config.concurrency))))
        finally:
            await browser.close()

    if frontier.skipped and not stopped:
        stopped = f"--max-pages {config.max_pages} reached ({frontier.skipped} more page(s) found)"
    start_obs = next((p.observations["none"] for p in pages if p.url == first), None)
    if start_obs is not None and start_obs.error and len(pages) == 1:
        raise ScanError(f"could not load {first}: {start_obs.error}")
    return ScanResult(start_url=first, origin=origin, pages=pages, seconds=round(time.monotonic() - started, 2),
                      stopped=stopped, browser=f"{executable} {version}", policy_version=policy.version)


def run(config: ScanConfig, progress: Progress | None = None) -> ScanResult:
    """`scan` from synchronous code (the CLI)."""
    return asyncio.run(scan(config, progress))



"""One page in one fresh browser context: load it, make the choice a visitor would, record.

Everything is recorded from events, as it happens: requests (with their initiator from the
DevTools protocol), Set-Cookie headers of every response in every frame, and, through an
init script in every frame (hooks.js), cookies written by script, storage keys and
consent-gated scripts. For "reject" and "accept", only what happens from the click on is
kept (the time before it is the "none" visit's); the page is then reloaded, so what the
site does on the next page view with the recorded choice is seen too.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from consentmw.scan import cookies as cookie_text
from consentmw.scan.crawl import origin_of, party
from consentmw.scan.model import Banner, CookieSet, GatedScript, Observation, Request, StorageKey

CONSENT_COOKIES = ("consentmw", "__Host-consentmw")

# what each resource type looks like in the page, for "where did it come from"
TAGS = {"script": "<script>", "image": "<img>", "stylesheet": "<link rel=stylesheet>", "font": "font",
        "media": "<video>/<audio>", "xhr": "XMLHttpRequest", "fetch": "fetch()", "ping": "sendBeacon/ping",
        "websocket": "WebSocket", "document": "<iframe>", "eventsource": "EventSource", "manifest": "manifest",
        "texttrack": "<track>", "other": "request"}

STORAGE_JS = """async () => {
  const out = {origin: location.origin, local: [], session: [], idb: []};
  try { out.local = Object.keys(localStorage).slice(0, 500); } catch (e) {}
  try { out.session = Object.keys(sessionStorage).slice(0, 500); } catch (e) {}
  try { out.idb = (await indexedDB.databases()).map(d => d.name).slice(0, 100); } catch (e) {}
  return out;
}"""

LINKS_JS = "els => els.slice(0, 5000).map(a => a.href).filter(h => typeof h === 'string')"


def hooks_source() -> str:
    return resources.files("consentmw.scan").joinpath("hooks.js").read_text("utf-8")


@dataclass
class VisitOptions:
    page_timeout: float = 30.0      # seconds for a page load
    banner_timeout: float = 15.0    # seconds for the banner to appear (or answer) on a busy machine
    quiet: float = 0.3              # network silence that counts as settled
    settle_max: float = 4.0         # ... waited for at most this long
    ignore_https_errors: bool = False
    accept_labels: tuple[str, ...] = ("Accept all",)
    reject_labels: tuple[str, ...] = ("Reject all",)
    required: frozenset[str] = frozenset({"necessary"})


@dataclass
class _Event:
    after: bool          # happened from the click on
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """Collects one context's events; `after` flips when the visitor clicks."""

    def __init__(self, origin: str, page_url: str) -> None:
        self.origin = origin
        self.host = urlsplit(origin).hostname or ""
        self.page_url = page_url
        self.after = False
        self.events: list[_Event] = []
        self.initiators: dict[str, dict[str, Any]] = {}   # url -> DevTools initiator (first seen)
        self.resources: dict[str, str] = {}                # url -> DevTools resource type
        self.inflight = 0
        self.last_activity = time.monotonic()
        self.pending: set[asyncio.Task[None]] = set()

    # -- network -----------------------------------------------------------------
    def on_request(self, request: Any) -> None:
        self.inflight += 1
        self.last_activity = time.monotonic()
        if origin_of(request.url) == self.origin or not request.url.startswith(("http:", "https:", "ws:", "wss:")):
            return
        try:
            frame_url, main = request.frame.url, request.frame.parent_frame is None
        except Exception:  # noqa: BLE001 - the frame may already be gone
            frame_url, main = "", True
        self.events.append(_Event(self.after, "request", {
            "url": request.url, "resource": request.resource_type, "frame_url": frame_url, "main": main,
            "navigation": request.is_navigation_request()}))

    def on_done(self, _request: Any) -> None:
        self.inflight = max(0, self.inflight - 1)
        self.last_activity = time.monotonic()

    def on_response(self, response: Any) -> None:
        task = asyncio.ensure_future(self._read_set_cookie(response, self.after))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _read_set_cookie(self, response: Any, after: bool) -> None:
        try:
            values = await response.header_values("set-cookie")
        except Exception:  # noqa: BLE001 - the context closed or the response was evicted
            return
        if not values:
            return
        try:
            resource = response.request.resource_type
        except Exception:  # noqa: BLE001
            resource = "other"
        for header in values:
            for line in header.split("\n"):   # some stacks fold several into one value
                if line.strip():
                    self.events.append(_Event(after, "set-cookie", {"text": line, "url": response.url,
                                                                     "resource": resource}))

    def on_cdp_request(self, params: dict[str, Any]) -> None:
        url = params.get("request", {}).get("url", "")
        if url and url not in self.initiators:
            self.initiators[url] = params.get("initiator") or {}
            self.resources[url] = str(params.get("type", "")).lower()

    # -- the init script ----------------------------------------------------------
    def on_binding(self, source: dict[str, Any], kind: str, data: Any) -> None:
        if not isinstance(data, dict) or kind not in ("cookie", "cookiestore", "storage", "indexeddb", "gated"):
            return
        try:
            frame_url = source["frame"].url
        except Exception:  # noqa: BLE001
            frame_url = ""
        data = {k: (str(v)[:4096] if isinstance(v, str) else v) for k, v in list(data.items())[:8]}
        data["frame_url"] = frame_url
        if len(self.events) < 20000:
            self.events.append(_Event(self.after, kind, data))

    async def settle(self, quiet: float, longest: float) -> None:
        """Wait until the network has been quiet for `quiet` seconds (at most `longest`)."""
        start = time.monotonic()
        await asyncio.sleep(min(quiet, longest))
        while time.monotonic() - start < longest:
            idle = time.monotonic() - self.last_activity
            if self.inflight == 0 and idle >= quiet:
                break
            await asyncio.sleep(0.05)
        if self.pending:
            await asyncio.wait(list(self.pending), timeout=2)

    # -- words ----------------------------------------------------------------------
    def initiator(self, url: str, resource: str, frame_url: str, main: bool, navigation: bool) -> str:
        """Where a request came from, as a reader of the page would say it."""
        tag = TAGS.get(resource, resource)
        if not main and not navigation:
            return f"{tag} inside <iframe src={frame_url}>"
        init = self.initiators.get(url) or {}
        kind = init.get("type", "")
        if kind == "parser":
            src = init.get("url", "")
            line = init.get("lineNumber")
            at = f" (line {line + 1})" if isinstance(line, int) else ""
            runner = self._script_ending_at(src, line, init.get("columnNumber"))
            if runner and resource != "script":
                return f"{tag} added by script {runner} while it ran{at}"
            if not src or src == self.page_url or origin_of(src) == self.origin and src.split("#")[0] == self.page_url:
                return f"{tag} in the page HTML{at}"
            return f"{tag} referenced by {src}{at}"
        if kind == "script":
            frames = self._stack(init.get("stack") or {})
            if frames:
                src, line = frames[0]
                if src == self.page_url:
                    return f"{tag} added by an inline <script> (line {line + 1})"
                return f"{tag} added by script {src}:{line + 1}"
            return f"{tag} added by a script"
        if navigation:
            return f"{tag} in the page"
        return f"{tag} ({kind or 'browser'})"

    def _script_ending_at(self, doc: str, line: Any, column: Any) -> str:
        """The external script whose `</script>` ends where the parser was: Chromium reports
        requests made while a parser-inserted script runs as made by the parser, at that spot."""
        if not isinstance(line, int) or not isinstance(column, int):
            return ""
        for url, init in self.initiators.items():
            if (init.get("type") == "parser" and init.get("url") == doc and init.get("lineNumber") == line
                    and init.get("columnNumber") == column - len("</script>") and self.resources.get(url) == "script"):
                return url
        return ""

    @staticmethod
    def _stack(stack: dict[str, Any]) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        while stack and len(out) < 20:
            for f in stack.get("callFrames") or ():
                if f.get("url"):
                    out.append((f["url"], int(f.get("lineNumber", 0))))
            stack = stack.get("parent") or {}
        return out

    def script_source(self, where: str, frame_url: str) -> str:
        if not where:
            return f"a script in {frame_url or 'the page'}"
        url, _, line = where.rpartition(":")
        if url == self.page_url:
            return f"an inline <script> (line {line})"
        if url == frame_url and frame_url != self.page_url:
            return f"an inline <script> in <iframe src={frame_url}> (line {line})"
        return f"script {url}:{line}"


def _request_words(rec: Recorder, url: str, resource: str) -> str:
    tag = TAGS.get(resource, resource)
    if resource == "document":
        return f"the response to {url}" if origin_of(url) == rec.origin else f"the response to <iframe src={url}>"
    return f"the response to {tag} {url}"


class Visit:
    """One page, one mode, one fresh context."""

    def __init__(self, browser: Any, url: str, mode: str, origin: str, options: VisitOptions) -> None:
        self.browser, self.url, self.mode, self.origin, self.opt = browser, url, mode, origin, options
        self.rec = Recorder(origin, url)
        self.obs = Observation(mode=mode, url=url)

    async def run(self) -> Observation:
        started = time.monotonic()
        context = await self.browser.new_context(ignore_https_errors=self.opt.ignore_https_errors,
                                                 locale="en-US", viewport={"width": 1280, "height": 800})
        try:
            await self._run(context)
        except Exception as exc:  # noqa: BLE001 - a page that breaks is reported, the scan goes on
            self.obs.error = self.obs.error or _short_error(exc)
        finally:
            self.obs.seconds = round(time.monotonic() - started, 3)
            try:
                await context.close()
            except Exception:  # noqa: BLE001
                pass
        return self.obs

    async def _run(self, context: Any) -> None:
        rec, opt = self.rec, self.opt
        await context.expose_binding("__cmwScan", rec.on_binding)
        await context.add_init_script(hooks_source())
        page = await context.new_page()
        page.on("request", rec.on_request)
        page.on("requestfinished", rec.on_done)
        page.on("requestfailed", rec.on_done)
        page.on("response", rec.on_response)
        try:
            cdp = await context.new_cdp_session(page)
            cdp.on("Network.requestWillBeSent", rec.on_cdp_request)
            await cdp.send("Network.enable")
        except Exception:  # noqa: BLE001 - initiators are a nicety; the rest still works
            pass
        response = await page.goto(self.url, wait_until="load", timeout=opt.page_timeout * 1000)
        self.obs.final_url = page.url
        self.obs.status = response.status if response else None
        ctype = (await response.header_value("content-type") or "") if response else ""
        if origin_of(page.url) != self.origin:
            self.obs.is_page = False
            self.obs.error = f"redirected to another origin: {page.url}"
            return
        if "html" not in ctype.lower():
            self.obs.is_page = False
            return
        if self.mode == "none":   # the others judge only what follows the click: no need to wait here
            await rec.settle(opt.quiet, opt.settle_max)
        banner = self.obs.banner
        banner.consentmw = bool(await page.evaluate("() => !!(window.consentmw && window.consentmw._p !== undefined)"))
        if banner.consentmw:
            try:
                await page.wait_for_selector(".cmw-b", state="visible", timeout=opt.banner_timeout * 1000)
                banner.shown = True
            except Exception:  # noqa: BLE001 - a timeout: the banner never came
                banner.detail = f"the banner script ran but no banner appeared within {opt.banner_timeout:g} s"
                if self.mode != "none":   # it did in the first visit: nothing to click this time
                    banner.working = False
        jar_before: set[tuple[str, str]] = set()
        if self.mode != "none" and banner.shown:
            jar_before = {(c["name"], c["domain"].lstrip(".")) for c in await context.cookies()}
            await self._choose(page, context)
            await rec.settle(opt.quiet, opt.settle_max)
            rec.page_url = page.url
            await page.reload(wait_until="load", timeout=opt.page_timeout * 1000)
            await rec.settle(opt.quiet, opt.settle_max)
            if banner.working and await page.locator(".cmw-b").count():
                banner.working = False
                banner.detail = "the banner asked again after a reload: the choice was not remembered"
        self.obs.links = await page.eval_on_selector_all("a[href], area[href]", LINKS_JS)
        await self._collect(page, context, jar_before)

    async def _choose(self, page: Any, context: Any) -> None:
        """Click Accept all / Reject all in the banner, as a visitor would, and check the result."""
        banner, opt = self.obs.banner, self.opt
        labels = opt.accept_labels if self.mode == "accept" else opt.reject_labels
        box = page.locator(".cmw-b")
        button = box.get_by_role("button", name=re.compile(
            "^(" + "|".join(re.escape(label) for label in labels) + ")$", re.I))
        if not await button.count():   # unknown texts: the banner's order is accept, reject, settings
            button = box.locator(".cmw-a button").nth(0 if self.mode == "accept" else 1)
        banner.clicked = self.mode
        self.rec.after = True
        try:
            async with page.expect_response(lambda r: r.request.method == "POST" and "/choice" in r.url,
                                            timeout=opt.banner_timeout * 1000) as info:
                await button.first.click(timeout=opt.banner_timeout * 1000)
            answer = await info.value
        except Exception as exc:  # noqa: BLE001
            banner.working = False
            banner.detail = f"clicking {self.mode} all recorded no choice ({_short_error(exc)})"
            return
        if not answer.ok:
            banner.working = False
            banner.detail = f"the choice was refused: HTTP {answer.status}"
            return
        try:
            state = await answer.json()
            granted = tuple(sorted((state.get("consent") or {}).get("granted") or ()))
            optional = {p["id"] for p in (state.get("policy") or {}).get("purposes", ()) if not p.get("required")}
        except Exception:  # noqa: BLE001
            banner.working = False
            banner.detail = "the choice endpoint answered something that is not the consent state"
            return
        banner.granted = granted
        try:
            await box.wait_for(state="detached", timeout=opt.banner_timeout * 1000)
        except Exception:  # noqa: BLE001
            banner.working = False
            banner.detail = "the banner stayed open after the click"
            return
        names = {c["name"] for c in await context.cookies()}
        if not names & set(CONSENT_COOKIES):
            banner.working, banner.detail = False, "no consent cookie was stored after the click"
        elif self.mode == "reject" and set(granted) & optional:
            banner.working, banner.detail = False, f"Reject all granted {', '.join(sorted(set(granted) & optional))}"
        elif self.mode == "accept" and not optional <= set(granted):
            banner.working = False
            banner.detail = f"Accept all left out {', '.join(sorted(optional - set(granted)))}"
        else:
            banner.working = True

    async def _collect(self, page: Any, context: Any, jar_before: set[tuple[str, str]]) -> None:
        rec, obs, now = self.rec, self.obs, time.time()
        if rec.pending:
            await asyncio.wait(list(rec.pending), timeout=2)
        keep = [e for e in rec.events if e.after or self.mode == "none"]
        jar = {(c["name"], c["domain"].lstrip(".")): c for c in await context.cookies()}

        # cookies: from Set-Cookie headers and script writes, then whatever else is in the jar
        found: dict[tuple[str, str], CookieSet] = {}
        for e in keep:
            if e.kind == "set-cookie":
                host = urlsplit(e.data["url"]).hostname or ""
                w = cookie_text.parse(e.data["text"], host, now)
                via, source = "header", f"Set-Cookie in {_request_words(rec, e.data['url'], e.data['resource'])}"
            elif e.kind == "cookie":
                host = urlsplit(e.data.get("frame_url", "")).hostname or rec.host
                w = cookie_text.parse(e.data.get("text", ""), host, now)
                via, source = "script", f"document.cookie in {rec.script_source(e.data.get('where', ''), e.data.get('frame_url', ''))}"
            elif e.kind == "cookiestore":
                host = urlsplit(e.data.get("frame_url", "")).hostname or rec.host
                expires = e.data.get("expires")
                age = f"; max-age={int(expires / 1000 - now)}" if isinstance(expires, (int, float)) else ""
                w = cookie_text.parse(f"{e.data.get('name', '')}=x; domain={e.data.get('domain') or host}{age}", host, now)
                via, source = "script", f"cookieStore.set in {rec.script_source(e.data.get('where', ''), e.data.get('frame_url', ''))}"
            else:
                continue
            if w is None or w.deletes:
                continue
            key = (w.name, w.domain)
            stored = key in jar
            # what the site asked for (Chromium caps what it keeps at 400 days)
            lifetime = w.lifetime if w.lifetime is not None or not stored else _jar_lifetime(jar[key], now)
            if key not in found or (stored and not found[key].stored):
                found[key] = CookieSet(name=w.name, domain=w.domain, party=party(w.domain, rec.host),
                                       lifetime=lifetime, via=via, source=source, stored=stored)
        for key, c in jar.items():
            if key not in found and key not in jar_before:
                found[key] = CookieSet(name=key[0], domain=key[1], party=party(key[1], rec.host),
                                       lifetime=_jar_lifetime(c, now), via="jar",
                                       source="seen in the browser's cookie jar (setter not observed)")
        obs.cookies = sorted(found.values(), key=lambda c: (c.party, c.domain, c.name))

        # storage: keys written (with their writer) plus keys found at the end
        storage: dict[tuple[str, str, str], StorageKey] = {}
        for e in keep:
            if e.kind in ("storage", "indexeddb"):
                frame_url = e.data.get("frame_url", "") or rec.page_url
                kind = "indexedDB" if e.kind == "indexeddb" else e.data.get("kind", "localStorage")
                k = (kind, origin_of(frame_url), e.data.get("key", ""))
                storage.setdefault(k, StorageKey(kind=k[0], origin=k[1], key=k[2],
                                                 source=rec.script_source(e.data.get("where", ""), frame_url)))
        if self.mode == "none":   # a fresh context: everything present now was made by this page
            for frame in page.frames:
                try:
                    found_keys = await frame.evaluate(STORAGE_JS)
                except Exception:  # noqa: BLE001 - detached or opaque frames
                    continue
                for kind, field_name in (("localStorage", "local"), ("sessionStorage", "session"), ("indexedDB", "idb")):
                    for key in found_keys.get(field_name) or ():
                        k = (kind, str(found_keys.get("origin", "")), str(key))
                        storage.setdefault(k, StorageKey(kind=kind, origin=k[1], key=k[2]))
        obs.storage = sorted(storage.values(), key=lambda s: (s.origin, s.kind, s.key))

        # requests to other origins
        seen: set[str] = set()
        for e in keep:
            if e.kind == "request" and e.data["url"] not in seen:
                seen.add(e.data["url"])
                d = e.data
                obs.requests.append(Request(
                    url=d["url"][:2000], host=urlsplit(d["url"]).hostname or "", resource=d["resource"],
                    initiator=rec.initiator(d["url"], d["resource"], d["frame_url"], d["main"], d["navigation"])))

        # consent-gated scripts
        gated: dict[tuple[str, str], GatedScript] = {}
        for e in rec.events:   # declarations come before the click; runs are judged by when
            if e.kind != "gated":
                continue
            purposes = tuple(str(e.data.get("purposes", "")).split())
            script = e.data.get("src") or "inline: " + str(e.data.get("inline", ""))
            ran = bool(e.data.get("ran")) and (e.after or self.mode == "none")
            key = (" ".join(purposes), script)
            if key not in gated or ran:
                gated[key] = GatedScript(purposes=purposes, script=script, ran=ran)
        obs.gated = list(gated.values())


def _jar_lifetime(cookie: dict[str, Any], now: float) -> int | None:
    expires = cookie.get("expires", -1)
    return None if expires is None or expires < 0 else int(expires - now)


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]

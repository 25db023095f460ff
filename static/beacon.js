/* consentmw beacon: loaded by banner.js only once a collecting purpose is granted; stores nothing in the browser */
((W, D, M, N, L, r) => {
  M._b = 1;
  const url = M._p + "/collect", Q = [], V = {}, ok = M._c, first = L.pathname,
    nav = performance.getEntriesByType("navigation")[0] || {};
  let path = first, timer, done, cls = 0, start = 0, last = 0, win = 0;
  // the longest duration per interaction id
  const I = {};

  // batches go with sendBeacon (fetch keepalive as fallback), 50 events at most per request
  const send = () => {
    clearTimeout(timer);
    ok() || (Q.length = 0);
    while (Q[0]) {
      const body = JSON.stringify({ events: Q.splice(0, 50) });
      N.sendBeacon(url, body) || fetch(url, { method: "POST", body, keepalive: true }).catch(() => 0);
    }
  };
  // nothing is queued without consent; a batch leaves after 3 s of quiet or when the page is hidden
  const add = e => {
    if (!ok()) return;
    Q.push({ path, ...e });
    clearTimeout(timer);
    timer = setTimeout(send, Q[19] ? 0 : 3000);
  };

  // page views of single-page apps (the server counts full page loads itself)
  const view = () => {
    if (L.pathname == path) return;
    const referrer = L.origin + path;
    path = L.pathname;
    add({ type: "pageview", referrer });
  };
  const push = history.pushState;
  history.pushState = function () {
    push.apply(this, arguments);
    view();
  };
  W.addEventListener("popstate", view);

  // navigation timing once the page has loaded, web vitals once it is hidden
  const timing = () => setTimeout(() => add({
    type: "timing", path: first, ttfb: r(nav.responseStart), dom_interactive: r(nav.domInteractive),
    dom_complete: r(nav.domComplete), load: r(nav.loadEventEnd),
  }));
  if (nav.responseStart) {
    V.ttfb = r(nav.responseStart);
    D.readyState == "complete" ? timing() : W.addEventListener("load", timing);
  }
  const observe = (type, f, o) => {
    try { new PerformanceObserver(l => l.getEntries().forEach(f)).observe({ type, buffered: true, ...o }); return 1 } catch (e) {}
  };
  observe("paint", e => e.name == "first-contentful-paint" && (V.fcp = r(e.startTime)));
  // definitions of web-vitals. LCP: the last entry (browsers stop them at the first input), sent at hide
  observe("largest-contentful-paint", e => V.lcp = r(e.startTime));
  // CLS: the largest session window (shifts less than 1 s apart, 5 s at most); 0 for a stable page
  observe("layout-shift", e => {
    if (e.hadRecentInput) return;
    if (e.startTime - last > 1000 || e.startTime - start > 5000) start = e.startTime, win = 0;
    last = e.startTime;
    V.cls = cls = Math.max(cls, +(win += e.value).toFixed(4));
  }) && (V.cls = cls);
  // INP: the slowest interaction, skipping one per 50 interactions (the worst with few)
  observe("event", e => {
    const k = e.interactionId;
    if (!k) return;
    I[k] = Math.max(I[k] || 0, e.duration);
    const d = Object.values(I).sort((a, b) => b - a);
    V.inp = r(d[d.length / 50 | 0]);
  }, { durationThreshold: 16 });
  const hide = () => {
    done || !ok() || !Object.values(V).some(v => v) || Q.push({ type: "vitals", path: first, ...V });
    done = 1;
    send();
  };
  D.addEventListener("visibilitychange", () => D.hidden && hide());
  W.addEventListener("pagehide", hide);

  // outbound link clicks
  D.addEventListener("click", e => {
    const a = e.target.closest("a[href]");
    if (a && a.protocol.startsWith("http") && a.host != L.host) {
      add({ type: "click", url: a.href });
      send();
    }
  }, true);

  // the server refuses a whole batch with a bad event, so bad names are refused here, loudly
  M.track = (name, props) => /^[\w .:\/-]{1,64}$/.test(name)
    ? add({ type: "custom", name, props: props || {} }) : console.warn("consentmw.track: invalid name", name);
  M._q.splice(0).forEach(a => M.track(...a));
  // withdrawing stops everything at once: the queue is dropped and nothing more is added
  M.on("change", () => ok() || (Q.length = 0));
})(window, document, window.consentmw, navigator, location, v => v > 0 && v < 6e5 ? Math.round(v) : undefined);

// consentmw scan: runs in every frame before the page's own scripts. Reports, with the
// caller's position, every cookie written by script (document.cookie, cookieStore), every
// localStorage / sessionStorage key and IndexedDB database created, and every
// <script data-consent> inserted (declared as type="text/plain", or executable).
(() => {
  const W = window;
  const send = (kind, data) => { try { const f = W.__cmwScan; f && f(kind, data); } catch (e) {} };
  // the first stack frame outside this file: "url:line"
  const where = () => {
    const lines = String(new Error().stack || "").split("\n");
    for (const l of lines) {
      const m = l.match(/((?:https?|file|blob:https?):\/\/[^\s()]+?):(\d+):\d+\)?\s*$/);
      if (m) return m[1] + ":" + m[2];
    }
    return "";
  };
  const cookie = Object.getOwnPropertyDescriptor(Document.prototype, "cookie");
  if (cookie && cookie.set) {
    Object.defineProperty(Document.prototype, "cookie", {
      configurable: true, enumerable: cookie.enumerable,
      get() { return cookie.get.call(this); },
      set(v) { send("cookie", { text: String(v).slice(0, 4096), where: where() }); cookie.set.call(this, v); },
    });
  }
  if (W.CookieStore && CookieStore.prototype.set) {
    const set = CookieStore.prototype.set;
    CookieStore.prototype.set = function (a, b) {
      const o = typeof a === "object" && a ? a : { name: a, value: b };
      send("cookiestore", { name: String(o.name), domain: o.domain || "", expires: o.expires || null, where: where() });
      return set.apply(this, arguments);
    };
  }
  const setItem = Storage.prototype.setItem;
  Storage.prototype.setItem = function (k) {
    let kind = "localStorage";
    try { if (this === W.sessionStorage) kind = "sessionStorage"; } catch (e) {}
    send("storage", { kind, key: String(k), where: where() });
    return setItem.apply(this, arguments);
  };
  if (W.IDBFactory) {
    const open = IDBFactory.prototype.open;
    IDBFactory.prototype.open = function (name) {
      send("indexeddb", { key: String(name), where: where() });
      return open.apply(this, arguments);
    };
  }
  // gated scripts: the declared ones (type="text/plain") once the document is parsed, the
  // executable ones as they are inserted (read a task later: the parser may not have
  // appended an inline script's text yet when the observer runs)
  const seen = new WeakSet();
  const report = n => {
    const t = (n.getAttribute("type") || "").trim().toLowerCase();
    const ran = !t || t === "module" || /^(text|application)\/(x-)?(java|ecma)script$/.test(t);
    send("gated", { purposes: n.getAttribute("data-consent"), src: n.src || "",
                    inline: n.src ? "" : (n.text || "").trim().slice(0, 60), ran });
  };
  const look = n => {
    if (n.nodeType !== 1 || n.tagName !== "SCRIPT" || !n.hasAttribute("data-consent") || seen.has(n)) return;
    if ((n.getAttribute("type") || "").trim().toLowerCase() === "text/plain") return;
    seen.add(n);
    setTimeout(() => report(n), 0);
  };
  new MutationObserver(ms => {
    for (const m of ms) for (const n of m.addedNodes) {
      look(n);
      n.querySelectorAll && n.querySelectorAll("script[data-consent]").forEach(look);
    }
  }).observe(document, { childList: true, subtree: true });
  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll('script[type="text/plain" i][data-consent]').forEach(n => { seen.add(n); report(n); });
  });
})();

"""Bounded HTTP load over 127.0.0.1: Debian's `wrk` when installed, else an asyncio client.

Both run for a fixed duration with a fixed number of keep-alive connections and report
requests/s, p50/p99 latency and how many answers were 2xx (wrk through a Lua script).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

_LUA = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; other = 0 end
function response(status, headers, body)
  if status >= 200 and status < 300 then ok = ok + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local o, x = 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); x = x + t:get("other") end
  io.write(string.format("LUA ok=%d other=%d requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d errors=%d\n",
    o, x, summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def _lua_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def load(url: str, *, duration: float, connections: int, headers: dict[str, str],
         method: str = "GET", body: bytes = b"", use_wrk: bool | None = None) -> dict[str, Any]:
    """Run one bounded load; returns rps, p50/p90/p99/p999/max_ms, ok (2xx), other, requests, tool."""
    if use_wrk is None:
        use_wrk = wrk_available()
    if use_wrk:
        return _wrk(url, duration, connections, headers, method, body)
    return asyncio.run(_py_load(url, duration, connections, headers, method, body))


def _wrk(url: str, duration: float, connections: int, headers: dict[str, str], method: str,
         body: bytes) -> dict[str, Any]:
    script = _LUA
    script += f"wrk.method = {_lua_string(method)}\n"
    if body:
        script += f"wrk.body = {_lua_string(body.decode())}\n"
    for k, v in headers.items():
        script += f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}\n"
    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "bench.lua"
        lua.write_text(script)
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
               "-s", str(lua), url]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    m = re.search(r"LUA ok=(\d+) other=(\d+) requests=(\d+) duration_us=(\d+) p50_us=(\d+) p90_us=(\d+) "
                  r"p99_us=(\d+) p999_us=(\d+) max_us=(\d+) errors=(\d+)", res.stdout)
    if res.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({res.returncode}): {res.stdout[-1500:]} {res.stderr[-1500:]}")
    ok, other, requests, dur_us, p50, p90, p99, p999, top, errors = map(int, m.groups())
    return {"tool": "wrk", "ok": ok, "other": other, "requests": requests, "errors": errors,
            "rps": requests / (dur_us / 1e6), "p50_ms": p50 / 1000, "p90_ms": p90 / 1000,
            "p99_ms": p99 / 1000, "p999_ms": p999 / 1000, "max_ms": top / 1000}


async def _py_load(url: str, duration: float, connections: int, headers: dict[str, str], method: str,
                   body: bytes) -> dict[str, Any]:
    m = re.match(r"http://([^/:]+):(\d+)(/.*)?$", url)
    if not m:
        raise ValueError(url)
    host, port, path = m.group(1), int(m.group(2)), m.group(3) or "/"
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if body:
        head.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
    latencies: list[float] = []
    counts = {"ok": 0, "other": 0, "errors": 0}
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            counts["errors"] += 1
            return
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                writer.write(request)
                status_line = await reader.readline()
                if not status_line:
                    counts["errors"] += 1
                    return
                status = int(status_line.split()[1])
                length = 0
                chunked = False
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    k, _, v = line.decode("latin-1").partition(":")
                    if k.lower() == "content-length":
                        length = int(v)
                    elif k.lower() == "transfer-encoding" and "chunked" in v.lower():
                        chunked = True
                if chunked:
                    while True:
                        size = int((await reader.readline()).strip(), 16)
                        await reader.readexactly(size + 2)
                        if size == 0:
                            break
                elif length:
                    await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                counts["ok" if 200 <= status < 300 else "other"] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            counts["errors"] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000 if latencies else float("nan")

    requests = counts["ok"] + counts["other"]
    return {"tool": "python-asyncio", "ok": counts["ok"], "other": counts["other"], "requests": requests,
            "errors": counts["errors"], "rps": requests / elapsed, "p50_ms": pct(50), "p90_ms": pct(90),
            "p99_ms": pct(99), "p999_ms": pct(99.9), "max_ms": latencies[-1] * 1000 if latencies else float("nan")}

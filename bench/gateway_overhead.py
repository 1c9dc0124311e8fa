"""The gateway's own cost: Podium's gateway and nginx in front of an upstream that answers instantly.

The upstream is an nginx that returns a canned chat completion (and a canned stream), so
every millisecond and every CPU second measured is the proxy's, not an engine's. Both
proxies run on one core (CPU 0); the upstream and the load generators share the others.
Podium's gateway runs as in the appliance: a key with RPM and TPM limits (so admission
goes through the store), metering to its SQLite store and Prometheus metrics.

- added latency: wrk with one connection, non-streamed, p50 and p99 minus direct's;
- added TTFT: one stream at a time, first content event, p50 minus direct's;
- ceiling: wrk with 32 kept-alive connections for a bounded time; req/s and the proxy's
  CPU µs per request, read from /proc for the proxy's processes.

wrk (apt package wrk) speaks HTTP/1.1 as SDKs do; ApacheBench's HTTP/1.0 keep-alive is
one that uvicorn does not honour, so it would measure a new connection per request.

Figures are printed with their ratio to nginx measured in the same run; rounds are
interleaved so a slow spell of the shared host touches both alike.

    .venv/bin/python bench/gateway.py --instant
    .venv/bin/python bench/gateway_overhead.py --rounds 3 --json out.json
    .venv/bin/python bench/gateway.py --instant --workers 2   # and a gateway of 2 workers
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from gateway import PROMPT, Stack, Target, finish, pct, stack

MODEL = "tiny"
STREAM_MODEL = "tiny-stream"  # served by the upstream under /stream
CANNED = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": MODEL,
    "choices": [{"index": 0, "finish_reason": "length",
                 "message": {"role": "assistant", "content": "Hello there, how are"}}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
}, separators=(",", ":"))


def _chunk(delta: dict[str, Any], usage: dict[str, int] | None = None) -> str:
    body: dict[str, Any] = {"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                            "created": 0, "model": MODEL,
                            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    if usage is not None:
        body["choices"] = []
        body["usage"] = usage
    return "data: " + json.dumps(body, separators=(",", ":")) + "\n\n"


STREAM = "".join([_chunk({"role": "assistant", "content": ""})]
                 + [_chunk({"content": word}) for word in ("Hello", " there", ",", " how")]
                 + [_chunk({}, {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}),
                    "data: [DONE]\n\n"])


def _quoted(text: str) -> str:
    """A string as an nginx config literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def instant_upstream(s: Stack, cpus: set[int] | None) -> str:
    """An nginx answering every completion with CANNED, and under /stream with STREAM."""
    port = s.nginx_server("upstream", f"""
    location ~ /health$ {{ default_type application/json; return 200 '{{"status":"ok"}}'; }}
    location /stream/ {{ default_type text/event-stream; return 200 {_quoted(STREAM)}; }}
    location / {{ default_type application/json; return 200 {_quoted(CANNED)}; }}""", cpus)
    return f"http://127.0.0.1:{port}"


def nginx_proxy(s: Stack, upstream: str, cpus: set[int] | None) -> Target:
    """nginx as a plain reverse proxy, keeping upstream connections alive as the gateway does."""
    port = s.nginx_server("proxy", """
    location / {
      proxy_pass http://instant;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }""", cpus, http=f"upstream instant {{ server {upstream.removeprefix('http://')};"
                          " keepalive 64; }")
    return Target("nginx", f"http://127.0.0.1:{port}/v1", MODEL)


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and its children (nginx's worker), all threads."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def first_tokens(target: Target, count: int, max_s: float) -> list[float]:
    """Time to the first content event of `count` streams, one at a time."""
    # The upstream streams under /stream; the gateway names that replica by its model.
    base = (target.base if target.name.startswith("podium")
            else target.base.replace("/v1", "/stream/v1"))
    body = {"model": STREAM_MODEL, "messages": PROMPT, "max_tokens": 4, "stream": True}
    headers = {"Authorization": f"Bearer {target.key}"}
    out: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        deadline = time.perf_counter() + max_s
        for i in range(count + 10):
            if time.perf_counter() > deadline:
                break
            start = time.perf_counter()
            first = None
            async with session.post(base + "/chat/completions", json=body,
                                    headers=headers) as resp:
                async for line in resp.content:
                    if first is None and b'"content":"' in line and b'"content":""' not in line:
                        first = time.perf_counter()
                if resp.status != 200 or first is None:
                    raise RuntimeError(f"{target.name} answered HTTP {resp.status} without text")
            if i >= 10:  # the first ones warm up
                out.append(first - start)
    return out


def wrk(target: Target, script: Path, connections: int, seconds: float,
        cpus: set[int] | None) -> dict[str, float]:
    """wrk (HTTP/1.1, kept-alive connections) posting one completion over and over."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
           "-H", f"Authorization: Bearer {target.key}", "-s", str(script),
           target.base + "/chat/completions"]
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    out = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pin, check=False).stdout
    return {"rps": _field(out, r"Requests/sec:\s+([\d.]+)"),
            "n": _field(out, r"(\d+) requests in"),
            "p50_ms": _ms(_field(out, r"50%\s+([\d.]+\w+)", unit=True)),
            "p99_ms": _ms(_field(out, r"99%\s+([\d.]+\w+)", unit=True)),
            "non_2xx": _field(out, r"Non-2xx or 3xx responses:\s+(\d+)", "0")
            + _field(out, r"Socket errors:.*?(\d+)", "0")}


def ceiling(target: Target, pid: int | None, script: Path, connections: int, seconds: float,
            cpus: set[int] | None) -> dict[str, float]:
    """Requests per second with `connections` kept-alive connections, and the proxy's CPU each."""
    before = cpu_seconds(pid) if pid else 0.0
    cell = wrk(target, script, connections, seconds, cpus)
    used = (cpu_seconds(pid) if pid else 0.0) - before
    cell["cpu_us"] = used / cell["n"] * 1e6 if pid and cell["n"] else 0.0
    return cell


def wrk_script(path: Path) -> Path:
    body = json.dumps({"model": MODEL, "messages": PROMPT, "max_tokens": 4})
    path.write_text(f"wrk.method = \"POST\"\nwrk.body = {_lua(body)}\n"
                    "wrk.headers[\"Content-Type\"] = \"application/json\"\n")
    return path


def _lua(text: str) -> str:
    return "[==[" + text + "]==]"


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _field(text: str, pattern: str, default: str | None = None, unit: bool = False) -> Any:
    found = re.search(pattern, text)
    if found is None:
        if default is not None:
            return float(default)
        raise RuntimeError(f"wrk printed no {pattern!r}:\n{text[-2000:]}")
    return found.group(1) if unit else float(found.group(1))


def report(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'target':8} {'p50 ms':>7} {'p99 ms':>7} {'+p50':>6} {'+p99':>6} {'TTFT':>6}"
             f" {'+TTFT':>6} {'req/s':>8} {'CPU µs/req':>10} {'rps/nginx':>9} {'cpu/nginx':>9}"]
    direct, nginx = results["direct"], results.get("nginx")
    for name, r in results.items():
        lines.append(
            f"{name:8} {r['p50_ms']:7.3f} {r['p99_ms']:7.3f}"
            f" {r['p50_ms'] - direct['p50_ms']:6.3f} {r['p99_ms'] - direct['p99_ms']:6.3f}"
            f" {r['ttft_ms']:6.3f} {r['ttft_ms'] - direct['ttft_ms']:6.3f}"
            f" {r['rps']:8.0f} {r['cpu_us']:10.0f}"
            f" {_ratio(r['rps'], nginx and nginx['rps']):>9}"
            f" {_ratio(r['cpu_us'], nginx and nginx['cpu_us']):>9}")
    many = next((name for name in results if name.startswith("podium-")), None)
    if many is not None and "podium" in results:
        n = int(many.removeprefix("podium-").removesuffix("w"))
        scale = results[many]["rps"] / results["podium"]["rps"]
        lines.append(f"\n{n} workers on {os.cpu_count()} CPUs (shared with the upstream and wrk):"
                     f" {scale:.2f}x the ceiling of one worker (target >= {0.8 * n:.1f}x),"
                     f" {results[many]['cpu_us']:.0f} µs CPU per request against"
                     f" {results['podium']['cpu_us']:.0f}")
    if "podium" in results:
        p = results["podium"]
        added50 = p["p50_ms"] - direct["p50_ms"]
        added99 = p["p99_ms"] - direct["p99_ms"]
        ttft = p["ttft_ms"] - direct["ttft_ms"]
        lines.append("\ngateway targets (instant upstream)")
        for what, figure, met in (
            ("added p50, one at a time <= 0.5 ms", f"{added50:.3f} ms", added50 <= 0.5),
            ("added p99, one at a time <= 1.5 ms", f"{added99:.3f} ms", added99 <= 1.5),
            ("added TTFT p50 <= 0.5 ms", f"{ttft:.3f} ms", ttft <= 0.5),
            ("ceiling on one core >= 2400 req/s (3x the 800 of the first round)",
             f"{p['rps']:.0f} req/s, {p['cpu_us']:.0f} µs CPU each", p["rps"] >= 2400),
        ):
            lines.append(f"  {'met    ' if met else 'NOT MET'}  {what}: {figure}")
    return "\n".join(lines)


def _ratio(value: float, base: float | None) -> str:
    return "-" if not base else f"{value / base:.1f}x"


def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    cpus = sorted(os.sched_getaffinity(0))
    proxy_cpus = {cpus[0]}
    rest = set(cpus[1:]) or proxy_cpus
    from podium.services.gateway.keys import KeySpec

    with stack(args.keep, proxy_cpus, rest) as s:
        upstream = instant_upstream(s, rest)
        targets: list[tuple[Target, int | None]] = [(Target("direct", upstream + "/v1", MODEL), None)]
        if "podium" not in args.skip:
            # Limits far above what the run can reach: admission still counts every request.
            spec = KeySpec(name="bench", rpm=10**9, tpm=10**12)
            targets.append((s.podium(upstream, MODEL, spec, {STREAM_MODEL: upstream + "/stream"}),
                            s.procs[-1].pid))
        if args.workers > 1 and "podium" not in args.skip:
            # N workers may use every CPU; the upstream and wrk then compete with them.
            spec = KeySpec(name="bench", rpm=10**9, tpm=10**12)
            targets.append((s.podium(upstream, MODEL, spec, {STREAM_MODEL: upstream + "/stream"},
                                     workers=args.workers, cpus=set(cpus),
                                     name=f"podium-{args.workers}w"), s.procs[-1].pid))
        if "nginx" not in args.skip:
            targets.append((nginx_proxy(s, upstream, proxy_cpus), s.procs[-1].pid))
        os.sched_setaffinity(0, rest)  # the load generator, off the proxies' core
        script = wrk_script(s.root / "completion.lua")
        one: dict[str, list[dict[str, float]]] = {t.name: [] for t, _ in targets}
        ttft: dict[str, list[float]] = {t.name: [] for t, _ in targets}
        stream_cpu: dict[str, list[tuple[float, int]]] = {t.name: [] for t, _ in targets}
        many: dict[str, list[dict[str, float]]] = {t.name: [] for t, _ in targets}
        share = args.seconds / args.rounds
        for _ in range(args.rounds):
            for t, pid in targets:
                one[t.name].append(wrk(t, script, 1, share, rest))
                before = cpu_seconds(pid) if pid else 0.0
                firsts = asyncio.run(first_tokens(t, args.streams // args.rounds, share))
                ttft[t.name] += firsts
                # The warm-up streams count too: ten more than the figures.
                stream_cpu[t.name].append(((cpu_seconds(pid) if pid else 0.0) - before,
                                           len(firsts) + 10))
                many[t.name].append(ceiling(t, pid, script, args.connections, share, rest))
        results: dict[str, dict[str, Any]] = {}
        for t, _pid in targets:
            cells = many[t.name]
            n = sum(c["n"] for c in cells)
            results[t.name] = {
                # wrk reports percentiles per run: the median of the rounds' figures.
                "p50_ms": statistics.median(c["p50_ms"] for c in one[t.name]),
                "p99_ms": statistics.median(c["p99_ms"] for c in one[t.name]),
                "ttft_ms": pct(ttft[t.name], 0.5) * 1000, "streams": len(ttft[t.name]),
                "stream_cpu_us": (sum(c for c, _ in stream_cpu[t.name])
                                  / max(1, sum(n for _, n in stream_cpu[t.name])) * 1e6),
                "rps": sum(c["rps"] for c in cells) / len(cells),
                "cpu_us": sum(c["cpu_us"] * c["n"] for c in cells) / n if n else 0.0,
                "non_2xx": sum(c["non_2xx"] for c in cells + one[t.name]),
            }
            r = results[t.name]
            print(f"{t.name:8} p50 {r['p50_ms']:.3f} ms p99 {r['p99_ms']:.3f} ms"
                  f" TTFT {r['ttft_ms']:.3f} ms ({r['stream_cpu_us']:.0f} µs CPU per stream)"
                  f" {r['rps']:.0f} req/s {r['cpu_us']:.0f} µs/req"
                  + (f" ({r['non_2xx']:.0f} non-2xx)" if r["non_2xx"] else ""), file=sys.stderr)
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=15.0,
                   help="per target and kind (one at a time, streams, ceiling), at most")
    p.add_argument("--streams", type=int, default=600, help="one at a time, per target")
    p.add_argument("--connections", type=int, default=32, help="for the ceiling")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--skip", default="", help="comma-separated: podium,nginx")
    p.add_argument("--workers", type=int, default=1,
                   help="also measure a gateway of this many worker processes on every CPU")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--keep", action="store_true", help="keep logs and configs")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.skip = set(filter(None, args.skip.split(",")))
    args.rounds = max(1, args.rounds)
    before = os.getloadavg()[0]
    results = run(args)
    print("upstream: nginx with a canned completion; proxies on CPU 0, upstream and load on"
          " the others")
    finish(before, "", report(results), results, args.json)


if __name__ == "__main__":
    main()

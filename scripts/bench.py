#!/usr/bin/env python3
"""Sluice's proxy benchmark, driven by scripts/bench.sh.

For each protocol (TTHeader, Framed, Kitex protobuf ping-pong; TTStream bidi; gRPC unary and
bidi) and payload size (1 KiB, 16 KiB), with 50 concurrent callers, it measures three paths in
alternating rounds (A B C A B C ...):

  direct   the load generator against `sluice echo`
  sluice   through `sluice run`
  haproxy  through HAProxy in `mode tcp` (an L4 relay: the floor for one extra hop)
  nginx    through nginx `grpc_pass` (an L7 gRPC peer; gRPC unary only)

Per path it reports the median throughput over the rounds, p50 and p99 of the median round, the
proxy's CPU seconds per 10k requests (utime+stime from /proc/PID/stat over the measured window)
and its peak RSS (VmHWM, a fresh proxy process per round). It also measures the resident memory
of each proxy with 1000 idle connections open.

Every proxy gets one thread: Sluice `worker_threads = 1`, HAProxy `nbthread 1`, nginx one
worker process.

Pinning: by default nothing is pinned and all processes share the 2 cores, as in the reference
measurements the performance targets come from. There the proxy's CPU is taken from the load
generator and the echo server, so throughput relative to direct mostly says how the proxy's cost
per request compares with theirs. With --pin, the load generator and the echo server run on CPU 0
and the proxy alone on CPU 1 (direct runs leave CPU 1 idle): throughput relative to direct then
says whether the proxy keeps up with its callers, as on a host of its own. Pinned results go to
their own section of docs/benchmarks.md.
"""

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "sluice")
ECHO_PORT = 19888
PROXY_PORT = 19700
GRPC_PORT = 19701
USER_HZ = os.sysconf("SC_CLK_TCK")

PROTOCOLS = [
    # name, bench args, path kind ("pingpong" uses the ttstream listener)
    ("TTHeader", ["--protocol", "pingpong", "--transport", "ttheader"], "tt"),
    ("Framed", ["--protocol", "pingpong", "--transport", "framed"], "tt"),
    ("Kitex protobuf", ["--protocol", "pingpong", "--transport", "ttheader", "--codec", "kitex-pb"], "tt"),
    ("TTStream bidi", ["--protocol", "ttstream", "--messages", "10"], "tt"),
    ("gRPC unary", ["--protocol", "grpc-unary"], "grpc"),
    ("gRPC bidi", ["--protocol", "grpc", "--messages", "10"], "grpc"),
]
SIZES = [1024, 16384]


PIN = False
SLUICE_THREADS = 1
BASELINE = None


def pinned(cpu, cmd):
    return (["taskset", "-c", str(cpu)] + cmd) if PIN else cmd


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / USER_HZ


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def wait_port(port, timeout=10):
    start = time.time()
    while time.time() - start < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


class Proc:
    def __init__(self, cmd, port, cwd=None):
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
        wait_port(port)

    @property
    def pid(self):
        return self.p.pid

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


# TOML appended to this build's config in A/B mode (--extra-config): a feature on against off.
EXTRA_CONFIG = ""
# [[routes]] tables put before the catch-all route of this build's config in A/B mode
# (--extra-routes): routes every request is matched against first.
EXTRA_ROUTES = ""
# The load generator sends a W3C traceparent (--traceparent).
TRACEPARENT = False


def start_sluice(tmp, binary=None, extra="", routes=""):
    cfg = os.path.join(tmp, "sluice.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{PROXY_PORT}"
cluster = "ttstream"
[[listeners]]
name = "grpc"
address = "127.0.0.1:{GRPC_PORT}"
cluster = "grpc"
{routes}
[[routes]]
service = "*"
downstream = "echo"
[downstreams.echo]
endpoints = ["127.0.0.1:{ECHO_PORT}"]
max_idle_per_endpoint = 256
[runtime]
worker_threads = {SLUICE_THREADS}
{extra}
""")
    p = Proc(pinned(1, [binary or BIN, "run", "--config", cfg]), PROXY_PORT)
    wait_port(GRPC_PORT)
    return p


def start_haproxy(tmp):
    cfg = os.path.join(tmp, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""
global
    maxconn 8000
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend pingpong
    bind 127.0.0.1:{PROXY_PORT}
    default_backend echo
frontend grpc
    bind 127.0.0.1:{GRPC_PORT}
    default_backend echo
backend echo
    server s1 127.0.0.1:{ECHO_PORT}
""")
    p = Proc(pinned(1, ["haproxy", "-db", "-f", cfg]), PROXY_PORT)
    wait_port(GRPC_PORT)
    return p


def start_nginx(tmp):
    cfg = os.path.join(tmp, "nginx.conf")
    with open(cfg, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8000; }}
http {{
    access_log off;
    http2_max_requests 100000000;
    keepalive_requests 100000000;
    client_body_temp_path {tmp}/nginx-body;
    server {{
        listen 127.0.0.1:{GRPC_PORT} http2;
        location / {{ grpc_pass grpc://127.0.0.1:{ECHO_PORT}; }}
    }}
}}
""")
    return Proc(pinned(1, ["nginx", "-c", cfg, "-p", tmp]), GRPC_PORT)


def bench(port, args, size, seconds, callers=50):
    cmd = pinned(0, [BIN, "bench", "--target", f"127.0.0.1:{port}", "--size", str(size),
                     "--concurrency", str(callers), "--duration", str(seconds), "--warmup", "0",
                     "--json"] + args)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not line:
        raise RuntimeError(f"bench failed: {out.stdout} {out.stderr}")
    return json.loads(line[-1])


def measure(kind, proto, size, seconds, tmp):
    """One round of one path: a fresh proxy, a short warm-up, then the measured window."""
    name, args, listener = proto
    proc = None
    if kind == "sluice":
        proc = start_sluice(tmp, extra=EXTRA_CONFIG, routes=EXTRA_ROUTES)
    elif kind == "baseline":
        proc = start_sluice(tmp, BASELINE)
    elif kind == "haproxy":
        proc = start_haproxy(tmp)
    elif kind == "nginx":
        proc = start_nginx(tmp)
    port = ECHO_PORT if kind == "direct" else (GRPC_PORT if listener == "grpc" else PROXY_PORT)
    # In A/B mode only this build's runs send a traceparent (the feature on); otherwise all do.
    if TRACEPARENT and (kind != "baseline" or not BASELINE):
        args = args + ["--traceparent"]
    try:
        bench(port, args, size, 1)
        c0 = cpu_seconds(proc.pid) if proc else 0.0
        r = bench(port, args, size, seconds)
        c1 = cpu_seconds(proc.pid) if proc else 0.0
        if proc:
            r["proxy_cpu_per_10k"] = (c1 - c0) / max(r["ok"], 1) * 10000
            r["proxy_peak_rss_kib"] = status_kib(proc.pid, "VmHWM")
        return r
    finally:
        if proc:
            proc.stop()


def idle_rss(kind, tmp, n=1000, repeats=3):
    """RSS before and after opening n connections that each made one call: the run with the
    median growth out of `repeats` fresh proxies (RSS moves in pages and with the allocator's
    trimming, so one run alone is noisy)."""
    runs = sorted((idle_rss_once(kind, tmp, n) for _ in range(repeats)), key=lambda r: r[1] - r[0])
    return runs[len(runs) // 2]


def idle_rss_once(kind, tmp, n):
    proc = start_sluice(tmp) if kind == "sluice" else start_haproxy(tmp)
    try:
        bench(PROXY_PORT, ["--protocol", "pingpong"], 64, 0.5, callers=4)
        time.sleep(0.3)
        before = status_kib(proc.pid, "VmRSS")
        # A TTHeader request each (a Kitex client's first call), then idle.
        req = bytes.fromhex(
            "0000002f1000000000000001000100000000"
            "80010001000000044563686f000000010c00010b00010000000568656c6c6f0000")
        socks = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", PROXY_PORT))
            s.sendall(req)
            socks.append(s)
        for s in socks:
            s.settimeout(5)
            s.recv(4096)
        time.sleep(0.5)
        after = status_kib(proc.pid, "VmRSS")
        for s in socks:
            s.close()
        return before, after
    finally:
        proc.stop()


def compare(a):
    """A/B: the proxy's CPU per request, this build against a baseline binary, in alternating
    rounds (baseline, this, baseline, this, ...) so drift on the machine hits both alike."""
    only = [o.strip().lower() for o in a.only.split(",") if o.strip()]
    protocols = [p for p in PROTOCOLS if not only or any(p[0].lower().startswith(o) for o in only)]
    sizes = [int(x) for x in a.sizes.split(",")] if a.sizes else ([1024] if a.quick else SIZES)
    tmp = tempfile.mkdtemp(prefix="sluice-bench-")
    echo = Proc(pinned(0, [BIN, "echo", "--listen", f"127.0.0.1:{ECHO_PORT}"]), ECHO_PORT)
    lines = [f"A/B against {BASELINE}: {a.rounds} alternating rounds of {a.seconds:g} s each,"
             " median proxy CPU s / 10k requests", "",
             "| protocol | size | baseline | this build | change | req/s baseline | req/s this |",
             "|---|---|---|---|---|---|---|"]
    try:
        for proto in protocols:
            for size in sizes:
                runs = {"baseline": [], "sluice": []}
                for _ in range(a.rounds):
                    for k in runs:
                        runs[k].append(measure(k, proto, size, a.seconds, tmp))
                cpu = {k: statistics.median(r["proxy_cpu_per_10k"] for r in rs) for k, rs in runs.items()}
                rps = {k: statistics.median(r["rps"] for r in rs) for k, rs in runs.items()}
                errors = sum(r["errors"] for rs in runs.values() for r in rs)
                line = (f'| {proto[0]} | {size // 1024} KiB | {cpu["baseline"]:.3f} | {cpu["sluice"]:.3f} | '
                        f'{(cpu["sluice"] / max(cpu["baseline"], 1e-9) - 1) * 100:+.1f}% | '
                        f'{fmt_rate(rps["baseline"])} | {fmt_rate(rps["sluice"])} |'
                        + (f" {errors} errors" if errors else ""))
                print(line, flush=True)
                lines.append(line)
    finally:
        echo.stop()
    print("\n".join(lines))


def fmt_rate(v):
    return f"{v / 1000:.1f}k"


def svg_chart(rows, path):
    """Grouped bars: throughput of each proxied path relative to direct, per protocol and size."""
    kinds = [("sluice", "#2b6cb0"), ("haproxy", "#999999"), ("nginx", "#c05621")]
    groups = [r for r in rows if "direct" in r["paths"]]
    bar, gap, group_gap, left, top, height = 14, 2, 22, 180, 30, 240
    width = left + len(groups) * (3 * (bar + gap) + group_gap) + 140
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + height + 120}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="18" font-size="13">Throughput relative to direct (1.0 = no loss)</text>']
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        y = top + height - t * height
        out.append(f'<line x1="{left - 5}" y1="{y:.0f}" x2="{width - 20}" y2="{y:.0f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 10}" y="{y + 4:.0f}" text-anchor="end">{t:.2f}</text>')
    x = left
    for r in groups:
        direct = r["paths"]["direct"]["rps"]
        for i, (k, color) in enumerate(kinds):
            if k in r["paths"]:
                ratio = min(r["paths"][k]["rps"] / direct, 1.2)
                h = ratio * height
                out.append(f'<rect x="{x + i * (bar + gap)}" y="{top + height - h:.0f}" width="{bar}" '
                           f'height="{h:.0f}" fill="{color}"><title>{k} {ratio:.2f}</title></rect>')
        label = f'{r["protocol"]} {r["size"] // 1024} KiB'
        cx = x + 1.5 * (bar + gap)
        out.append(f'<text transform="translate({cx:.0f},{top + height + 10}) rotate(45)">{label}</text>')
        x += 3 * (bar + gap) + group_gap
    for i, (k, color) in enumerate(kinds):
        out.append(f'<rect x="{left + i * 90}" y="{top + height + 95}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{left + i * 90 + 14}" y="{top + height + 104}">{k}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def machine():
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            cpu = m.group(1) if m else cpu
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    tools = []
    for cmd in (["haproxy", "-v"], ["nginx", "-v"], ["rustc", "--version"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True)
            tools.append((out.stdout + out.stderr).splitlines()[0])
        except OSError:
            pass
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}; " + "; ".join(tools)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--quick", action="store_true", help="1 KiB only, 2 rounds of 3 s")
    ap.add_argument("--sizes", default="",
                    help="comma-separated payload sizes in bytes (default 1024,16384; --quick: 1024)")
    ap.add_argument("--no-write", action="store_true", help="print, do not rewrite the docs")
    ap.add_argument("--pin", action="store_true",
                    help="pin the load generator and echo server to CPU 0, the proxy to CPU 1")
    ap.add_argument("--sluice-threads", type=int, default=1,
                    help="Sluice's [runtime] worker_threads (HAProxy and nginx run one thread)")
    ap.add_argument("--only", default="",
                    help="comma-separated protocol names (case-insensitive prefixes) to measure")
    ap.add_argument("--compare", metavar="BIN", default="",
                    help="A/B mode: alternate this build's proxy with another `sluice` binary (the"
                    " baseline) under the same load generator and echo server, and print the proxy"
                    " CPU per 10k requests of both; writes nothing")
    ap.add_argument("--traceparent", action="store_true",
                    help="the load generator sends a W3C traceparent with every request and stream"
                    " (in A/B mode: to this build only, the baseline gets none)")
    ap.add_argument("--extra-config", default="",
                    help="A/B mode: TOML appended to this build's config only (e.g. an [admin]"
                    " section, to measure metrics on against off with --compare on the same binary)")
    ap.add_argument("--extra-routes", default="",
                    help="A/B mode: [[routes]] tables put before the catch-all route of this build's"
                    " config only (e.g. a payload route on another service, to measure what it"
                    " costs the requests it does not match)")
    a = ap.parse_args()
    global EXTRA_CONFIG, EXTRA_ROUTES, TRACEPARENT
    EXTRA_CONFIG = a.extra_config.replace("\\n", "\n")
    EXTRA_ROUTES = a.extra_routes.replace("\\n", "\n")
    TRACEPARENT = a.traceparent
    if a.compare:
        global BASELINE
        BASELINE = os.path.abspath(a.compare)
        return compare(a)
    global PIN
    PIN = a.pin
    global SLUICE_THREADS
    SLUICE_THREADS = a.sluice_threads
    only = [o.strip().lower() for o in a.only.split(",") if o.strip()]
    protocols = [p for p in PROTOCOLS if not only or any(p[0].lower().startswith(o) for o in only)]
    sizes = [int(x) for x in a.sizes.split(",")] if a.sizes else ([1024] if a.quick else SIZES)
    rounds, seconds = (2, 3) if a.quick else (a.rounds, a.seconds)
    tmp = tempfile.mkdtemp(prefix="sluice-bench-")
    echo = Proc(pinned(0, [BIN, "echo", "--listen", f"127.0.0.1:{ECHO_PORT}"]), ECHO_PORT)
    rows = []
    try:
        for proto in protocols:
            for size in sizes:
                kinds = ["direct", "sluice", "haproxy"] + (["nginx"] if proto[0] == "gRPC unary" else [])
                runs = {k: [] for k in kinds}
                for _ in range(rounds):
                    for k in kinds:
                        runs[k].append(measure(k, proto, size, seconds, tmp))
                row = {"protocol": proto[0], "size": size, "paths": {}}
                for k, rs in runs.items():
                    rs.sort(key=lambda r: r["rps"])
                    med = rs[len(rs) // 2]
                    row["paths"][k] = {
                        "rps": statistics.median(r["rps"] for r in rs),
                        "p50_us": med["p50_us"],
                        "p99_us": med["p99_us"],
                        "errors": sum(r["errors"] for r in rs),
                        "cpu_per_10k": statistics.median(r.get("proxy_cpu_per_10k", 0) for r in rs),
                        "peak_rss_kib": max(r.get("proxy_peak_rss_kib", 0) for r in rs),
                    }
                rows.append(row)
                print(json.dumps(row), flush=True)
        idle = {k: idle_rss(k, tmp) for k in ("sluice", "haproxy")}
    finally:
        echo.stop()

    lines = [f"Measured by `scripts/bench.sh` on {time.strftime('%Y-%m-%d')}: {machine()}.",
             f"{rounds} rounds of {seconds:g} s per path, alternating direct, Sluice, HAProxy (and nginx),"
             " 50 concurrent callers (streams: 10 messages each), every echo checked. "
             + ("Pinned: load generator and echo server on CPU 0, the proxy alone on CPU 1."
                if PIN else "No pinning: load generator, echo server and proxy share both cores,"
                " as in the reference measurements the targets come from.")
             + f" Sluice runs with worker_threads = {SLUICE_THREADS}, HAProxy with nbthread 1,"
             " nginx with one worker.", "",
             "| protocol | size | path | req/s (median) | vs direct | p50 | p99 | proxy CPU s / 10k | proxy peak RSS | errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        direct = r["paths"]["direct"]["rps"]
        for k, p in r["paths"].items():
            cpu = f'{p["cpu_per_10k"]:.3f}' if k != "direct" else ""
            rss = f'{p["peak_rss_kib"] / 1024:.1f} MiB' if k != "direct" else ""
            lines.append(f'| {r["protocol"]} | {r["size"] // 1024} KiB | {k} | {fmt_rate(p["rps"])} | '
                         f'{p["rps"] / direct:.2f} | {p["p50_us"]} us | {p["p99_us"]} us | {cpu} | {rss} | {p["errors"]} |')
    lines.append("")
    lines.append("Ratios against the L4 relay (HAProxy) from the same run:")
    lines.append("")
    lines.append("| protocol | size | Sluice CPU / relay CPU | Sluice p99 / relay p99 | Sluice throughput / direct |")
    lines.append("|---|---|---|---|---|")
    for r in rows:
        s, h, d = r["paths"]["sluice"], r["paths"]["haproxy"], r["paths"]["direct"]
        lines.append(f'| {r["protocol"]} | {r["size"] // 1024} KiB | {s["cpu_per_10k"] / max(h["cpu_per_10k"], 1e-9):.2f} | '
                     f'{s["p99_us"] / max(h["p99_us"], 1):.2f} | {s["rps"] / d["rps"]:.2f} |')
    lines.append("")
    lines.append("Resident memory with 1000 idle connections (each made one TTHeader call first;"
                 " median of 3 fresh proxies):")
    lines.append("")
    lines.append("| proxy | RSS before | RSS with 1000 connections | per connection |")
    lines.append("|---|---|---|---|")
    for k, (b, after) in idle.items():
        lines.append(f"| {k} | {b / 1024:.1f} MiB | {after / 1024:.1f} MiB | {(after - b) / 1000:.1f} KiB |")
    lines.append("")
    lines.append("![throughput relative to direct](bench.svg)")
    text = "\n".join(lines)
    print(text)
    if not a.no_write:
        if not PIN:
            svg_chart(rows, os.path.join(ROOT, "docs", "bench.svg"))
        else:
            text = text.replace("![throughput relative to direct](bench.svg)", "").rstrip()
        path = os.path.join(ROOT, "docs", "benchmarks.md")
        with open(path) as f:
            doc = f.read()
        tag = "bench-pinned" if PIN else "bench"
        start, end = f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"
        if start in doc and end in doc:
            doc = doc[:doc.index(start) + len(start)] + "\n" + text + "\n" + doc[doc.index(end):]
        else:
            title = "Pinned: the proxy on a core of its own" if PIN else "Proxy comparison (scripts/bench.sh)"
            doc += f"\n## {title}\n\n{start}\n{text}\n{end}\n"
        with open(path, "w") as f:
            f.write(doc)


if __name__ == "__main__":
    sys.exit(main())

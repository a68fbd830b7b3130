"""Bounded load test on loopback: N concurrent clients against /items/{id}/similar and /users/{id}/recommendations.

Starts `fashionrec serve` in its own process (a real server), waits for /health, then sends a fixed number of
requests per endpoint from `--clients` concurrent connections and prints p50/p95/p99 latency, throughput, errors
and 500s. Only 127.0.0.1 is ever contacted; every loop is bounded in count and time.

    .venv/bin/python benchmarks/load_test.py --data ../shared/data/hm --clients 50 --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time

import httpx
import numpy as np


def wait_ready(url: str, proc: subprocess.Popen, timeout: float, poll: float = 1.0) -> None:
    """Wait until the server at `url` answers /health (exit if it dies or `timeout` seconds pass)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    raise SystemExit("server did not become ready in time")


def stop(proc: subprocess.Popen) -> None:
    """Terminate the server, killing it if it does not exit within 20 s."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


async def _get(reader, writer, path: str) -> int:
    """One HTTP/1.1 keep-alive GET on a raw connection. A minimal client on purpose: the load generator shares the
    2 cores with the server, and httpx spends several times the server's CPU per request."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    if length:
        await reader.readexactly(length)
    return status


async def run_endpoint(url: str, paths: list[str], clients: int, time_limit: float) -> dict:
    lat, errors, five_hundreds = [], 0, 0
    queue = list(paths)
    deadline = time.time() + time_limit
    host, port = url.split("//")[1].split(":")

    async def worker():
        nonlocal errors, five_hundreds
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while queue and time.time() < deadline:
                path = queue.pop()
                t = time.perf_counter()
                try:
                    status = await asyncio.wait_for(_get(reader, writer, path), 30)
                    lat.append(time.perf_counter() - t)
                    five_hundreds += status >= 500
                    errors += status != 200
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(clients)])
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {"n": len(lat), "errors": errors, "5xx": five_hundreds, "rps": len(lat) / wall,
            "p50": np.percentile(ms, 50), "p95": np.percentile(ms, 95), "p99": np.percentile(ms, 99)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/hm")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=2000, help="per endpoint")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--startup-timeout", type=float, default=1200)
    ap.add_argument("--time-limit", type=float, default=120, help="seconds per endpoint at most")
    args = ap.parse_args()
    if not os.path.isdir(args.data):
        print(f"skipped: {args.data} not found")
        return 0
    url = f"http://127.0.0.1:{args.port}"
    exe = os.path.join(os.path.dirname(sys.executable), "fashionrec")
    t0 = time.time()
    proc = subprocess.Popen([exe, "-q", "serve", "--data", args.data, "--port", str(args.port)])
    try:
        wait_ready(url, proc, args.startup_timeout)
        print(f"server ready in {time.time() - t0:.1f}s")
        items = [c["id"] for c in httpx.get(url + "/search/items", params={"q": "0", "limit": 100}).json() if c["image_url"]]
        users = [c["id"] for c in httpx.get(url + "/customers", params={"limit": 1000}).json()]
        rng = random.Random(0)
        endpoints = {
            "GET /items/{id}/similar": [f"/items/{rng.choice(items)}/similar?k=12" for _ in range(args.requests)],
            "GET /users/{id}/recommendations": [f"/users/{rng.choice(users)}/recommendations?k=12" for _ in range(args.requests)],
        }
        print(f"{args.clients} concurrent clients, {args.requests} requests per endpoint, loopback only")
        print(f"{'endpoint':34s} {'n':>6s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'req/s':>8s} {'errors':>7s} {'5xx':>5s}")
        worst = 0.0
        total_err = 0
        for name, paths in endpoints.items():
            r = asyncio.run(run_endpoint(url, paths, args.clients, args.time_limit))
            worst = max(worst, r["p99"])
            total_err += r["errors"] + r["5xx"]
            print(f"{name:34s} {r['n']:6d} {r['p50']:8.2f} {r['p95']:8.2f} {r['p99']:8.2f} {r['rps']:8.1f} {r['errors']:7d} {r['5xx']:5d}")
        print(f"worst p99 {worst:.2f} ms, errors {total_err}")
    finally:
        stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

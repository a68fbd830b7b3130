"""Slow clients: `--clients` uploads (POST /search/image) that send their headers, then one body byte every
`--trickle` seconds, each from its own loopback address (127.0.x.y, so the per-client upload cap does not refuse
them), while one client polls GET /health every 10 ms on a keep-alive connection.

Prints the /health latencies (p50/p99/max) while the slow clients are connected, how the server answered them
(408 expected), when it closed their connections (seconds after each connected: the server's --body-timeout is
the limit) and how many were still open `--grace` seconds after the limit.

Starts `fashionrec serve` (the real CLI: uvicorn + uvloop + httptools) in its own process on 127.0.0.1. Bounded:
every connection and read has a timeout; figures, never assertions.

    .venv/bin/python benchmarks/slow_clients.py [--clients 1000] [--body-timeout 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from load_test import stop, wait_ready  # benchmarks/ is on sys.path when a script in it runs
from upload_stall import free_port, poll_health, synthetic_shop


async def slow_client(n: int, port: int, trickle: float, limit: float, out: list) -> None:
    src = f"127.0.{1 + n // 250}.{1 + n % 250}"
    t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0)), timeout=60
        )
    except (OSError, TimeoutError) as e:
        out.append(("connect " + type(e).__name__, None))
        return
    head = (
        "POST /search/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Content-Length: 200000\r\n\r\n--b\r\n"
    )
    writer.write(head.encode())

    async def drip():
        try:
            while True:
                await asyncio.sleep(trickle)
                writer.write(b"x")
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            return

    task = asyncio.create_task(drip())
    try:
        reply = await asyncio.wait_for(reader.read(), timeout=limit + 120)  # until the server closes
        status = reply.split(b" ", 2)[1].decode() if reply.startswith(b"HTTP/1.1 ") else "closed, no answer"
        out.append((status, time.perf_counter() - t0))
    except TimeoutError:
        out.append(("still open", None))
    except OSError as e:
        out.append((type(e).__name__, time.perf_counter() - t0))
    finally:
        task.cancel()
        writer.close()


async def run_clients(port: int, n: int, trickle: float, limit: float, out: list) -> None:
    await asyncio.gather(*(slow_client(i, port, trickle, limit, out) for i in range(n)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--body-timeout", type=float, default=30.0)
    ap.add_argument("--trickle", type=float, default=5.0, help="seconds between two body bytes of a slow client")
    ap.add_argument("--grace", type=float, default=2.0)
    ap.add_argument("--data", help="H&M-layout folder (default: a synthetic 30-item shop)")
    ap.add_argument("--pythonpath", help="run the server from this source folder (compare another version)")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.clients + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))

    tmp = tempfile.TemporaryDirectory(prefix="slow-clients-")
    data = Path(args.data) if args.data else synthetic_shop(Path(tmp.name) / "hm")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    cmd = [sys.executable, "-m", "fashionrec.cli", "--workspace", str(Path(tmp.name) / "ws"), "serve", "--data"]
    cmd += [str(data), "--port", str(port), "--body-timeout", f"{args.body_timeout:g}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(url, proc, 900, poll=0.5)
        base: list[float] = []
        halt = threading.Event()
        poller = threading.Thread(target=poll_health, args=(port, halt, base), daemon=True)
        poller.start()
        time.sleep(2)
        halt.set()
        poller.join(30)
        lat: list[float] = []
        halt = threading.Event()
        poller = threading.Thread(target=poll_health, args=(port, halt, lat), daemon=True)
        poller.start()
        out: list = []
        t0 = time.perf_counter()
        asyncio.run(run_clients(port, args.clients, args.trickle, args.body_timeout, out))
        wall = time.perf_counter() - t0
        halt.set()
        poller.join(30)
    finally:
        stop(proc)
    b = np.array(base) * 1000
    ms = np.array(lat) * 1000
    closed = np.array([t for _, t in out if t is not None])
    statuses: dict[str, int] = {}
    for s, _ in out:
        statuses[s] = statuses.get(s, 0) + 1
    late = int((closed > args.body_timeout + args.grace).sum()) + statuses.get("still open", 0)
    print(f"server --body-timeout {args.body_timeout:g}s; {args.clients} slow clients (1 byte per {args.trickle:g}s)")
    print(f"/health alone: {len(b)} requests, p50 {np.percentile(b, 50):.1f} ms, p99 {np.percentile(b, 99):.1f} ms")
    print(
        f"/health with the slow clients connected: {len(ms)} requests, p50 {np.percentile(ms, 50):.1f} ms, "
        f"p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms"
    )
    print(f"answers to the slow clients: {dict(sorted(statuses.items()))}")
    if len(closed):
        print(
            f"connections closed by the server after: median {np.median(closed):.1f}s, max {closed.max():.1f}s; "
            f"open more than {args.grace:g}s past the limit: {late}; all done in {wall:.1f}s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Bounded load test on loopback: N concurrent clients against /items/{id}/similar and /users/{id}/recommendations.

Starts the server in its own process (`fashionrec serve`, with
`--workers`), from `--workspace`: if its artifacts are not built yet, a first (cold) start builds them and is timed
and stopped; then a second start is timed until /health answers (`warm start-up S.S s`). Then it sends a fixed number
of requests per endpoint from `--clients` concurrent connections and prints p50/p95/p99 latency, throughput, errors
and 500s, and the memory of every server process (RSS, and PSS: shared pages counted once across workers).
The server runs on `--server-cpus` and this load generator on `--client-cpus` (sched_setaffinity), so the
generator does not steal the server's core. Only 127.0.0.1 is ever contacted; every loop is bounded.

    .venv/bin/python benchmarks/load_test.py --data ../shared/data/hm --workspace /tmp/ws --clients 50 --workers 1
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
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(clients)])
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {
        "n": len(lat),
        "errors": errors,
        "5xx": five_hundreds,
        "rps": len(lat) / wall,
        "p50": np.percentile(ms, 50),
        "p95": np.percentile(ms, 95),
        "p99": np.percentile(ms, 99),
    }


def _cpus(text: str) -> set[int]:
    return {int(c) for c in text.split(",") if c.strip()} & os.sched_getaffinity(0)


def start_server(args, url: str) -> tuple[subprocess.Popen, float]:
    """Start the server on its cores; (process, seconds until /health answered)."""
    cmd = [sys.executable, "-m", "fashionrec.cli", "-q"] + (["--workspace", args.workspace] if args.workspace else [])
    cmd += ["serve", "--data", args.data, "--port", str(args.port), "--workers", str(args.workers)]
    cpus = _cpus(args.server_cpus) or None
    t0 = time.time()
    # the affinity is set in the child before exec: uvicorn's worker processes inherit it
    proc = subprocess.Popen(cmd, preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    wait_ready(url, proc, args.startup_timeout, poll=0.1)
    return proc, time.time() - t0


def memory_lines(root_pid: int) -> list[str]:
    """RSS and PSS (shared pages divided among the processes that map them) of the server and its workers."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop(0)
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                fields = {ln.split(":")[0]: int(ln.split()[1]) for ln in f if ln.split(":")[0] in ("Rss", "Pss")}
            with open(f"/proc/{pid}/cmdline") as f:
                what = "worker" if "multiprocessing" in f.read() else "server"
        except OSError:
            continue
        out.append(
            f"  pid {pid} ({what}): RSS {fields.get('Rss', 0) / 1024:.0f} MiB, PSS {fields.get('Pss', 0) / 1024:.0f} MiB"
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/hm")
    ap.add_argument("--workspace", default=None, help="the server's workspace (default: fashionrec's default)")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=2000, help="per endpoint")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--server-cpus", default="0", help="cores of the server (and its workers); '' = any")
    ap.add_argument("--client-cpus", default="1", help="cores of this load generator; '' = any")
    ap.add_argument("--startup-timeout", type=float, default=3600)
    ap.add_argument("--time-limit", type=float, default=120, help="seconds per endpoint at most")
    args = ap.parse_args()
    if not os.path.isdir(args.data):
        print(f"skipped: {args.data} not found")
        return 0
    url = f"http://127.0.0.1:{args.port}"
    proc, cold = start_server(args, url)  # builds the artifacts if the workspace lacks them
    stop(proc)
    print(f"first start-up {cold:.1f} s (cold if the workspace had no serving artifacts)")
    proc, warm = start_server(args, url)
    print(
        f"warm start-up {warm:.1f} s (process start until /health answers; {args.workers} worker(s), "
        f"server on cpus {args.server_cpus or 'any'})"
    )
    client_cpus = _cpus(args.client_cpus)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    try:
        t0 = time.time()
        while httpx.get(url + "/health", timeout=10).json().get("image_search") == "loading" and time.time() - t0 < 600:
            time.sleep(0.5)  # torch loads beside the server after start-up; measure latency once it is done
        print(f"image search ready {time.time() - t0 + warm:.1f} s after the start")
        items = [
            c["id"] for c in httpx.get(url + "/search/items", params={"q": "0", "limit": 100}).json() if c["image_url"]
        ]
        users = [c["id"] for c in httpx.get(url + "/customers", params={"limit": 1000}).json()]
        rng = random.Random(0)
        endpoints = {
            "GET /items/{id}/similar": [f"/items/{rng.choice(items)}/similar?k=12" for _ in range(args.requests)],
            "GET /users/{id}/recommendations": [
                f"/users/{rng.choice(users)}/recommendations?k=12" for _ in range(args.requests)
            ],
        }
        print(f"{args.clients} concurrent clients, {args.requests} requests per endpoint, loopback only")
        print(
            f"{'endpoint':34s} {'n':>6s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'req/s':>8s} {'errors':>7s} {'5xx':>5s}"
        )
        worst = 0.0
        total_err = 0
        for name, paths in endpoints.items():
            r = asyncio.run(run_endpoint(url, paths, args.clients, args.time_limit))
            worst = max(worst, r["p99"])
            total_err += r["errors"] + r["5xx"]
            print(
                f"{name:34s} {r['n']:6d} {r['p50']:8.2f} {r['p95']:8.2f} {r['p99']:8.2f} {r['rps']:8.1f} {r['errors']:7d} {r['5xx']:5d}"
            )
        print("server memory after the load:")
        print("\n".join(memory_lines(proc.pid)))
        print(f"worst p99 {worst:.2f} ms, errors {total_err}")
    finally:
        stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

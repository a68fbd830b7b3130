"""Does the server stay responsive while it processes large uploads? /health latency during 3 concurrent uploads.

Starts `fashionrec serve` (the real CLI: uvicorn + uvloop + httptools) in its own process on 127.0.0.1, then per
round posts `--uploads` large photos to POST /search/image at once while one client polls GET /health every
10 ms on a keep-alive connection, and prints p50/p99/max of those /health latencies plus each upload's status and
time. Two kinds of upload:

- `heavy`: PNGs just under the server's pixel cap (6,300 x 6,300 = 39.7 Mpx, ~40 KB each): accepted, decoded and
  embedded, the most CPU a legal upload can cost;
- `audit`: the audit's 64-megapixel PNGs of a few KB (refused from their header now: 413).

Bounded: a fixed number of rounds, every request with a timeout. Figures, never assertions.

    .venv/bin/python benchmarks/upload_stall.py                      # synthetic 30-item shop
    .venv/bin/python benchmarks/upload_stall.py --data ../shared/data/hm
    .venv/bin/python benchmarks/upload_stall.py --pythonpath /tmp/old/src   # the same against another checkout
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from load_test import stop, wait_ready  # benchmarks/ is on sys.path when a script in it runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_shop(root: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from serving_helpers import make_shop  # the tests' 30-item shop: real JPEGs, articles, transactions

    return make_shop(root)[0]


def png(w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (w, h), 200).save(buf, "PNG")
    return buf.getvalue()


def poll_health(port: int, stop: threading.Event, out: list[float], interval: float = 0.01) -> None:
    """Sequential GET /health on one raw keep-alive connection (a minimal client: little CPU of its own)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        f = s.makefile("rb")
        while not stop.is_set():
            t = time.perf_counter()
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            length = 0
            while True:
                line = f.readline()
                if line in (b"\r\n", b""):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            f.read(length)
            out.append(time.perf_counter() - t)
            time.sleep(interval)


def one_round(url: str, port: int, uploads: list[bytes]) -> dict:
    lat: list[float] = []
    stop = threading.Event()
    poller = threading.Thread(target=poll_health, args=(port, stop, lat), daemon=True)
    poller.start()
    time.sleep(0.3)  # a baseline before the uploads start
    results: list = [None] * len(uploads)

    def post(i):
        t = time.perf_counter()
        try:
            r = httpx.post(
                f"{url}/search/image",
                files={"file": (f"big{i}.png", uploads[i], "image/png")},
                params={"k": 5},
                timeout=120,
            )
            results[i] = (r.status_code, time.perf_counter() - t)
        except httpx.HTTPError as e:
            results[i] = (type(e).__name__, time.perf_counter() - t)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(uploads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    time.sleep(0.2)
    stop.set()
    poller.join(60)
    ms = np.array(lat) * 1000
    return {
        "n": len(ms),
        "p50": np.percentile(ms, 50),
        "p99": np.percentile(ms, 99),
        "max": ms.max(),
        "uploads": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="H&M-layout folder (default: a synthetic 30-item shop)")
    ap.add_argument("--workspace", help="default: a temporary folder")
    ap.add_argument("--uploads", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kinds", default="heavy,audit")
    ap.add_argument("--pythonpath", help="run the server from this source folder (compare another version)")
    ap.add_argument("--startup-timeout", type=float, default=900)
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="upload-stall-")
    data = Path(args.data) if args.data else synthetic_shop(Path(tmp.name) / "hm")
    ws = args.workspace or str(Path(tmp.name) / "ws")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    cmd = [sys.executable, "-m", "fashionrec.cli", "--workspace", ws, "serve", "--data", str(data), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        wait_ready(url, proc, args.startup_timeout, poll=0.5)
        print(f"server ready in {time.time() - t0:.1f}s ({data}); {os.cpu_count()} CPUs shared by server and clients")
        kinds = {"heavy": (6300, 6300), "audit": (8000, 8000)}
        for kind in args.kinds.split(","):
            w, h = kinds[kind]
            body = png(w, h)
            print(
                f"\n{kind}: {args.uploads} concurrent uploads of a {w}x{h} PNG ({w * h / 1e6:.1f} Mpx, "
                f"{len(body):,} bytes) to POST /search/image"
            )
            for r in range(args.rounds):
                res = one_round(url, port, [body] * args.uploads)
                ups = ", ".join(f"{s} in {t:.2f}s" for s, t in res["uploads"])
                print(
                    f"  round {r + 1}: /health n={res['n']} p50={res['p50']:.1f} ms p99={res['p99']:.1f} ms "
                    f"max={res['max']:.1f} ms | uploads: {ups}"
                )
    finally:
        stop(proc)
        tmp.cleanup()


if __name__ == "__main__":
    main()

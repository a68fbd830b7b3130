"""`fashionrec recommend` wall time on a shop folder: cold (empty workspace: every image embedded) and warm
(features cached). Also checks the output contract: one row per customer, k ids each.

    .venv/bin/python benchmarks/recommend_timing.py --data ../shared/data/hm
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import pandas as pd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/hm")
    ap.add_argument("--model", default=None)
    ap.add_argument("--k", type=int, default=12)
    args = ap.parse_args()
    if not os.path.isdir(args.data):
        print(f"skipped: {args.data} not found")
        return 0
    exe = os.path.join(os.path.dirname(sys.executable), "fashionrec")
    with tempfile.TemporaryDirectory() as ws:
        out = os.path.join(ws, "recs.csv")
        times = {}
        for run in ("cold", "warm"):
            cmd = [exe, "-q", "--workspace", ws, "recommend", "--data", args.data, "--k", str(args.k), "--out", out]
            if args.model:
                cmd += ["--model", args.model]
            t = time.time()
            subprocess.run(cmd, check=True)
            times[run] = time.time() - t
            print(f"{run}: {times[run]:.1f}s", flush=True)
        df = pd.read_csv(out, dtype=str)
        customers = pd.read_csv(os.path.join(args.data, "customers.csv"), dtype=str)["customer_id"]
        assert set(df["customer_id"]) == set(customers), "a customer is missing"
        assert df["prediction"].str.split().str.len().eq(args.k).all(), "a row has fewer than k items"
        print(
            f"recommend ({args.model or 'default'}) on {len(df)} customers: cold {times['cold']:.1f}s, warm {times['warm']:.1f}s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

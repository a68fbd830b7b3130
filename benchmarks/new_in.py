"""Personalised "new in": `fashionrec recommend --items FILE` for every customer of a shop, warm (features and the
fitted model cached in the workspace), with the item list = every photo nobody has bought yet.

Prints the wall time of the cold run (embedding + fit) and of the warm run, and checks the contract: one row per
customer, only listed items, each row as long as min(k, listed items).

    .venv/bin/python benchmarks/new_in.py --data ../shared/data/hm [--workspace DIR] [--k 12]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/hm")
    ap.add_argument("--workspace", default=None, help="reuse a workspace (default: a new temporary one)")
    ap.add_argument("--k", type=int, default=12)
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / "transactions.csv").exists():
        print(f"skipped: {data} not found")
        return 0
    from fashionrec.data.catalog import load_catalog
    from fashionrec.data.interactions import load_hm_transactions

    cat = load_catalog(data)
    sold = set(load_hm_transactions(data).events["item"])
    items = sorted(i for i in cat.image_paths if i not in sold)
    exe = os.path.join(os.path.dirname(sys.executable), "fashionrec")
    with tempfile.TemporaryDirectory() as tmp:
        ws = args.workspace or os.path.join(tmp, "ws")
        lst = Path(tmp) / "new_in.txt"
        lst.write_text("\n".join(items) + "\n")
        out = Path(tmp) / "recs.csv"
        cmd = [exe, "-q", "--workspace", ws, "recommend", "--data", str(data), "--k", str(args.k)]
        cmd += ["--out", str(out), "--items", str(lst)]
        times = {}
        for run in ("first", "warm"):
            t = time.time()
            subprocess.run(cmd, check=True)
            times[run] = time.time() - t
            print(f"{run}: {times[run]:.1f}s", flush=True)
        df = pd.read_csv(out, dtype=str)
        preds = df["prediction"].fillna("").str.split()
        allowed = set(items)
        ok = preds.map(lambda p: set(p) <= allowed and len(p) == min(args.k, len(items))).all()
        print(
            f"{len(df)} customers x {args.k} of {len(items)} never-sold photos: warm {times['warm']:.1f}s "
            f"({1000 * times['warm'] / max(len(df), 1):.1f} ms/customer, process start and loading included); "
            f"contract {'ok' if ok else 'BROKEN'}"
        )
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

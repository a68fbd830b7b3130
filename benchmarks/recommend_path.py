"""`fashionrec recommend` end to end, warm, on two source trees back to back: the same command, the same data, the
same workspace (features, and a fitted model, cached there by a first run of each tree), so the figures differ only
by the code. Each tree runs once untimed (to fill its caches), then `--repeats` times, alternating, as a fresh
process; the figures are the median wall-clock seconds and the median CPU seconds (user + system) of the process,
which a busy shared machine inflates less than wall time. The output files of the two trees must be byte for byte
the same.

    git -C /work/main worktree add /tmp/fashionrec-base 8d3620d   # the tree to compare with
    .venv/bin/python benchmarks/recommend_path.py --base /tmp/fashionrec-base/src --new src \\
        --data ../shared/data/hm --k 12 --repeats 3 --out docs/results/recommend_path.txt
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = re.compile(r"load\+embed ([\d.]+)s.*fit ([\d.]+)s, recommend ([\d.]+)s")


def run(src: str, data: str, k: int, out: Path, workspace: str | None) -> dict:
    """One `fashionrec recommend` in a fresh process with `src` first on the path: wall and CPU seconds, and the
    stages the command reports (load+embed, fit, recommend)."""
    env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()))
    cmd = [sys.executable, "-m", "fashionrec.cli", "-q"]
    if workspace:
        cmd += ["--workspace", workspace]
    cmd += ["recommend", "--data", data, "--k", str(k), "--out", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"{src}: exit {res.returncode}\n{res.stderr[-3000:]}")
    m = STAGES.search(res.stderr)
    load, fit, rec = (float(x) for x in m.groups()) if m else (float("nan"),) * 3
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "load": load, "fit": fit, "recommend": rec}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the source folder to compare with (holds fashionrec/)")
    ap.add_argument("--new", default=str(Path(__file__).resolve().parents[1] / "src"), help="the source folder timed")
    ap.add_argument("--data", required=True)
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workspace", default=None, help="default: fashionrec's own (~/.cache/fashionrec)")
    ap.add_argument("--out", default=None, help="also write the report here")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="recpath-"))
    trees = {"base": args.base, "new": args.new}
    for name, src in trees.items():  # warm-up: features, projection and fitted model cached
        run(src, args.data, args.k, tmp / f"{name}.csv", args.workspace)
    runs: dict[str, list[dict]] = {n: [] for n in trees}
    for _ in range(args.repeats):
        for name, src in trees.items():
            runs[name].append(run(src, args.data, args.k, tmp / f"{name}.csv", args.workspace))
    same = filecmp.cmp(tmp / "base.csv", tmp / "new.csv", shallow=False)
    med = {n: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for n, rs in runs.items()}
    lines = [
        f"fashionrec recommend --data {args.data} --k {args.k} --out <file>, warm (features and the fitted model "
        f"cached), median of {args.repeats} fresh processes per tree, alternating; 2-core CPU shared with other work",
        "",
        "| tree | wall s | CPU s | load+embed s | fit (cache load) s | recommend s |",
        "|---|---|---|---|---|---|",
    ]
    for n in trees:
        m = med[n]
        lines.append(
            f"| {n} ({trees[n]}) | {m['wall']:.1f} | {m['cpu']:.1f} | {m['load']:.1f} | {m['fit']:.1f} | "
            f"{m['recommend']:.1f} |"
        )
    lines += [
        "",
        f"speed-up (base / new): wall {med['base']['wall'] / med['new']['wall']:.2f}x, "
        f"CPU {med['base']['cpu'] / med['new']['cpu']:.2f}x",
        f"output files identical: {same}",
        "every run (wall s / CPU s): "
        + "; ".join(f"{n}: " + ", ".join(f"{r['wall']:.0f}/{r['cpu']:.0f}" for r in rs) for n, rs in runs.items()),
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

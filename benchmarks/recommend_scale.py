"""How `fashionrec recommend` (hybrid, default settings) grows with the shop: a synthetic purchase log and catalog
grown from the H&M sample's own statistics, then every stage timed, with its peak memory, at several sizes.

    .venv/bin/python benchmarks/recommend_scale.py --customers 20000 --items 4000 --sizes 5000 10000 20000
    .venv/bin/python benchmarks/recommend_scale.py --customers 1000000 --items 100000      # the retailer size

The generator (`generate`) copies from `../shared/data/hm`: customers' basket sizes and how many distinct days
they shop on (resampled pairs), the share of purchases that repeat an item (13%) or buy another colour of a product
the customer bought before (8%), the item popularity curve (Zipf exponent fitted on the sample's item counts),
the number of colours per product (7-digit product code + 3-digit colour, as H&M's article_id), purchase dates,
prices, sales channels, customers' ages and the catalog's tag columns. Items have a launch date and sell for 180
days after it. Image vectors are drawn near real ones: the PCA (256 dims) of the sample's cached image features
(`$FASHIONREC_HOME/features/*.npz`, written by `fashionrec recommend`/`embed`), one real vector per product plus
Gaussian noise, a little more noise per colour; without the cache, a Gaussian with a decaying spectrum.

Stages (each size runs in a fresh process, so memory figures do not mix): load (the project's own CSV loader,
`load_transactions`, plus customers, catalog and vectors), features (`RecData`: ids, user x item matrix,
histories), fit (`Hybrid().fit`), candidates (candidate sources + features for every customer), ranking (ranker
scores, top-k with the places kept for new arrivals, fill), write (the CSV). Peak memory is the kernel's
high-water mark of the process's resident set (VmHWM in /proc/self/status), reset at the start of every stage by
writing 5 to /proc/self/clear_refs: "peak" is the largest RSS reached during that stage (whole process, so it
includes what earlier stages left in memory). With --workers > 1 (Ray; the default `auto` uses every core from 100,000
customers on), the workers' own high-water marks are
added to the driver's. Times are wall-clock seconds; the JSON also keeps this process's CPU seconds per stage
(time.process_time), less inflated than wall time on a shared machine.

--path customer measures `Hybrid.recommend_many` on blocks of 256 customers (its ranking is counted under
candidates), --path block the batch job
`fashionrec.recommend.batch.recommend_all`. Both go through the public API only.
The growth exponent of a stage is the slope of log(seconds) against log(customers) over the sizes run
(items and purchases grow in proportion). The last line is the contract read by an outside harness:
`N customers x M items: T.T min, peak P.P GiB, ms/customer C.CC` for the largest size (N, M as given).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

STAGES = ["load", "features", "fit", "candidates", "ranking", "write"]
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- sample statistics
def sample_stats(data_dir: Path, features_npz: str | None, dim: int = 256, seed: int = 0) -> dict:
    """Everything the generator copies from the real sample (read once, small)."""
    from fashionrec.recommend.attributes import TAG_COLUMNS

    tr = pd.read_csv(data_dir / "transactions.csv", dtype={"article_id": str, "customer_id": str})
    tr = tr.sort_values("t_dat", kind="stable")
    tr["code"] = tr["article_id"].str[:7]
    g = tr.groupby("customer_id")
    per_cust = pd.DataFrame({"n": g.size(), "days": g["t_dat"].nunique()})
    rep = tr.duplicated(["customer_id", "article_id"])
    same = tr.duplicated(["customer_id", "code"]) & ~rep
    pop = np.sort(tr["article_id"].value_counts().to_numpy())[::-1]
    r = np.arange(1, len(pop) + 1)
    zipf = -np.polyfit(np.log(r), np.log(pop), 1)[0]
    img_ids = (
        [p.stem for p in (data_dir / "images").glob("*.jpg")]
        if (data_dir / "images").is_dir()
        else tr["article_id"].unique().tolist()
    )
    colours = pd.Series([i[:7] for i in img_ids]).value_counts().to_numpy()
    days = pd.to_datetime(tr["t_dat"])
    arts = (
        pd.read_csv(data_dir / "articles.csv", dtype={"article_id": str})
        if (data_dir / "articles.csv").exists()
        else None
    )
    tags = (
        arts[[c for c in TAG_COLUMNS if c in arts.columns]].dropna().reset_index(drop=True)
        if arts is not None
        else None
    )
    cust = (
        pd.read_csv(data_dir / "customers.csv", dtype={"customer_id": str})
        if (data_dir / "customers.csv").exists()
        else None
    )
    ages = (
        pd.to_numeric(cust["age"], errors="coerce").dropna().to_numpy()
        if cust is not None and "age" in cust
        else np.array([30.0])
    )
    vecs, source = None, "gaussian"
    path = features_npz or _find_features()
    if path:
        raw = np.load(path)["features"].astype(np.float32)
        raw = raw[np.linalg.norm(raw, axis=1) > 0]
        mu = raw.mean(0)
        _, s, vt = np.linalg.svd(
            raw[np.random.default_rng(seed).choice(len(raw), min(len(raw), 5000), replace=False)] - mu,
            full_matrices=False,
        )
        vecs = (raw - mu) @ vt[:dim].T
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        source = f"PCA({dim}) of {len(raw)} real image vectors ({os.path.basename(path)})"
    return {
        "per_cust": per_cust[["n", "days"]].to_numpy(),
        "p_repeat": float(rep.mean()),
        "p_same": float(same.mean()),
        "zipf": float(zipf),
        "colours": colours,
        "day0": days.min(),
        "day_offsets": (days - days.min()).dt.days.to_numpy(),
        "prices": tr["price"].to_numpy(),
        "channel2": float((tr["sales_channel_id"] == 2).mean()),
        "tags": tags,
        "ages": ages,
        "vecs": vecs,
        "vec_source": source,
        "dim": dim,
    }


def _find_features() -> str | None:
    homes = [os.environ.get("FASHIONREC_HOME", ""), "/tmp/ws_shared", os.path.expanduser("~/.fashionrec")]
    for h in homes:
        if h:
            files = sorted(glob.glob(os.path.join(h, "features", "*.npz")), key=os.path.getsize, reverse=True)
            if files:
                return files[0]
    return None


# ----------------------------------------------------------------------------------------------- generator
def generate(
    stats: dict, n_customers: int, n_items: int, n_purchases: int, out: Path, seed: int = 0, life_days: int = 180
) -> dict:
    """Write transactions.csv, customers.csv, articles.csv and vectors.npz (ids + L2-normalised vectors) to `out`."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    # products and colours: colours per product resampled from the sample's photos
    cols = []
    total = 0
    while total < n_items:
        c = rng.choice(stats["colours"], size=max(1024, (n_items - total) // 1))
        cum = np.cumsum(c)
        k = int(np.searchsorted(cum, n_items - total, side="left")) + 1
        c = c[:k]
        c[-1] -= max(0, int(c.sum()) - (n_items - total))
        cols.append(c[c > 0])
        total += int(c[c > 0].sum())
    cols = np.concatenate(cols)
    n_prod = len(cols)
    prod_of = np.repeat(np.arange(n_prod), cols)
    colour_no = np.arange(n_items) - np.repeat(np.cumsum(cols) - cols, cols)
    codes = np.char.zfill((100000 + np.arange(n_prod)).astype(str), 7)
    item_ids = np.char.add(codes[prod_of], np.char.zfill((colour_no + 1).astype(str), 3))
    # launch dates: products launch over the sample's period (from `life_days` before its start); items sell for life_days
    span = int(stats["day_offsets"].max()) + 1
    launch_p = rng.integers(-life_days // 2, span, size=n_prod)
    launch = launch_p[prod_of] + rng.integers(0, 15, size=n_items)
    # popularity: Zipf over a random order of products, colours share their product's weight unevenly
    w_p = np.power(np.arange(1, n_prod + 1, dtype=np.float64), -stats["zipf"])[rng.permutation(n_prod)]
    w = w_p[prod_of] * rng.gamma(1.0, 1.0, size=n_items)
    order = np.argsort(launch, kind="stable")  # items in launch order, for "active at day d" windows
    launch_sorted = launch[order]
    cw = np.concatenate([[0.0], np.cumsum(w[order])])
    # customers: (purchases, distinct days) resampled, purchases rescaled to the total asked for
    pc = stats["per_cust"][rng.integers(0, len(stats["per_cust"]), size=n_customers)].astype(np.float64)
    n_u = rng.multinomial(n_purchases, pc[:, 0] / pc[:, 0].sum()) if n_customers else np.zeros(0, dtype=np.int64)
    n_u = np.maximum(n_u, 1)
    d_u = np.clip(np.round(n_u * pc[:, 1] / pc[:, 0]), 1, n_u).astype(np.int64)
    cust_ids = np.array([hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(n_customers)], dtype=object)
    # each customer's shopping days (from the empirical date distribution), each purchase on one of them
    day_pool = stats["day_offsets"]
    T = int(n_u.sum())
    owner = np.repeat(np.arange(n_customers), n_u)
    day_start = np.concatenate([[0], np.cumsum(d_u)[:-1]])
    days = day_pool[rng.integers(0, len(day_pool), size=int(d_u.sum()))]
    pick = (rng.random(T) * d_u[owner]).astype(np.int64)
    t_day = days[day_start[owner] + pick]
    srt = np.lexsort((t_day, owner))
    owner, t_day = owner[srt], t_day[srt]
    # a fresh purchase: popularity among the items on sale that day (launched within life_days)
    lo = np.searchsorted(launch_sorted, t_day - life_days, side="left")
    hi = np.searchsorted(launch_sorted, t_day, side="right")
    empty = hi <= lo
    lo[empty], hi[empty] = 0, np.maximum(hi[empty], 1)
    u = cw[lo] + rng.random(T) * (cw[hi] - cw[lo])
    item = order[np.clip(np.searchsorted(cw, u, side="right") - 1, 0, n_items - 1)]
    # repeats (the same item again) and other colours of a product bought before, from earlier purchases of the customer
    start = np.concatenate([[0], np.cumsum(n_u)[:-1]])[owner]
    pos = np.arange(T) - start
    r = rng.random(T)
    has_prev = pos > 0
    prev = start + (rng.random(T) * np.maximum(pos, 1)).astype(np.int64)
    rep = has_prev & (r < stats["p_repeat"])
    same = has_prev & ~rep & (r < stats["p_repeat"] + stats["p_same"])
    base = item.copy()
    item[rep] = base[prev[rep]]
    p_first = np.concatenate([[0], np.cumsum(cols)[:-1]])
    sp_ = prod_of[base[prev[same]]]
    item[same] = p_first[sp_] + (rng.random(int(same.sum())) * cols[sp_]).astype(np.int64)
    item_price = rng.choice(stats["prices"], size=n_items)
    channel = np.where(rng.random(T) < stats["channel2"], 2, 1).astype(np.int8)
    day_str = np.array(
        (stats["day0"] + pd.to_timedelta(np.arange(int(t_day.max()) + 1), unit="D")).strftime("%Y-%m-%d"), dtype=object
    )
    item_obj = np.array(item_ids.tolist(), dtype=object)
    by_day = np.argsort(t_day, kind="stable")  # the file is in date order, like H&M's
    with open(out / "transactions.csv", "w", newline="") as f:
        f.write("t_dat,customer_id,article_id,price,sales_channel_id\n")
        for a in range(0, T, 1_000_000):  # bounded memory: 1M rows of strings at a time
            o = by_day[a : a + 1_000_000]
            pd.DataFrame(
                {
                    "t_dat": day_str[t_day[o]],
                    "customer_id": cust_ids[owner[o]],
                    "article_id": item_obj[item[o]],
                    "price": item_price[item[o]],
                    "sales_channel_id": channel[o],
                }
            ).to_csv(f, header=False, index=False)
    pd.DataFrame({"customer_id": cust_ids, "age": rng.choice(stats["ages"], size=n_customers)}).to_csv(
        out / "customers.csv", index=False
    )
    arts = pd.DataFrame({"article_id": item_ids, "product_code": codes[prod_of]})
    if stats["tags"] is not None and len(stats["tags"]):
        t = stats["tags"].iloc[rng.integers(0, len(stats["tags"]), size=n_prod)].reset_index(drop=True)
        for c in t.columns:
            arts[c] = t[c].to_numpy()[prod_of]
        if "colour_group_name" in t.columns:  # colours differ within a product
            arts["colour_group_name"] = stats["tags"]["colour_group_name"].to_numpy()[
                rng.integers(0, len(stats["tags"]), size=n_items)
            ]
    arts.to_csv(out / "articles.csv", index=False)
    dim = stats["dim"]
    if stats["vecs"] is not None:
        base_v = stats["vecs"][rng.integers(0, len(stats["vecs"]), size=n_prod)]
    else:
        base_v = rng.standard_normal((n_prod, dim)).astype(np.float32) * np.power(np.arange(1, dim + 1), -0.5).astype(
            np.float32
        )
        base_v /= np.linalg.norm(base_v, axis=1, keepdims=True)
    vec = np.empty((n_items, dim), dtype=np.float32)
    for a in range(0, n_items, 200_000):  # bounded temporaries
        b = min(n_items, a + 200_000)
        p = prod_of[a:b]
        v = base_v[p] + 0.15 / np.sqrt(dim) * rng.standard_normal((b - a, dim)).astype(np.float32)  # per colour
        vec[a:b] = v / np.linalg.norm(v, axis=1, keepdims=True)
    # product-level noise must be shared by the colours: add it per product, once
    noise_p = 0.25 / np.sqrt(dim) * rng.standard_normal((n_prod, dim)).astype(np.float32)
    vec += noise_p[prod_of]
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    np.savez(out / "vectors.npz", ids=item_ids, vectors=vec)
    return {"customers": n_customers, "items": n_items, "purchases": T, "products": n_prod}


# ----------------------------------------------------------------------------------------------- one size
class _Peak:
    """Peak resident memory of this process during a stage: VmHWM, reset at the start (Linux clear_refs 5)."""

    def __init__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    @staticmethod
    def read(key: str = "VmHWM") -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024 / 2**30
        return float("nan")


def run_one(args) -> dict:
    """Generate one size, run every stage, return {stage: [seconds, peak GiB]} (printed as JSON by --one)."""
    import threadpoolctl  # noqa: F401  (imported before the timers)

    from fashionrec.data.interactions import load_transactions
    from fashionrec.recommend.attributes import TAG_COLUMNS
    from fashionrec.recommend.base import ItemFeatures, RecData
    from fashionrec.recommend.hybrid import Hybrid
    from fashionrec.workflows.shop import load_customer_table

    stats = sample_stats(Path(args.data), args.features_npz, seed=args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="recscale-", dir=args.tmp_dir))
    t = time.time()
    info = generate(stats, args.customers, args.items, args.purchases, tmp, seed=args.seed)
    info["generate_s"] = time.time() - t
    info["vectors"] = stats["vec_source"]
    del stats
    res: dict = {}
    out_csv = tmp / "recommendations.csv"

    def stage(name, fn):
        pk = _Peak()
        t0, c0 = time.time(), time.process_time()
        v = fn()
        res[name] = [time.time() - t0, pk.read(), time.process_time() - c0]
        print(
            f"  {name:10s} {res[name][0]:8.1f}s  peak {res[name][1]:.2f} GiB  cpu {res[name][2]:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        return v

    def load():
        z = np.load(tmp / "vectors.npz")
        ids = z["ids"].tolist()
        ev = load_transactions(tmp / "transactions.csv", catalog_ids=set(ids)).events
        meta = pd.read_csv(tmp / "articles.csv", dtype={"article_id": str, "product_code": str}).set_index("article_id")
        return ids, z["vectors"], ev, meta, load_customer_table(tmp)

    ids, V, ev, meta, users = stage("load", load)

    def features(meta=meta, ev=ev):
        pred = meta[[c for c in TAG_COLUMNS if c in meta.columns]]  # stands for the tags predicted from photos
        bought = meta[meta.index.isin(set(ev["item"].unique()))]
        return RecData(ev, ids, image_features=ItemFeatures(ids, V), metadata=bought, predicted=pred, users=users)

    data = stage("features", features)
    del ev, meta
    model = stage("fit", lambda: Hybrid().fit(data))
    customers = users.index.tolist()
    if args.path == "customer":
        _per_customer(model, customers, args.k, out_csv, stage)
    else:
        _block_path(model, customers, args, out_csv, stage, res)
    info["rows"] = sum(1 for _ in open(out_csv)) - 1
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        info["dir"] = str(tmp)
    return {"info": info, "stages": res}


def _per_customer(model, customers, k, out_csv, stage):
    """The per-customer path, through the public API: `recommend_many` on blocks of 256, timed as "candidates" (its ranking is
    inside; "ranking" stays 0), then the batch job's rows (`fashionrec.recommend.batch.write_rows`: short lists
    filled from what sells now) written to the CSV."""
    from fashionrec.io import atomic_path
    from fashionrec.recommend.batch import Fill, write_rows

    lists = []

    def recommend():
        for b in range(0, len(customers), 256):
            part = customers[b : b + 256]
            recs = model.recommend_many(part, k)
            lists.extend(list(recs.get(u, [])) for u in part)

    stage("candidates", recommend)
    stage("ranking", lambda: None)

    def write():
        with atomic_path(out_csv, suffix=".tmp.csv") as tmpf, open(tmpf, "w", newline="") as f:
            f.write("customer_id,prediction\n")
            write_rows(f, customers, lists, Fill(model, k), k)

    stage("write", write)


def _block_path(model, customers, args, out_csv, stage, res):
    from fashionrec.recommend.batch import recommend_all, resolve_workers

    timings: dict = {}
    pk = _Peak()
    t0, c0 = time.time(), time.process_time()
    recommend_all(
        model,
        customers,
        args.k,
        out_csv,
        block_size=args.block_size,
        progress=False,
        timings=timings,
        workers=resolve_workers(args.workers, len(customers)),
    )
    total, peak = time.time() - t0, pk.read() + timings.get("worker_peak_gib", 0.0)
    for name in ("candidates", "ranking", "write"):
        res[name] = [timings.get(name, 0.0), peak]
    res["candidates"][0] += max(0.0, total - sum(timings.get(n, 0.0) for n in ("candidates", "ranking", "write")))
    res["candidates"].append(time.process_time() - c0)  # this process's CPU seconds for the whole recommend step
    print(
        f"  recommend  {total:8.1f}s  peak {peak:.2f} GiB  cpu {res['candidates'][2]:.1f}s ({timings})",
        file=sys.stderr,
        flush=True,
    )


# ----------------------------------------------------------------------------------------------- driver
def exponents(rows: list[dict]) -> dict:
    n = np.array([r["info"]["customers"] for r in rows], dtype=float)
    out = {}
    for s in STAGES + ["total"]:
        t = np.array([r["stages"][s][0] if s != "total" else sum(v[0] for v in r["stages"].values()) for r in rows])
        ok = t > 0
        out[s] = float(np.polyfit(np.log(n[ok]), np.log(t[ok]), 1)[0]) if ok.sum() >= 2 else float("nan")
    return out


def table(rows, exps) -> str:
    lines = [
        "| customers | items | purchases | "
        + " | ".join(f"{s} s (GiB)" for s in STAGES)
        + " | total min | peak GiB | ms/customer |",
        "|---" * (len(STAGES) + 6) + "|",
    ]
    for r in rows:
        i, s = r["info"], r["stages"]
        tot = sum(v[0] for v in s.values())
        peak = max(v[1] for v in s.values())
        lines.append(
            f"| {i['customers']:,} | {i['items']:,} | {i['purchases']:,} | "
            + " | ".join(f"{s[k][0]:.1f} ({s[k][1]:.2f})" for k in STAGES)
            + f" | {tot / 60:.2f} | {peak:.2f} | {1000 * tot / max(1, i['customers']):.2f} |"
        )
    lines.append("")
    lines.append(
        "growth exponent (slope of log seconds vs log customers): " + ", ".join(f"{k} {v:.2f}" for k, v in exps.items())
    )
    return "\n".join(lines)


def report(rows, exps, path_png: Path | None, path_md: Path | None, label: str):
    """Print the table; append it to the .md, the run to the .json beside it, and redraw the PNG from every run."""
    text = table(rows, exps)
    print(text)
    if path_md:
        path_md.parent.mkdir(parents=True, exist_ok=True)
        with open(path_md, "a") as f:
            f.write(f"\n## {label}\n\n{text}\n\ncommand: `{' '.join(sys.argv)}`\n")
        js = path_md.with_suffix(".json")
        runs = json.loads(js.read_text()) if js.exists() else []
        runs.append({"label": label, "rows": rows, "exponents": exps})
        js.write_text(json.dumps(runs, indent=1, default=str))
        if path_png:
            plot(runs, path_png)


def plot(runs: list[dict], path_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(16, 4.8))
    colours = dict(zip(STAGES + ["total"], ["C0", "C1", "C2", "C3", "C4", "C5", "k"]))
    styles = ["o--", "s-", "^-.", "v:"]
    for r_i, run in enumerate(runs[-4:]):
        rows, exps, st = run["rows"], run["exponents"], styles[r_i % len(styles)]
        n = [r["info"]["customers"] for r in rows]
        for s in STAGES + ["total"]:
            t = [
                max(sum(v[0] for v in r["stages"].values()) if s == "total" else r["stages"][s][0], 1e-2) for r in rows
            ]
            ax[0 if s in ("load", "features", "fit", "total") else 1].loglog(
                n, t, st, color=colours[s], label=f"{s} ({exps[s]:.2f}) {run['label'][:22]}", markersize=4
            )
        ax[2].loglog(n, [max(v[1] for v in r["stages"].values()) for r in rows], st, color="k", label=run["label"][:40])
    for a, title in zip(
        ax, ["load, features, fit, total: seconds", "candidates, ranking, write: seconds", "peak RSS, GiB"]
    ):
        a.set_xlabel("customers (items and purchases in proportion)")
        a.set_title(title, fontsize=9)
        a.legend(fontsize=6)
    fig.suptitle(
        "fashionrec recommend (hybrid) vs shop size; (exponent) = log-log slope; 2 cores (the .md says which runs shared them)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path_png, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, required=True, help="N: customers at the largest size")
    ap.add_argument("--items", type=int, required=True, help="M: catalog items at the largest size")
    ap.add_argument("--purchases", type=int, default=None, help="T: purchases at the largest size (default 30 x N)")
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=None,
        help="customer counts to run (items, purchases in proportion); default N/9, N/3, N; the last is N",
    )
    ap.add_argument(
        "--workers",
        default="auto",
        help="Ray workers for the batch job (1 = in this process); auto (default): every core of this machine from "
        "100,000 customers on (the nightly job uses the whole machine), 1 below (Ray's start-up would "
        "cost more than it saves)",
    )
    ap.add_argument("--path", choices=["block", "customer"], default="block")
    ap.add_argument("--block-size", type=int, default=2048)
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hm"))
    ap.add_argument(
        "--features-npz", default=None, help="real image features to draw vectors near (default: workspace cache)"
    )
    ap.add_argument(
        "--tmp-dir", default=None, help="where the generated shop is written (needs ~2 GiB per 10M purchases)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the generated shop")
    ap.add_argument("--out-md", default=str(ROOT / "docs" / "results" / "recommend_scale.md"))
    ap.add_argument("--out-png", default=str(ROOT / "docs" / "results" / "recommend_scale.png"))
    ap.add_argument("--no-report", action="store_true", help="do not write the .md/.png")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.purchases is None:
        args.purchases = 30 * args.customers
    if not (Path(args.data) / "transactions.csv").exists():
        print(f"skipped: {args.data}/transactions.csv not found (the generator copies its statistics)")
        return 0
    if args.one:
        print("RESULT " + json.dumps(run_one(args), default=str), flush=True)
        return 0
    N, M, T = args.customers, args.items, args.purchases
    sizes = sorted(set(args.sizes)) if args.sizes else sorted({max(100, N // 9), max(100, N // 3), N})
    if sizes[-1] != N:
        sizes.append(N)
    rows = []
    for n in sizes:
        m, t = max(50, round(M * n / N)), max(n, round(T * n / N))
        from fashionrec.recommend.batch import resolve_workers

        workers = resolve_workers(args.workers, n)
        print(
            f"size {n:,} customers x {m:,} items x {t:,} purchases ({args.path} path, {workers} worker(s))",
            file=sys.stderr,
            flush=True,
        )
        cmd = [
            sys.executable,
            __file__,
            "--one",
            "--customers",
            str(n),
            "--items",
            str(m),
            "--purchases",
            str(t),
            "--path",
            args.path,
            "--workers",
            str(workers),
            "--block-size",
            str(args.block_size),
            "--k",
            str(args.k),
            "--data",
            args.data,
            "--seed",
            str(args.seed),
        ]
        for flag, v in (("--features-npz", args.features_npz), ("--tmp-dir", args.tmp_dir)):
            if v:
                cmd += [flag, v]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        res = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode != 0 or not res:
            print(
                f"size {n:,} failed (exit {p.returncode}; killed for memory if -9): larger sizes not run",
                file=sys.stderr,
                flush=True,
            )
            break
        rows.append(json.loads(res[-1][len("RESULT ") :]))
    if not rows:
        return 1
    exps = exponents(rows)
    label = f"{args.path} path, {args.workers} worker(s), {time.strftime('%Y-%m-%d %H:%M')}"
    report(
        rows, exps, None if args.no_report else Path(args.out_png), None if args.no_report else Path(args.out_md), label
    )
    last = rows[-1]
    tot = sum(v[0] for v in last["stages"].values())
    peak = max(v[1] for v in last["stages"].values())
    n_done = last["info"]["customers"]
    if n_done != N:
        print(f"stopped at {n_done:,} customers: the size {N:,} did not finish")
        return 1
    print(f"{N} customers x {M} items: {tot / 60:.1f} min, peak {peak:.1f} GiB, ms/customer {1000 * tot / N:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

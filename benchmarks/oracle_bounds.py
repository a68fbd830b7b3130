"""What a recommender could reach on this log if it knew the future best sellers: oracle bounds.

    python benchmarks/oracle_bounds.py --data ../shared/data/hm [--windows 4 --test-days 28] [--out docs/results]

The same windows, customers and metrics as `fashionrec evaluate`. The oracles *read the test window* (no model may)
and know what every other customer of the sample buys in it, but not what this customer buys:

- `oracle_pop`: the window's own best sellers, counted over the other customers (leave-one-out), the best list that
  is the same for everyone up to the customer's own purchases;
- `repurchase + oracle fill`: the customer's own past purchases as the project's repurchase model orders them (not
  its popularity fill), then the oracle's list; and the oracle's m surest items
  (bought by 2+ others) first, then repurchase, then the rest;
- on items never bought before the window and on new products (no colour sold before): the k of them most bought by
  the others (k = 4, the hybrid's reserved places, and 12).

If even these stay under a target, reaching it needs knowledge of the single customer's taste beyond anything the
sample's popularity, past or future, can give. Ties (most items are bought once) are broken at random; figures are
the mean over `--seeds` tie-breaks. Prints figures, never asserts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def _rank_loo(counts: dict[str, int], own: set, pool: list[str], rng) -> list[str]:
    """`pool` ordered by leave-one-out count (the customer's own purchases removed), ties at random."""
    noise = rng.random(len(pool))
    sc = np.array([counts.get(i, 0) - (i in own) for i in pool], dtype=float)
    return [pool[j] for j in np.lexsort((noise, -sc))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--test-days", type=int, default=28)
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--workspace", default=None)
    ap.add_argument("--out", default=None, help="folder for oracle_bounds_<data name>.md")
    args = ap.parse_args(argv)

    from fashionrec.data.products import product_code_of
    from fashionrec.evaluation.metrics import bootstrap_ci, per_user_scores
    from fashionrec.evaluation.protocol import window_splits
    from fashionrec.recommend import create_recommender
    from fashionrec.workflows.shop import load_shop, rec_data

    k = args.k
    shop = load_shop(args.data, with_images=False, workspace=args.workspace, progress=False)
    events = shop.interactions.events
    splits = window_splits(events, args.windows, args.test_days)
    ap_rep, ap_var = [], {}
    cold_hits, new_hits = {}, {}
    n_cold = n_new = n_pairs = 0
    for split in splits:
        truth = split.truth
        users = sorted(truth)
        n_pairs += len(users)
        rep = create_recommender("repurchase").fit(rec_data(shop, split.train)).recommend_many(users, k)
        ap_rep += per_user_scores(rep, truth, k, "map").tolist()
        history = split.train.groupby("user")["item"].apply(set).to_dict()
        buyers = split.test.groupby("item")["user"].nunique().to_dict()
        bought = set(split.train["item"].unique())
        codes_before = {product_code_of(i) for i in bought}
        items = sorted(buyers)
        cold_pool = [i for i in items if i not in bought]
        new_pool = [i for i in cold_pool if product_code_of(i) not in codes_before]
        cold = {u: {i for i in truth[u] if i not in bought} for u in users}
        new = {u: {i for i in cold[u] if product_code_of(i) not in codes_before} for u in users}
        n_cold += sum(map(len, cold.values()))
        n_new += sum(map(len, new.values()))
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            lists = {"oracle_pop": {}, "repurchase + oracle fill": {}}
            for m in (1, 2, 4):
                lists[f"oracle's {m} surest first, then repurchase + oracle fill"] = {}
            for u in users:
                own = truth[u]
                pop = _rank_loo(buyers, own, items, rng)
                lists["oracle_pop"][u] = pop[:k]
                r = [i for i in rep.get(u, [])[:k] if i in history.get(u, ())]  # its own purchases, not its fill
                lists["repurchase + oracle fill"][u] = (r + [i for i in pop if i not in r])[:k]
                for m in (1, 2, 4):
                    sure = [i for i in pop[:m] if buyers.get(i, 0) - (i in own) >= 2]
                    rest = [i for i in r + pop if i not in sure]
                    lists[f"oracle's {m} surest first, then repurchase + oracle fill"][u] = (sure + rest)[:k]
                c = _rank_loo(buyers, own, cold_pool, rng)[:12]  # one ranking per pool: its top 4 is in its top 12
                nw = _rank_loo(buyers, own, new_pool, rng)[:12]
                for kk in (4, 12):
                    cold_hits[kk] = cold_hits.get(kk, 0) + len(set(c[:kk]) & cold[u]) / args.seeds
                    new_hits[kk] = new_hits.get(kk, 0) + len(set(nw[:kk]) & new[u]) / args.seeds
            for name, recs in lists.items():
                ap_var.setdefault(name, {}).setdefault(seed, []).extend(per_user_scores(recs, truth, k, "map").tolist())
    base = np.array(ap_rep)
    lines = [
        f"# Oracle bounds on {Path(args.data).name}: {len(splits)} windows of {args.test_days} days, {n_pairs} "
        f"(customer, window) pairs",
        "",
        "The oracles read the test window (what every *other* sampled customer buys in it). MAP@12 and the paired 95% "
        f"interval of the difference to repurchase (bootstrap over pairs; tie-breaks: mean of {args.seeds} seeds).",
        "",
        f"| list | MAP@{k} | vs repurchase | paired 95% interval of the difference |",
        "|---|---|---|---|",
        f"| repurchase (the project's model) | {base.mean():.4f} | 1.00x | - |",
    ]
    for name, by_seed in ap_var.items():
        a = np.mean([np.array(v) for v in by_seed.values()], 0)
        lo, hi = bootstrap_ci(a - base, n_boot=2000)
        lines.append(f"| {name} | {a.mean():.4f} | {a.mean() / base.mean():.2f}x | {lo:+.4f} to {hi:+.4f} |")
    lines += [
        "",
        f"Recall on items never bought before the window ({n_cold} purchases) and on new products ({n_new}), "
        "from the k of them that the other customers bought most in the window:",
        "",
        "| k | never-bought recall | new-product recall |",
        "|---|---|---|",
    ]
    for kk in (4, 12):
        lines.append(f"| {kk} | {cold_hits[kk] / max(1, n_cold):.4f} | {new_hits[kk] / max(1, n_new):.4f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"oracle_bounds_{Path(args.data).name}.md").write_text(text + "\n")
        print(f"-> {out / f'oracle_bounds_{Path(args.data).name}.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

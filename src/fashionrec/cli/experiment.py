"""`fashionrec experiment`: named experiments (label-efficiency)."""

from __future__ import annotations

import argparse

from fashionrec.cli import common


def cmd_experiment(args) -> int:
    from fashionrec.workflows.classify import FASHION_MNIST
    from fashionrec.workflows.experiment import label_efficiency, parse_ks

    common.resolve_input_size(args, None if args.dataset == FASHION_MNIST else args.dataset)
    label_efficiency(
        args.dataset,
        cfg=common.classifier_config(args),
        out=args.out,
        ks=parse_ks(args.ks),
        seeds=list(range(args.seeds)),
        methods=args.methods.split(","),
        data_dir=args.data_dir,
        label_column=args.label_column,
        pool=args.pool,
        test_size=args.test_size,
        finetune_max_k=args.finetune_max_k,
        cache=common.feature_cache(args),
        progress=common.progress(args),
        resume=not args.fresh,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("experiment", help="run an experiment: label-efficiency")
    e.add_argument("name", choices=["label-efficiency"])
    e.add_argument("--dataset", default="fashion-mnist", help="'fashion-mnist' or an H&M folder (with --label-column)")
    e.add_argument("--data-dir")
    e.add_argument("--label-column", default="product_group_name")
    e.add_argument("--ks", default="1,5,10,50,100,500,all")
    e.add_argument("--seeds", type=int, default=3)
    e.add_argument("--methods", default="pixels,scratch,probe,finetune")
    e.add_argument(
        "--pool", type=int, default=10000, help="Fashion-MNIST train images to draw labels from ('all' = pool)"
    )
    e.add_argument("--test-size", type=int, default=10000)
    e.add_argument(
        "--finetune-max-k",
        type=int,
        default=100,
        help="fine-tune only up to this k (CPU budget); 'all' counts as the pool size",
    )
    e.add_argument("--out", default="label-efficiency")
    e.add_argument(
        "--fresh",
        action="store_true",
        help="ignore runs already in OUT/results.json (default: keep them and run only what is missing)",
    )
    common.add_classifier_args(e)
    e.set_defaults(func=cmd_experiment)

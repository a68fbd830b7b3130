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
    e = sub.add_parser(
        "experiment",
        help="run an experiment: label-efficiency",
        description="label-efficiency: accuracy against labelled examples per class for raw pixels, a CNN from "
        "scratch, the pretrained probe and fine-tuning, over several seeds; writes results.json, table.md and "
        "curve.png to --out (resumes unless --fresh).",
        epilog=common.examples(
            "fashionrec experiment label-efficiency --ks 1,10,100 --seeds 2 --out runs/le",
            "fashionrec experiment label-efficiency --data shop --label-column product_group_name --out runs/le_shop",
        ),
    )
    e.add_argument("name", choices=["label-efficiency"], help="the experiment to run")
    e.add_argument(
        "--data",
        "--dataset",
        dest="dataset",
        action=common.RenamedOption,
        deprecated=("--dataset",),
        default="fashion-mnist",
        help="'fashion-mnist' or a data folder (with --label-column)",
    )
    e.add_argument(
        "--data-dir", help="with --data fashion-mnist: its IDX folder (default /usr/share/datasets/fashion-mnist)"
    )
    e.add_argument("--label-column", default="product_group_name", help="for a data folder: the column to learn")
    e.add_argument("--ks", default="1,5,10,50,100,500,all", help="labelled examples per class to measure")
    e.add_argument("--seeds", type=int, default=3, help="repetitions with different labelled subsets")
    e.add_argument("--methods", default="pixels,scratch,probe,finetune", help="comma-separated methods to compare")
    e.add_argument(
        "--pool", type=int, default=10000, help="Fashion-MNIST train images to draw labels from ('all' = pool)"
    )
    e.add_argument("--test-size", type=int, default=10000, help="test images to evaluate on")
    e.add_argument(
        "--finetune-max-k",
        type=int,
        default=100,
        help="fine-tune only up to this k (CPU budget); 'all' counts as the pool size",
    )
    e.add_argument("--out", default="label-efficiency", help="folder for results.json, table.md and curve.png")
    e.add_argument(
        "--fresh",
        action="store_true",
        help="ignore runs already in OUT/results.json (default: keep them and run only what is missing)",
    )
    common.add_classifier_args(e)
    e.set_defaults(func=cmd_experiment)

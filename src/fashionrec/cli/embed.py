"""`fashionrec embed`: every catalog image's embedding to an .npz (locally or on Ray)."""

from __future__ import annotations

import argparse
import sys

from fashionrec.cli import common
from fashionrec.device import add_device_option


def cmd_embed(args) -> int:
    from fashionrec.errors import FashionrecError
    from fashionrec.workflows.recommend import embed_catalog_images, write_embeddings

    device = common.device(args)
    if args.engine == "ray" and device.type == "cuda" and args.device != "auto":
        raise FashionrecError("--device cuda: --engine ray embeds on the Ray actors' CPUs; use --engine local")
    e = embed_catalog_images(
        args.data,
        engine=args.engine,
        backbone=args.backbone,
        input_size=args.input_size,
        batch_size=args.batch_size,
        num_actors=args.num_actors,
        inference=args.inference,
        ray_address=args.ray_address,
        workspace=common.workspace(args),
        progress=common.progress(args),
        device=device if args.engine == "local" else None,
    )
    write_embeddings(e, args.out)
    print(
        f"embedded {len(e.ids)} images ({len(e.failures)} skipped) with {args.engine} in {e.seconds:.1f}s "
        f"({len(e.ids) / max(e.seconds, 1e-9):.1f} img/s) -> {args.out}",
        file=sys.stderr,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser(
        "embed",
        help="embed every catalog image (local or Ray)",
        description="Write every catalog photo's backbone features to an .npz (arrays ids and features).",
        epilog=common.examples(
            "fashionrec embed --data shop --out feats.npz",
            "fashionrec embed --data shop --device cuda --out feats.npz",
            "fashionrec embed --data shop --backbone models/shop --engine ray --num-actors 8 --out feats.npz",
        ),
    )
    m.add_argument("--data", required=True, help="H&M-layout folder or images/ folder")
    m.add_argument("--out", required=True, help=".npz with ids and features")
    m.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process; ray: Ray actors (needs the distributed extra)",
    )
    common.add_backbone_args(m)
    add_device_option(m)
    m.add_argument("--batch-size", type=int, default=64, help="photos per forward pass")
    m.add_argument("--num-actors", type=int, default=2, help="with --engine ray: embedding actors")
    m.add_argument("--ray-address", default=None, help="existing Ray cluster (default: start a local one)")
    m.set_defaults(func=cmd_embed)

"""`fashionrec serve`: the REST API and web page for a shop's data folder."""

from __future__ import annotations

import argparse

from fashionrec.cli import common
from fashionrec.config import DEFAULT_MODEL
from fashionrec.device import add_device_option
from fashionrec.workflows.serve import WRITE_TOKEN_ENV, resolve_write_token


def write_token(args: argparse.Namespace) -> str | None:
    """--write-token, else $FASHIONREC_WRITE_TOKEN, else None (writes disabled). Short tokens are refused."""
    return resolve_write_token(getattr(args, "write_token", None))


def cmd_serve(args) -> int:
    from fashionrec.workflows.serve import serve_shop

    serve_shop(
        args.data,
        host=args.host,
        port=args.port,
        workspace=common.workspace(args),
        progress=common.progress(args),
        default_model=args.model,
        write_token=write_token(args),
        max_arrivals=args.max_arrivals,
        max_arrival_mb=args.max_arrival_mb,
        workers=args.workers,
        body_timeout=args.body_timeout,
        max_uploads_per_client=args.max_uploads_per_client,
        device=args.device,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="REST API + web page for a shop's data folder",
        description="Serve the web page (/) and the REST API (/docs) for --data until interrupted; builds the "
        "artifacts in the workspace on the first start. Needs the serve extra.",
        epilog=common.examples(
            "fashionrec serve --data shop --port 8000",
            "FASHIONREC_WRITE_TOKEN=... fashionrec serve --data shop --host 0.0.0.0",
        ),
    )
    s.add_argument("--data", required=True, help="H&M-layout folder")
    s.add_argument("--port", type=int, default=8000, help="TCP port")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    s.add_argument(
        "--recommender",
        "--model",
        dest="model",
        action=common.RenamedOption,
        deprecated=("--model",),
        default=DEFAULT_MODEL,
        help="the recommender used when a request names none",
    )
    s.add_argument(
        "--write-token",
        default=None,
        help=f"enable POST/DELETE /items for requests with 'Authorization: Bearer TOKEN' (or set "
        f"${WRITE_TOKEN_ENV}); default: none, the server is read-only",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes sharing memory-mapped artifacts; more than 1 is read-only (no --write-token)",
    )
    s.add_argument("--max-arrivals", type=int, default=None, help="most new arrivals kept (default 10,000)")
    s.add_argument("--max-arrival-mb", type=float, default=None, help="storage cap for arrival images (default 512)")
    s.add_argument(
        "--body-timeout",
        type=float,
        default=None,
        help="seconds a request body may take to arrive; slower clients get 408 and are disconnected (default 30)",
    )
    s.add_argument(
        "--max-uploads-per-client",
        type=int,
        default=None,
        help="uploads (POST /items, /search/image) one client address may have in flight; more get 429 (default 4)",
    )
    add_device_option(s)
    s.set_defaults(func=cmd_serve)

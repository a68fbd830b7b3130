"""`fashionrec serve`: build or load the artifacts, then serve the REST API and the page with uvicorn."""

from __future__ import annotations

import os
import sys
import time

WRITE_TOKEN_ENV = "FASHIONREC_WRITE_TOKEN"
MIN_TOKEN_CHARS = 16


def write_token(args) -> str | None:
    """--write-token, else $FASHIONREC_WRITE_TOKEN, else None (writes disabled). Short tokens are refused."""
    from fashionrec.errors import FashionrecError

    token = getattr(args, "write_token", None) or os.environ.get(WRITE_TOKEN_ENV) or None
    if token is not None:
        token = token.strip()
        if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token:
            raise FashionrecError(f"the write token must be at least {MIN_TOKEN_CHARS} printable characters without "
                                  f"spaces (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)")
    return token


def serve_folder(args) -> int:
    import uvicorn

    from fashionrec.cli import _progress, _workspace
    from fashionrec.serving.app import create_app
    from fashionrec.serving.state import build_state

    t0 = time.time()
    token = write_token(args)
    state = build_state(args.data, workspace=_workspace(args), progress=_progress(args),
                        default_model=getattr(args, "model", None) or "hybrid",
                        max_arrivals=getattr(args, "max_arrivals", None),
                        max_arrival_bytes=int(args.max_arrival_mb * 1024 * 1024) if getattr(args, "max_arrival_mb", None) else None)
    app = create_app(state, write_token=token)
    import gc

    # The artifacts are millions of long-lived objects; freezing them keeps every later garbage collection from
    # walking them again (full collections otherwise show up as latency spikes under load).
    gc.collect()
    gc.freeze()
    url = f"http://{args.host}:{args.port}/"
    print(f"fashionrec serving {args.data} at {url} (API docs {url}docs); start-up {time.time() - t0:.1f}s", flush=True)
    print("writes (POST/DELETE /items): " + ("enabled for 'Authorization: Bearer <write token>'" if token else
          f"disabled (read-only; enable with --write-token or ${WRITE_TOKEN_ENV})"), flush=True)
    if token and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: serving on {args.host} over plain HTTP: the write token crosses the network in clear text; "
              f"put a TLS proxy in front", file=sys.stderr, flush=True)
    # uvloop + httptools: the C event loop and HTTP parser, about twice the requests per core of the defaults
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", loop="uvloop", http="httptools")
    return 0


def add_commands(sub) -> None:
    s = sub.add_parser("serve", help="REST API + web page for a shop's data folder")
    s.add_argument("--data", required=True)
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--model", default="hybrid", help="default recommender")
    s.add_argument("--write-token", default=None,
                   help=f"enable POST/DELETE /items for requests with 'Authorization: Bearer TOKEN' (or set "
                        f"${WRITE_TOKEN_ENV}); without it the server is read-only")
    s.add_argument("--max-arrivals", type=int, default=None, help="most new arrivals kept (default 10,000)")
    s.add_argument("--max-arrival-mb", type=float, default=None, help="storage cap for arrival images (default 512)")
    s.set_defaults(func=serve_folder)

"""`fashionrec serve`: build or load the artifacts, then serve the REST API and the page with uvicorn."""

from __future__ import annotations

import time


def serve_folder(args) -> int:
    import uvicorn

    from fashionrec.cli import _progress, _workspace
    from fashionrec.serving.app import create_app
    from fashionrec.serving.state import build_state

    t0 = time.time()
    state = build_state(args.data, workspace=_workspace(args), progress=_progress(args),
                        default_model=getattr(args, "model", None) or "hybrid")
    app = create_app(state)
    import gc

    # The artifacts are millions of long-lived objects; freezing them keeps every later garbage collection from
    # walking them again (full collections otherwise show up as latency spikes under load).
    gc.collect()
    gc.freeze()
    url = f"http://{args.host}:{args.port}/"
    print(f"fashionrec serving {args.data} at {url} (API docs {url}docs); start-up {time.time() - t0:.1f}s", flush=True)
    # uvloop + httptools: the C event loop and HTTP parser, about twice the requests per core of the defaults
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", loop="uvloop", http="httptools")
    return 0


def add_commands(sub) -> None:
    s = sub.add_parser("serve", help="REST API + web page for a shop's data folder")
    s.add_argument("--data", required=True)
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--model", default="hybrid", help="default recommender")
    s.set_defaults(func=serve_folder)

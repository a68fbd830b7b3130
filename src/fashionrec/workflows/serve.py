"""Serve a shop's data folder: build or load the artifacts, make the app, run it with uvicorn."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from fashionrec.config import DEFAULT_MODEL
from fashionrec.errors import FashionrecError

WRITE_TOKEN_ENV = "FASHIONREC_WRITE_TOKEN"
MIN_TOKEN_CHARS = 16
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def resolve_write_token(explicit: str | None) -> str | None:
    """The given token, else $FASHIONREC_WRITE_TOKEN, else None (writes disabled). Short tokens are refused."""
    token = explicit or os.environ.get(WRITE_TOKEN_ENV) or None
    if token is not None:
        token = token.strip()
        if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token:
            raise FashionrecError(f"the write token must be at least {MIN_TOKEN_CHARS} printable characters without "
                                  f"spaces (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)")
    return token


def serve_shop(data_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, workspace: str | Path | None = None,
               progress: bool = True, default_model: str | None = None, write_token: str | None = None,
               max_arrivals: int | None = None, max_arrival_mb: float | None = None) -> None:
    """Build the serving state (cached artifacts in the workspace), then serve until interrupted.

    Prints the address and whether writes are enabled once started (a server's start-up line, like uvicorn's)."""
    import gc

    import uvicorn

    from fashionrec.io import default_workspace
    from fashionrec.serving.app import create_app
    from fashionrec.serving.state import build_state

    t0 = time.time()
    token = resolve_write_token(write_token)
    state = build_state(data_dir, workspace=Path(workspace) if workspace else default_workspace(), progress=progress,
                        default_model=default_model or DEFAULT_MODEL, max_arrivals=max_arrivals,
                        max_arrival_bytes=int(max_arrival_mb * 1024 * 1024) if max_arrival_mb else None)
    app = create_app(state, write_token=token)
    # The artifacts are millions of long-lived objects; freezing them keeps every later garbage collection from
    # walking them again (full collections otherwise show up as latency spikes under load).
    gc.collect()
    gc.freeze()
    url = f"http://{host}:{port}/"
    print(f"fashionrec serving {data_dir} at {url} (API docs {url}docs); start-up {time.time() - t0:.1f}s", flush=True)
    print("writes (POST/DELETE /items): " + ("enabled for 'Authorization: Bearer <write token>'" if token else
          f"disabled (read-only; enable with --write-token or ${WRITE_TOKEN_ENV})"), flush=True)
    if token and host not in LOCAL_HOSTS:
        print(f"note: serving on {host} over plain HTTP: the write token crosses the network in clear text; "
              f"put a TLS proxy in front", file=sys.stderr, flush=True)
    # uvloop + httptools: the C event loop and HTTP parser, about twice the requests per core of the defaults
    uvicorn.run(app, host=host, port=port, log_level="warning", loop="uvloop", http="httptools")

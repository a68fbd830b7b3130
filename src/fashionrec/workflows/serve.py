"""Serve a shop's data folder: build or load the artifacts, make the app, run it with uvicorn."""

from __future__ import annotations

import os
import sys
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
            raise FashionrecError(
                f"the write token must be at least {MIN_TOKEN_CHARS} printable characters without "
                f"spaces (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)"
            )
    return token


def serve_shop(
    data_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workspace: str | Path | None = None,
    progress: bool = True,
    default_model: str | None = None,
    write_token: str | None = None,
    max_arrivals: int | None = None,
    max_arrival_mb: float | None = None,
    workers: int = 1,
    body_timeout: float | None = None,
    max_uploads_per_client: int | None = None,
    device: str = "auto",
) -> None:
    """Load the serving artifacts (building what is missing, with progress), then serve until interrupted.

    `workers` > 1: that many uvicorn processes over the same memory-mapped artifacts, read-only (see
    `fashionrec.serving.server`). `device`: where uploads are embedded (`fashionrec.device`). Prints the address
    and whether writes are enabled (a server's start-up lines)."""
    from fashionrec.extras import require

    require("serve", what="fashionrec serve needs the web server stack")
    from fashionrec.serving.server import check_workers, run

    token = resolve_write_token(write_token)
    check_workers(workers, token)
    print(
        "writes (POST/DELETE /items): "
        + (
            "enabled for 'Authorization: Bearer <write token>'"
            if token
            else f"disabled (read-only; enable with --write-token or ${WRITE_TOKEN_ENV}, one worker)"
        ),
        flush=True,
    )
    if token and host not in LOCAL_HOSTS:
        print(
            f"note: serving on {host} over plain HTTP: the write token crosses the network in clear text; "
            f"put a TLS proxy in front",
            file=sys.stderr,
            flush=True,
        )
    run(
        data_dir,
        host=host,
        port=port,
        workers=workers,
        workspace=workspace,
        progress=progress,
        default_model=default_model or DEFAULT_MODEL,
        write_token=token,
        max_arrivals=max_arrivals,
        max_arrival_mb=max_arrival_mb,
        body_timeout=body_timeout,
        max_uploads_per_client=max_uploads_per_client,
        device=device,
    )

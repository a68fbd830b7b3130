"""Run the server: `run(data_dir, workers=N, ...)`, what `fashionrec serve [--workers N]` calls.

One worker: the artifacts are loaded (or built) in this process and served from it; writes (new arrivals) are
possible with a write token.

Several workers: this process builds whatever is missing once (with progress), then uvicorn starts N worker
processes, each calling the factory `worker_app`, which loads the same artifacts without building anything: the
tables (precomputed lists, taggers, PCA) memory-mapped read-only, so the workers share one copy of them in the page
cache. Writes are refused (a new arrival would reach one worker's models and not the others', answers would depend
on which worker a request lands on): `run` raises at start when given a write token, and the workers' apps answer
POST/DELETE /items with 403.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
import time
from pathlib import Path

from fashionrec.errors import FashionrecError

CONFIG_ENV = "FASHIONREC_SERVE_CONFIG"  # set by `run` for its workers: the path of a JSON file of build_state args


def _state_args(data_dir, workspace, default_model, max_arrivals, max_arrival_mb, device) -> dict:
    from fashionrec.io import default_workspace

    return {
        "data_dir": str(Path(data_dir).resolve()),
        "workspace": str(Path(workspace).resolve()) if workspace else str(default_workspace()),
        "default_model": default_model,
        "max_arrivals": max_arrivals,
        "max_arrival_bytes": int(max_arrival_mb * 1024 * 1024) if max_arrival_mb else None,
        "device": device,
    }


def _limits(body_timeout: float | None, max_uploads_per_client: int | None) -> dict:
    """create_app's request limits, checked: a positive body timeout, at least one upload per client."""
    out = {}
    if body_timeout is not None:
        if not body_timeout > 0:
            raise FashionrecError(f"--body-timeout must be a positive number of seconds, not {body_timeout}")
        out["body_timeout"] = float(body_timeout)
    if max_uploads_per_client is not None:
        if max_uploads_per_client < 1:
            raise FashionrecError(f"--max-uploads-per-client must be at least 1, not {max_uploads_per_client}")
        out["max_uploads_per_client"] = int(max_uploads_per_client)
    return out


def check_workers(workers: int, write_token: str | None) -> None:
    """A positive worker count, and writes only with one worker."""
    if workers < 1:
        raise FashionrecError(f"workers must be a positive integer, not {workers}")
    if workers > 1 and write_token:
        raise FashionrecError(
            "writes (a write token) need one worker: with several, a new arrival would reach only "
            "the worker that took the request; serve writes with --workers 1"
        )


def check_device(device: str) -> None:
    """A device spec that `fashionrec.device.resolve_device` accepts, checked before anything loads (torch is
    imported here only for a CUDA spec: 'auto' and 'cpu' leave it to the backbone's loading thread)."""
    spec = (device or "auto").strip().lower()
    if spec in ("auto", "cpu"):
        return
    from fashionrec.device import resolve_device

    try:
        resolve_device(spec)
    except ValueError as e:
        raise FashionrecError(str(e)) from None


def run(
    data_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    workspace: str | Path | None = None,
    progress: bool = True,
    default_model: str = "hybrid",
    write_token: str | None = None,
    max_arrivals: int | None = None,
    max_arrival_mb: float | None = None,
    body_timeout: float | None = None,
    max_uploads_per_client: int | None = None,
    device: str = "auto",
) -> None:
    """Serve `data_dir` until interrupted (see the module docstring for what `workers` changes).
    `body_timeout` (seconds, default 30) and `max_uploads_per_client` (default 4): see `serving.middleware`.
    `device`: where uploads are embedded ('auto', 'cpu', 'cuda', 'cuda:N'; `fashionrec.device`)."""
    import uvicorn

    from fashionrec.serving.app import create_app
    from fashionrec.serving.build import build_state, ensure_artifacts

    check_workers(workers, write_token)
    check_device(device)
    limits = _limits(body_timeout, max_uploads_per_client)
    t0 = time.time()
    args = _state_args(data_dir, workspace, default_model, max_arrivals, max_arrival_mb, device)
    data = args.pop("data_dir")
    url = f"http://{host}:{port}/"
    if workers == 1:
        state = build_state(data, progress=progress, **args)  # loads, building what is missing first
        app = create_app(state, write_token=write_token, **limits)
        # Millions of long-lived objects: freezing them keeps later garbage collections from walking them again
        # (full collections otherwise show up as latency spikes under load).
        gc.collect()
        gc.freeze()
        print(f"fashionrec serving {data} at {url} (API docs {url}docs); start-up {time.time() - t0:.1f}s", flush=True)
        # auto: uvloop + httptools (the C event loop and HTTP parser, about twice the requests per core) when
        # installed, else asyncio's loop and h11
        uvicorn.run(app, host=host, port=port, log_level="warning", loop="auto", http="auto")
        return
    ensure_artifacts(data, progress=progress, **args)  # built once here; the workers only load them
    fd, cfg_path = tempfile.mkstemp(prefix="fashionrec-serve-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"data": data, **args, "limits": limits}, f)
    os.environ[CONFIG_ENV] = cfg_path
    try:
        print(
            f"fashionrec serving {data} at {url} with {workers} workers (read-only; artifacts ready in "
            f"{time.time() - t0:.1f}s)",
            flush=True,
        )
        uvicorn.run(
            "fashionrec.serving.server:worker_app",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level="warning",
            loop="auto",
            http="auto",
        )
    finally:
        Path(cfg_path).unlink(missing_ok=True)


def worker_app():
    """The app of one worker process (uvicorn's `factory=True`): artifacts built by `run`, tables memory-mapped."""
    from fashionrec.serving.app import create_app
    from fashionrec.serving.build import build_state

    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise FashionrecError(f"worker_app is started by fashionrec.serving.run (${CONFIG_ENV} is not set)")
    cfg = json.loads(Path(path).read_text())
    limits = cfg.pop("limits", {})
    state = build_state(cfg.pop("data"), progress=False, mmap=True, build=False, writes_allowed=False, **cfg)
    gc.collect()
    gc.freeze()
    return create_app(state, write_token=None, **limits)

"""REST API and web page. `create_app(state)` builds the app from explicit artifacts; nothing loads at import.

`run(data_dir, workers=N)` serves a data folder (one process, or N uvicorn workers sharing memory-mapped tables)."""

from fashionrec.serving.server import run

__all__ = ["run"]

"""The FastAPI app: `create_app(state, write_token=...)` assembles the guard (serving.middleware), the endpoints
(serving.routes, schemas in serving.schemas) and the error handlers. Bad input is answered
(401/403/404/409/413/415/422, from typed errors: serving.errors), never a 500. Nothing loads at import.
"""

from __future__ import annotations

import logging
import threading

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from fashionrec.errors import FashionrecError
from fashionrec.serving.errors import ServingError
from fashionrec.serving.middleware import DEFAULT_BODY_TIMEOUT, DEFAULT_UPLOADS_PER_CLIENT, GuardMiddleware
from fashionrec.serving.routes import router
from fashionrec.serving.state import ServingState

log = logging.getLogger(__name__)


def create_app(
    state: ServingState | None,
    *,
    write_token: str | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    max_uploads_per_client: int = DEFAULT_UPLOADS_PER_CLIENT,
) -> FastAPI:
    """The app for `state` (None: an app that only documents its schema). Nothing is loaded here or at import.

    `write_token`: None (the default) disables writes; otherwise POST/DELETE /items need it as a Bearer token.
    `body_timeout`: seconds a request body may take to arrive (then 408, connection closed);
    `max_uploads_per_client`: uploads one client address may have in flight (more: 429)."""
    if not body_timeout > 0:
        raise FashionrecError(f"body_timeout must be a positive number of seconds, not {body_timeout}")
    if max_uploads_per_client < 1:
        raise FashionrecError(f"max_uploads_per_client must be at least 1, not {max_uploads_per_client}")
    app = FastAPI(
        title="fashionrec",
        version="0.1.0",
        description="Similar items, personalised recommendations and photo search for a fashion catalog. "
        "Writes (POST /items, DELETE /items/{id}) need 'Authorization: Bearer <write token>'.",
    )
    app.state.fr = state
    app.state.token = write_token.encode() if write_token else None
    app.state.heavy = threading.BoundedSemaphore(2)  # uploads decoded/embedded at once; more wait, not thrash 2 cores
    app.state.image_checks = {}  # item -> (path, size, mtime_ns, media type or None)
    app.add_middleware(
        GuardMiddleware,
        write_token=write_token,
        body_timeout=body_timeout,
        max_uploads_per_client=max_uploads_per_client,
    )
    app.include_router(router)
    if state is not None:
        state.start_backbone()  # torch loads beside the server: lookups are answered meanwhile

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError):
        return JSONResponse(status_code=exc.status, content={"detail": str(exc)}, headers=exc.headers)

    @app.exception_handler(FashionrecError)
    async def _fashionrec_error(request: Request, exc: FashionrecError):  # bad input found deeper down (data errors)
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # FastAPI's default echoes the offending input, and a NaN or Infinity in a JSON body then fails to
        # serialise (500). Location, message and type say what to fix.
        detail = [
            {
                "loc": [x if isinstance(x, int) else str(x) for x in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(405)
    async def _method_not_allowed(request: Request, exc: Exception):
        # Starlette's 405 lists the methods of the first route whose path matched; GET and DELETE /items/{id} are
        # two routes, so collect the methods of every route with this path.
        from starlette.routing import Match

        methods = set()
        for route in [*app.router.routes, *router.routes]:  # the router's own routes: FastAPI wraps an included one
            match, _ = route.matches({**request.scope, "method": "__none__"})
            if match != Match.NONE and getattr(route, "methods", None):
                methods |= set(route.methods)
        headers = {"Allow": ", ".join(sorted(methods))} if methods else {}
        return JSONResponse(status_code=405, content={"detail": "Method Not Allowed"}, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # last resort: a JSON answer, the cause in the log
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(
            status_code=500, content={"detail": f"internal error ({type(exc).__name__}); see the server log"}
        )

    return app

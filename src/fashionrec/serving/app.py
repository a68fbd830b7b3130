"""The FastAPI app: `create_app(state, write_token=...)`. Bad input is answered (401/403/404/409/413/415/422),
never a 500.

Hostile-input rules, in one place:
- every response carries nosniff, X-Frame-Options DENY, Referrer-Policy no-referrer and a Content-Security-Policy
  (the page's allows only its own script, style and images; API answers allow nothing);
- request bodies are capped before they are read: by Content-Length at once, and while streaming (chunked);
- writes (POST /items, DELETE /items/{id}) need `Authorization: Bearer <token>` and a token configured with
  `fashionrec serve --write-token` / FASHIONREC_WRITE_TOKEN; checked before the body is read;
- image decoding and embedding run in worker threads (never on the event loop), pixel counts are capped from the
  header before any pixel is decoded, and at most two uploads are decoded at once;
- GET /images/{id} serves only files inside the data folder (or the arrivals folder) that open as images, with
  the content type of the format actually found.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, StringConstraints
from typing_extensions import Annotated

from fashionrec.data.images import ImageDecodeError, decode_image
from fashionrec.errors import FashionrecError
from fashionrec.serving.state import (ArrivalConflict, ArrivalLimit, ServingState, create_arrival, embed_image,
                                      remove_arrival)

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_MULTIPART_OVERHEAD = 64 * 1024          # boundaries and form fields around the file
MAX_JSON_BYTES = 1024 * 1024                # POST /recommendations: 500 ids fit in 40 KB
MAX_UPLOAD_PIXELS = 40_000_000              # header check, before decoding (a 48 Mpx JPEG is decoded at draft scale)
UPLOAD_DRAFT_SIZE = 512                     # JPEGs decode at the smallest DCT scale still >= 512 px
MAX_NAME_CHARS = 200
MAX_LABEL_CHARS = 100
IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff"}
SERVED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif",
                  "BMP": "image/bmp", "TIFF": "image/tiff"}
# Ids of new arrivals become file names: letters and digits first, then letters, digits, '_', '-', '.';
# fullmatch, so '.', '..', 'a/b' and 'x\n' (which `$` would let through) are refused.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
ID_RE = re.compile(ID_PATTERN[1:-1])
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

CSP_PAGE = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
CSP_API = "default-src 'none'; frame-ancestors 'none'; sandbox"
# Swagger UI and ReDoc load their script and style from a CDN and start with an inline script.
CSP_DOCS = ("default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
            "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
            "https://cdn.redoc.ly; connect-src 'self'; worker-src blob:; frame-ancestors 'none'")
_CSP_PAGE, _CSP_API, _CSP_DOCS = CSP_PAGE.encode(), CSP_API.encode(), CSP_DOCS.encode()
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]


# ---------------------------------------------------------------------------------------------- schemas
class ErrorOut(BaseModel):
    detail: Union[str, list[dict[str, Any]]] = Field(..., description="what is wrong (a list for invalid parameters)")


class RecItem(BaseModel):
    id: str
    score: float
    because: list[str] = Field(default_factory=list, description="history items that led to this recommendation")
    name: Optional[str] = None
    category: Optional[str] = None
    image_url: Optional[str] = None


class RecommendationsOut(BaseModel):
    user: Optional[str] = None
    model: str
    items: list[RecItem]


ItemId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class HistoryIn(BaseModel):
    history: list[ItemId] = Field(..., min_length=1, max_length=500, description="item ids, oldest first")
    k: int = Field(12, ge=1, le=100)
    model: Optional[Annotated[str, StringConstraints(max_length=64)]] = None
    exclude_bought: bool = False


class Tag(BaseModel):
    label: str
    probability: float


class ImageSearchOut(BaseModel):
    tags: dict[str, list[Tag]]
    similar: list[RecItem]


class ItemOut(BaseModel):
    id: str
    image_url: Optional[str] = None
    name: Optional[str] = None
    category: Optional[str] = None
    colour: Optional[str] = None
    type: Optional[str] = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class HistoryItem(ItemOut):
    date: str


class UserOut(BaseModel):
    id: str
    purchases: int
    history: list[HistoryItem]


class CustomerOut(BaseModel):
    id: str
    purchases: int


class HealthOut(BaseModel):
    status: str
    items: int
    customers: int
    models: list[str]
    default_model: str
    index: str
    uptime_s: float
    writes_enabled: bool


def _err(status: int, msg: str):
    raise HTTPException(status_code=status, detail=msg)


def _responses(*codes: int) -> dict:
    return {c: {"model": ErrorOut} for c in codes}


class _BodyTooLarge(HTTPException):
    pass


# ---------------------------------------------------------------------------------------------- middleware
def write_denied(authorization: Optional[bytes], token: Optional[bytes]) -> Optional[tuple[int, str]]:
    """(status, reason) when a write must be refused, else None. 403: writes disabled or wrong token;
    401: no or malformed `Authorization: Bearer` header (a token is configured, so credentials could help)."""
    if not token:
        return 403, ("writes are disabled on this server: start it with --write-token TOKEN (or the environment "
                     "variable FASHIONREC_WRITE_TOKEN) and send 'Authorization: Bearer TOKEN'")
    if not authorization:
        return 401, "this request changes the catalog: send 'Authorization: Bearer <write token>'"
    scheme, _, cred = authorization.partition(b" ")
    cred = cred.strip()
    if scheme.lower() != b"bearer" or not cred:
        return 401, "malformed Authorization header: expected 'Bearer <write token>'"
    if not hmac.compare_digest(cred, token):
        return 403, "wrong write token"
    return None


def _is_write(method: str, path: str) -> bool:
    return (method == "POST" and path.rstrip("/") == "/items") or (method == "DELETE" and path.startswith("/items/"))


class GuardMiddleware:
    """Pure ASGI (no per-request task or body copy): security headers on every response; writes authorised and
    bodies capped before the application reads a byte of them."""

    def __init__(self, app, write_token: Optional[str]):
        self.app = app
        self.token = write_token.encode() if write_token else None

    @staticmethod
    def _csp(path: str) -> bytes:
        if path == "/" or path.startswith("/static/"):
            return _CSP_PAGE
        if path.startswith(("/docs", "/redoc")):
            return _CSP_DOCS
        return _CSP_API

    @staticmethod
    def _limit(path: str) -> int:
        if path.rstrip("/") in ("/items", "/search/image"):
            return MAX_UPLOAD_BYTES + MAX_MULTIPART_OVERHEAD
        return MAX_JSON_BYTES

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        csp = self._csp(path)
        started = False

        async def send_secured(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-security-policy"]
                message = {**message, "headers": headers + SECURITY_HEADERS + [(b"content-security-policy", csp)]}
            await send(message)

        async def answer(status: int, detail: str, extra: list | None = None):
            import orjson

            body = orjson.dumps({"detail": detail})
            await send_secured({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                *(extra or [])]})
            await send_secured({"type": "http.response.body", "body": body})

        headers = dict(scope.get("headers") or [])
        if _is_write(method, path):
            denied = write_denied(headers.get(b"authorization"), self.token)
            if denied:
                extra = [(b"www-authenticate", b'Bearer realm="fashionrec writes"')] if denied[0] == 401 else []
                return await answer(*denied, extra=extra)
        if method in ("POST", "PUT", "PATCH"):
            limit = self._limit(path)
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                return await answer(413, f"request body is {int(declared):,} bytes; the limit here is {limit:,} "
                                         f"(uploads: {MAX_UPLOAD_BYTES:,} bytes per image)")
            received = 0

            async def capped_receive():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:  # a chunked body (no Content-Length) that keeps coming
                        raise _BodyTooLarge(413, f"request body is over the {limit:,}-byte limit "
                                                 f"(uploads: {MAX_UPLOAD_BYTES:,} bytes per image)")
                return message

            try:
                return await self.app(scope, capped_receive, send_secured)
            except _BodyTooLarge as e:
                if not started:
                    return await answer(413, e.detail)
                raise
        return await self.app(scope, receive, send_secured)


# ---------------------------------------------------------------------------------------------- the app
def create_app(state: ServingState, *, write_token: Optional[str] = None) -> FastAPI:
    """`write_token`: None (the default) disables writes; otherwise POST/DELETE /items need it as a Bearer token."""
    app = FastAPI(title="fashionrec", version="0.1.0",
                  description="Similar items, personalised recommendations and photo search for a fashion catalog. "
                              "Writes (POST /items, DELETE /items/{id}) need 'Authorization: Bearer <write token>'.")
    app.state.fr = state
    app.add_middleware(GuardMiddleware, write_token=write_token)
    bearer = HTTPBearer(auto_error=False, description="the server's write token (fashionrec serve --write-token)")
    token_bytes = write_token.encode() if write_token else None
    heavy = threading.BoundedSemaphore(2)   # uploads decoded/embedded at once; more wait instead of thrashing 2 cores
    image_checks: dict[str, tuple] = {}      # item -> (path, size, mtime_ns, media type or None)

    def writer(request: Request, _cred: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        """Also enforced by the middleware before the body is read; declared here for the OpenAPI schema."""
        denied = write_denied(request.headers.get("authorization", "").encode("latin-1") or None, token_bytes)
        if denied:
            _err(*denied)

    def items_json(recs, k: Optional[int] = None) -> list[dict]:
        """The hot path: plain dicts serialised by orjson (the response models still document the schema)."""
        out = []
        for item, score, because in recs:
            if item in state.removed:
                continue
            info = state.item_info(item)
            out.append({"id": item, "score": round(float(score), 6), "because": list(because), "name": info["name"],
                        "category": info["category"], "image_url": info["image_url"]})
        return out[:k] if k is not None else out

    def json_response(obj, status: int = 200) -> Response:
        import orjson

        return Response(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                        media_type="application/json")

    def model_or_422(name: Optional[str]):
        name = name or state.default_model
        if name not in state.models:
            _err(422, f"unknown model '{name}'; available: {sorted(state.models)}")
        return name

    def similar(vec: np.ndarray, k: int, category: Optional[str], exclude=()) -> list:
        ids, scores = state.index.search(vec[None], k, category=category, exclude=exclude)
        return [(i, s, []) for i, s in zip(ids[0], scores[0]) if i]

    def read_upload(file: UploadFile):
        """The upload's bytes and decoded image (in a worker thread): 413/415/422 for what is not a usable photo."""
        data = file.file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            _err(413, f"upload is over the {MAX_UPLOAD_BYTES:,}-byte limit")
        ctype = (file.content_type or "").split(";")[0].strip().lower()
        if ctype and ctype not in IMAGE_TYPES and ctype != "application/octet-stream":
            _err(415, f"'{file.filename}' is {ctype}, not an image (accepted: {sorted(IMAGE_TYPES)})")
        if not data:
            _err(422, f"'{file.filename}': empty file (0 bytes), not an image")
        try:
            img = decode_image(data, source=file.filename or "upload", max_pixels=MAX_UPLOAD_PIXELS,
                               draft_size=UPLOAD_DRAFT_SIZE)
        except ImageDecodeError as e:
            msg = str(e)
            if "decompression bomb" in msg or "pixel limit" in msg:
                _err(413, msg)
            if "cannot identify image file" in msg:
                _err(415, f"'{file.filename}' is not an image: {msg}")
            _err(422, msg)
        return data, img

    def text_field(value: Optional[str], what: str, limit: int) -> Optional[str]:
        if value is None:
            return None
        value = value.strip()
        if len(value) > limit:
            _err(422, f"{what} is {len(value):,} characters; at most {limit}")
        if _CONTROL.search(value):
            _err(422, f"{what} contains control characters")
        return value or None

    @app.exception_handler(FashionrecError)
    async def _fashionrec_error(request: Request, exc: FashionrecError):
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # FastAPI's default echoes the offending input, and a NaN or Infinity in a JSON body then fails to
        # serialise (500). Location, message and type say what to fix.
        detail = [{"loc": [x if isinstance(x, int) else str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(405)
    async def _method_not_allowed(request: Request, exc: Exception):
        # Starlette's 405 lists the methods of the first route whose path matched; GET and DELETE /items/{id} are
        # two routes, so collect the methods of every route with this path.
        from starlette.routing import Match

        methods = set()
        for route in app.router.routes:
            match, _ = route.matches({**request.scope, "method": "__none__"})
            if match != Match.NONE and getattr(route, "methods", None):
                methods |= set(route.methods)
        headers = {"Allow": ", ".join(sorted(methods))} if methods else {}
        return JSONResponse(status_code=405, content={"detail": "Method Not Allowed"}, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # last resort: a JSON answer, the cause in the log
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(status_code=500, content={"detail": f"internal error ({type(exc).__name__}); see the server log"})

    @app.get("/health", response_model=HealthOut)
    async def health():
        m = state.models[state.default_model]
        return json_response({"status": "ok", "items": m.data.n_items - len(state.removed),
                              "customers": len(state.precomputed[state.default_model]), "models": sorted(state.models),
                              "default_model": state.default_model, "index": state.index.kind,
                              "uptime_s": round(time.time() - state.started, 1), "writes_enabled": bool(write_token)})

    @app.get("/items/{item_id}", response_model=ItemOut, responses=_responses(404))
    async def get_item(item_id: str):
        if not state.known_item(item_id):
            _err(404, f"unknown item '{item_id}'")
        return json_response(state.item_info(item_id))

    @app.get("/items/{item_id}/similar", response_model=list[RecItem], responses=_responses(404, 422))
    async def get_similar(item_id: str, k: int = Query(12, ge=1, le=100),
                          category: Optional[str] = Query(None, max_length=MAX_LABEL_CHARS)):
        if item_id not in state.index:
            _err(404, f"unknown item '{item_id}' (or it has no image)")
        return json_response(items_json(similar(state.index.vector(item_id), k, category, exclude=[item_id])))

    @app.get("/users/{user_id}", response_model=UserOut, responses=_responses(404, 422))
    async def get_user(user_id: str, limit: int = Query(24, ge=1, le=500)):
        m = state.models[state.default_model]
        if user_id not in state.precomputed[state.default_model]:
            _err(404, f"unknown customer '{user_id}'")
        h, t = m.data.history(user_id)
        hist = [{"id": m.data.item_ids[j], "date": str(np.datetime_as_string(ts, unit="D")), **state.item_info(m.data.item_ids[j])}
                for j, ts in list(zip(h, t))[::-1][:limit]]
        return json_response({"id": user_id, "purchases": int(len(h)), "history": hist})

    @app.get("/users/{user_id}/recommendations", response_model=RecommendationsOut, responses=_responses(404, 422))
    async def get_recs(user_id: str, k: int = Query(12, ge=1, le=100),
                       model: Optional[str] = Query(None, max_length=64)):
        name = model_or_422(model)
        table = state.precomputed[name]
        if user_id not in table:
            _err(404, f"unknown customer '{user_id}'")
        if k <= state.k_precomputed:
            recs = table[user_id][:k]
        else:  # scored live: in a worker thread, under the lock that new arrivals are committed with
            def live():
                with state.lock:
                    return [(r.item, r.score, r.because)
                            for r in state.models[name].recommend(user_id, k + len(state.removed))]
            recs = await run_in_threadpool(live)
        return json_response({"user": user_id, "model": name, "items": items_json(recs, k)})

    @app.post("/recommendations", response_model=RecommendationsOut, responses=_responses(400, 413, 422))
    def post_recs(body: HistoryIn):
        name = model_or_422(body.model)
        m = state.models[name]
        unknown = [i for i in body.history if not state.known_item(i)]
        if unknown:
            _err(422, f"unknown item id(s) in history: {unknown[:5]}")
        with state.lock:
            recs = m.recommend_from_history(body.history, body.k + len(state.removed), exclude_bought=body.exclude_bought)
        return json_response({"user": None, "model": name,
                              "items": items_json([(r.item, r.score, r.because) for r in recs], body.k)})

    @app.post("/search/image", response_model=ImageSearchOut, responses=_responses(400, 413, 415, 422))
    def search_image(file: UploadFile = File(...), k: int = Query(12, ge=1, le=100),
                     category: Optional[str] = Query(None, max_length=MAX_LABEL_CHARS)):
        with heavy:
            data, img = read_upload(file)
            raw, vec = embed_image(state, img)
        tags = {t.column: t.predict(raw) for t in state.taggers}
        return json_response({"tags": tags, "similar": items_json(similar(vec, k, category))})

    @app.post("/items", status_code=201, response_model=ItemOut, dependencies=[Depends(writer)],
              responses=_responses(400, 401, 403, 409, 413, 415, 422))
    def post_item(file: UploadFile = File(...), item_id: str = Form(..., alias="id", max_length=64, pattern=ID_PATTERN),
                  name: Optional[str] = Form(None, max_length=10 * MAX_NAME_CHARS),
                  category: Optional[str] = Form(None, max_length=10 * MAX_LABEL_CHARS),
                  colour: Optional[str] = Form(None, max_length=10 * MAX_LABEL_CHARS)):
        """A new arrival, recommendable at once and kept across restarts. Concurrent posts of one id: the first
        wins (201), the others get 409; an existing item is never replaced."""
        if not ID_RE.fullmatch(item_id):
            _err(422, "id must be 1-64 characters: a letter or digit, then letters, digits, '_', '-', '.'")
        meta = {"prod_name": text_field(name, "name", MAX_NAME_CHARS),
                "product_group_name": text_field(category, "category", MAX_LABEL_CHARS),
                "colour_group_name": text_field(colour, "colour", MAX_LABEL_CHARS)}
        meta = {k: v for k, v in meta.items() if v}
        if state.known_item(item_id) or item_id in state.pending:  # cheap early answer; the reservation decides
            _err(409, f"item '{item_id}' already exists")
        with heavy:
            data, img = read_upload(file)
            try:
                info = create_arrival(state, item_id, data, meta, image=img)
            except ArrivalConflict as e:
                _err(409, str(e))
            except ArrivalLimit as e:
                _err(413 if "storage" in str(e) else 409, str(e))
        return json_response(info, status=201)

    @app.delete("/items/{item_id}", status_code=204, dependencies=[Depends(writer)],
                responses=_responses(401, 403, 404, 409))
    def delete_item(item_id: str):
        """Delete a new arrival (catalog items are read-only: 409)."""
        try:
            remove_arrival(state, item_id)
        except KeyError:
            _err(404, f"unknown item '{item_id}'")
        except ArrivalConflict as e:
            _err(409, str(e))
        return Response(status_code=204)

    def checked_image(item_id: str) -> Optional[tuple[Path, str]]:
        p = state.safe_image_path(item_id)
        if p is None:
            return None
        try:
            st = p.stat()
        except OSError:
            return None
        hit = image_checks.get(item_id)
        if hit and hit[:3] == (p, st.st_size, st.st_mtime_ns):
            return (p, hit[3]) if hit[3] else None
        media = None
        try:
            from PIL import Image

            with Image.open(p) as im:
                fmt = im.format
                im.verify()
            media = SERVED_FORMATS.get(fmt)
        except Exception:  # not an image, truncated, a bomb: not served
            media = None
        image_checks[item_id] = (p, st.st_size, st.st_mtime_ns, media)
        return (p, media) if media else None

    @app.get("/images/{item_id}", responses={200: {"content": {m: {} for m in sorted(set(SERVED_FORMATS.values()))},
                                                   "description": "the item's photo"}, **_responses(404)},
             response_class=Response)
    async def get_image(item_id: str):
        found = await run_in_threadpool(checked_image, item_id)
        if found is None:
            _err(404, f"no image for item '{item_id}'")
        p, media = found
        return FileResponse(p, media_type=media, headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/customers", response_model=list[CustomerOut], responses=_responses(422))
    async def customers(limit: int = Query(50, ge=1, le=1000)):
        m = state.models[state.default_model]
        counts = m.data.matrix.getnnz(axis=1)
        order = np.argsort(-counts)[:limit]
        return json_response([{"id": m.data.user_ids[j], "purchases": int(counts[j])} for j in order])

    @app.get("/search/items", response_model=list[ItemOut], responses=_responses(422))
    def search_items(q: str = Query(..., min_length=1, max_length=100), limit: int = Query(20, ge=1, le=100)):
        meta = state.shop.catalog.metadata
        ql = q.lower()
        hits = [i for i in state.shop.catalog.image_paths if i.startswith(q)][:limit]
        if len(hits) < limit and "prod_name" in meta.columns:
            names = meta["prod_name"].astype(str).str.lower()
            more = [i for i in names.index[names.str.contains(re.escape(ql))] if i in state.index and i not in hits]
            hits += more[: limit - len(hits)]
        return json_response([state.item_info(i) for i in hits])

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text())

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)  # no icon; answered so browsers log no 404

    static_types = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in static_types:  # a fixed list: no path from the request ever reaches the file system
            _err(404, "not found")
        return Response((STATIC / name).read_bytes(), media_type=static_types[name],
                        headers={"Cache-Control": "no-cache"})

    return app

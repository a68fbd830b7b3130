"""The FastAPI app: `create_app(state, write_token=...)`, endpoints on one APIRouter taking the state through a
dependency. Bad input is answered (401/403/404/409/413/415/422, from typed errors: serving.errors), never a 500.

Hostile-input rules, in one place:
- every response carries nosniff, X-Frame-Options DENY, Referrer-Policy no-referrer and a Content-Security-Policy
  (the page's allows only its own script, style and images; API answers allow nothing);
- request bodies are capped before they are read: by Content-Length at once, and while streaming (chunked); a
  body must arrive within `body_timeout` seconds (default 30) of the request, else 408 and the connection is
  closed; each client (by address) has at most `max_uploads_per_client` uploads in flight (default 4), more: 429;
- writes (POST /items, DELETE /items/{id}) need `Authorization: Bearer <token>` and a token configured with
  `fashionrec serve --write-token` / FASHIONREC_WRITE_TOKEN; checked before the body is read;
- image decoding and embedding run in worker threads (never on the event loop), pixel counts are capped from the
  header before any pixel is decoded, and at most two uploads are decoded at once;
- GET /images/{id} serves only files inside the data folder (or the arrivals folder) that open as images, with
  the content type of the format actually found.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import threading
import time
import unicodedata
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, StringConstraints

from fashionrec.data.images import ImageDecodeError, decode_image
from fashionrec.errors import FashionrecError
from fashionrec.serving.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServingError,
    UnsupportedMediaType,
    WritesRefused,
)
from fashionrec.serving.state import ServingState, Snapshot, create_arrival, embed_image, remove_arrival

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_MULTIPART_OVERHEAD = 64 * 1024  # boundaries and form fields around the file
MAX_JSON_BYTES = 1024 * 1024  # POST /recommendations: 500 ids fit in 40 KB
MAX_UPLOAD_PIXELS = 40_000_000  # header check, before decoding (a 48 Mpx JPEG is decoded at draft scale)
UPLOAD_DRAFT_SIZE = 512  # JPEGs decode at the smallest DCT scale still >= 512 px
MAX_NAME_CHARS = 200
MAX_LABEL_CHARS = 100
IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff"}
SERVED_FORMATS = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
# Ids of new arrivals become file names: letters and digits first, then letters, digits, '_', '-', '.';
# fullmatch, so '.', '..', 'a/b' and 'x\n' (which `$` would let through) are refused.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
ID_RE = re.compile(ID_PATTERN[1:-1])
DEFAULT_BODY_TIMEOUT = 30.0  # seconds to receive a whole request body
DEFAULT_UPLOADS_PER_CLIENT = 4  # uploads (POST /items, /search/image) one client address may have in flight

CSP_PAGE = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
CSP_API = "default-src 'none'; frame-ancestors 'none'; sandbox"
# Swagger UI and ReDoc load their script and style from a CDN and start with an inline script.
CSP_DOCS = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
    "https://cdn.redoc.ly; connect-src 'self'; worker-src blob:; frame-ancestors 'none'"
)
_CSP_PAGE, _CSP_API, _CSP_DOCS = CSP_PAGE.encode(), CSP_API.encode(), CSP_DOCS.encode()
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


# ---------------------------------------------------------------------------------------------- schemas
class ErrorOut(BaseModel):
    detail: str | list[dict[str, Any]] = Field(..., description="what is wrong (a list for invalid parameters)")


class RecItem(BaseModel):
    id: str
    score: float
    because: list[str] = Field(default_factory=list, description="history items that led to this recommendation")
    name: str | None = None
    category: str | None = None
    image_url: str | None = None


class RecommendationsOut(BaseModel):
    user: str | None = None
    model: str
    items: list[RecItem]


ItemId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class HistoryIn(BaseModel):
    history: list[ItemId] = Field(..., min_length=1, max_length=500, description="item ids, oldest first")
    k: int = Field(12, ge=1, le=100)
    model: Annotated[str, StringConstraints(max_length=64)] | None = None
    exclude_bought: bool = False
    items: list[ItemId] | None = Field(
        None, max_length=20000, description="rank only these item ids (a 'new in' list); default: the whole catalog"
    )


class Tag(BaseModel):
    label: str
    probability: float


class ImageSearchOut(BaseModel):
    tags: dict[str, list[Tag]]
    similar: list[RecItem]


class ItemOut(BaseModel):
    id: str
    image_url: str | None = None
    name: str | None = None
    category: str | None = None
    colour: str | None = None
    type: str | None = None
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
    image_search: str = Field("ready", description="'loading' while the backbone (torch) loads after start-up")
    snapshot: int = Field(0, description="version of the model snapshot; +1 per committed write")


def _responses(*codes: int) -> dict:
    return {c: {"model": ErrorOut} for c in codes}


class _BodyTooLarge(HTTPException):
    pass


class _BodyTimeout(HTTPException):
    pass


# ---------------------------------------------------------------------------------------------- middleware
def write_denied(authorization: bytes | None, token: bytes | None) -> tuple[int, str] | None:
    """(status, reason) when a write must be refused, else None. 403: writes disabled or wrong token;
    401: no or malformed `Authorization: Bearer` header (a token is configured, so credentials could help)."""
    if not token:
        return 403, (
            "writes are disabled on this server: start it with --write-token TOKEN (or the environment "
            "variable FASHIONREC_WRITE_TOKEN) and send 'Authorization: Bearer TOKEN'"
        )
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

    def __init__(
        self,
        app,
        write_token: str | None,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        max_uploads_per_client: int = DEFAULT_UPLOADS_PER_CLIENT,
    ):
        self.app = app
        self.token = write_token.encode() if write_token else None
        self.body_timeout = float(body_timeout)
        self.max_uploads = int(max_uploads_per_client)
        self.uploads: dict[str, int] = {}  # client address -> uploads in flight (the event loop is one thread)

    @staticmethod
    def _is_upload(method: str, path: str) -> bool:
        return method == "POST" and path.rstrip("/") in ("/items", "/search/image")

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
        close = False  # the body was cut short (too slow, too large): the connection is closed after the answer

        async def send_secured(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-security-policy"]
                if close:  # else the server would keep reading the rest of the body as the next request's bytes
                    headers = [(k, v) for k, v in headers if k.lower() != b"connection"] + [(b"connection", b"close")]
                message = {**message, "headers": headers + SECURITY_HEADERS + [(b"content-security-policy", csp)]}
            await send(message)

        async def answer(status: int, detail: str, extra: list | None = None):
            import orjson

            body = orjson.dumps({"detail": detail})
            await send_secured(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        *(extra or []),
                    ],
                }
            )
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
                return await answer(
                    413,
                    f"request body is {int(declared):,} bytes; the limit here is {limit:,} "
                    f"(uploads: {MAX_UPLOAD_BYTES:,} bytes per image)",
                )
            client = (scope.get("client") or ("?", 0))[0]
            upload = self._is_upload(method, path)
            if upload and self.uploads.get(client, 0) >= self.max_uploads:
                return await answer(
                    429,
                    f"{self.max_uploads} uploads from this client are in progress; send the next when one is done",
                    extra=[(b"retry-after", b"1")],
                )
            received = 0
            deadline = time.monotonic() + self.body_timeout
            body_done = False

            async def capped_receive():
                nonlocal received, body_done, close
                if body_done:  # after the body: disconnect notices are not timed
                    return await receive()
                left = deadline - time.monotonic()
                try:
                    message = await asyncio.wait_for(receive(), timeout=max(left, 0.001))
                except TimeoutError:
                    close = True
                    raise _BodyTimeout(
                        408, f"the request body did not arrive within {self.body_timeout:g} seconds"
                    ) from None
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:  # a chunked body (no Content-Length) that keeps coming
                        close = True
                        raise _BodyTooLarge(
                            413,
                            f"request body is over the {limit:,}-byte limit "
                            f"(uploads: {MAX_UPLOAD_BYTES:,} bytes per image)",
                        )
                    body_done = not message.get("more_body", False)
                return message

            if upload:
                self.uploads[client] = self.uploads.get(client, 0) + 1
            try:
                return await self.app(scope, capped_receive, send_secured)
            except (_BodyTooLarge, _BodyTimeout) as e:
                if not started:  # answered, and the connection closed: the rest of the body is never read
                    return await answer(e.status_code, e.detail)
                raise
            finally:
                if upload:
                    n = self.uploads.get(client, 1) - 1
                    if n > 0:
                        self.uploads[client] = n
                    else:
                        self.uploads.pop(client, None)
        return await self.app(scope, receive, send_secured)


# ---------------------------------------------------------------------------------------------- state, errors
async def get_state(request: Request) -> ServingState:
    """The dependency every endpoint takes: the app's state, given to `create_app` (never a module global).

    `async`: a plain `def` dependency is run in the thread pool, one thread hop per request; under 50 concurrent
    clients those hops and the GIL hand-offs between pool threads made the p99 of table lookups 5x the p95."""
    state = request.app.state.fr
    if state is None:
        raise WritesRefused("this app was built without data (create_app(None) serves only its schema)")
    return state


State = Annotated[ServingState, Depends(get_state)]
router = APIRouter()
_bearer = HTTPBearer(auto_error=False, description="the server's write token (fashionrec serve --write-token)")


def writer(request: Request, state: State, _cred: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """Also enforced by the middleware before the body is read; declared here for the OpenAPI schema."""
    denied = write_denied(request.headers.get("authorization", "").encode("latin-1") or None, request.app.state.token)
    if denied:
        raise HTTPException(status_code=denied[0], detail=denied[1])
    if not state.writes_allowed or state.write_refusal:
        raise WritesRefused(
            state.write_refusal
            or "writes are refused by a server with several workers (each worker holds its own copy "
            "of the models; a new arrival would reach only one): run it with one worker to add items"
        )


def items_json(state: ServingState, snap: Snapshot, recs, k: int | None = None) -> list[dict]:
    """The hot path: plain dicts serialised by orjson (the response models still document the schema)."""
    out = []
    for item, score, because in recs:
        if item in snap.removed:
            continue
        info = state.item_info(item, snap)
        out.append(
            {
                "id": item,
                "score": round(float(score), 6),
                "because": list(because),
                "name": info["name"],
                "category": info["category"],
                "image_url": info["image_url"],
            }
        )
    return out[:k] if k is not None else out


def json_response(obj, status: int = 200) -> Response:
    import orjson

    return Response(
        orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type="application/json"
    )


def model_name(state: ServingState, snap: Snapshot, name: str | None) -> str:
    name = name or state.default_model
    if name not in snap.models:
        raise InvalidInput(f"unknown model '{name}'; available: {sorted(snap.models)}")
    return name


def read_upload(file: UploadFile):
    """The upload's bytes and decoded image (call from a worker thread). The header is read first to type what is
    wrong: 413 (bytes or pixels over the limit), 415 (not an image), 422 (an image that does not decode)."""
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    data = file.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"upload is over the {MAX_UPLOAD_BYTES:,}-byte limit")
    ctype = (file.content_type or "").split(";")[0].strip().lower()
    if ctype and ctype not in IMAGE_TYPES and ctype != "application/octet-stream":
        raise UnsupportedMediaType(f"'{file.filename}' is {ctype}, not an image (accepted: {sorted(IMAGE_TYPES)})")
    if not data:
        raise InvalidInput(f"'{file.filename}': empty file (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # the header only: no pixel is decoded here
                w, h = im.size
    except UnidentifiedImageError as e:
        raise UnsupportedMediaType(f"'{file.filename}' is not an image: {e}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PayloadTooLarge(f"'{file.filename}' refused: over the pixel limit ({e})") from None
    except Exception:  # a header PIL reads badly: decode_image below says what is wrong (422)
        w = h = 0
    if w * h > MAX_UPLOAD_PIXELS:
        raise PayloadTooLarge(f"image is {w}x{h} pixels, over the {MAX_UPLOAD_PIXELS:,}-pixel limit")
    try:
        img = decode_image(
            data, source=file.filename or "upload", max_pixels=MAX_UPLOAD_PIXELS, draft_size=UPLOAD_DRAFT_SIZE
        )
    except ImageDecodeError as e:
        raise InvalidInput(str(e)) from None
    return data, img


def text_field(value: str | None, what: str, limit: int) -> str | None:
    if value is None:
        return None
    value = value.strip(" \t\r\n\f\v")  # ASCII white space at the ends (U+0085 is checked below)
    if len(value) > limit:
        raise InvalidInput(f"{what} is {len(value):,} characters; at most {limit}")
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cf")), None)
    if bad is not None:  # C0/C1 controls (U+0085, U+009B), bidi overrides (U+202E), zero-width and other formats
        raise InvalidInput(
            f"{what} contains control characters (U+{ord(bad):04X} {unicodedata.name(bad, 'unnamed')}; control and "
            "format characters such as bidi overrides are refused)"
        )
    return value or None


def similar(snap: Snapshot, vec: np.ndarray, k: int, category: str | None, exclude=()) -> list:
    return [(i, s, []) for i, s in snap.index.search(vec, k, category=category, exclude=exclude)]


# ---------------------------------------------------------------------------------------------- endpoints
# Which thread runs what: `async def` endpoints do only lookups (precomputed lists, dicts, one HNSW search: well
# under a millisecond) on the event loop; everything that scores, decodes or embeds is a plain `def` endpoint
# (FastAPI runs it in its thread pool) or goes through `run_in_threadpool`. Each request reads `state.snapshot`
# once and uses only that snapshot.
@router.get("/health", response_model=HealthOut)
async def health(request: Request, state: State):
    snap = state.snapshot
    m = snap.models[state.default_model]
    return json_response(
        {
            "status": "ok",
            "items": m.data.n_items - len(snap.removed),
            "customers": len(state.precomputed[state.default_model]),
            "models": sorted(snap.models),
            "default_model": state.default_model,
            "index": snap.index.kind,
            "uptime_s": round(time.time() - state.started, 1),
            "writes_enabled": bool(request.app.state.token) and state.writes_allowed,
            "image_search": "ready" if state.backbone_ready else "loading",
            "snapshot": snap.version,
        }
    )


@router.get("/items/{item_id}", response_model=ItemOut, responses=_responses(404))
async def get_item(item_id: str, state: State):
    snap = state.snapshot
    if not state.known_item(item_id, snap):
        raise NotFound(f"unknown item '{item_id}'")
    return json_response(state.item_info(item_id, snap))


@router.get("/items/{item_id}/similar", response_model=list[RecItem], responses=_responses(404, 422))
async def get_similar(
    item_id: str,
    state: State,
    k: int = Query(12, ge=1, le=100),
    category: str | None = Query(None, max_length=MAX_LABEL_CHARS),
):
    snap = state.snapshot
    if item_id not in snap.index or item_id in snap.removed:
        raise NotFound(f"unknown item '{item_id}' (or it has no image)")
    nb = state.neighbours
    found = nb.get(item_id, k) if (nb is not None and category is None and k <= nb.k) else None
    if found is None:  # a category filter or k above the table: an index search, in the thread pool
        recs = await run_in_threadpool(similar, snap, snap.index.vector(item_id), k, category, [item_id])
        return json_response(items_json(state, snap, recs))
    if snap.index.arrivals is not None and len(snap.index.arrivals):  # the snapshot's arrivals compete on score
        ids, scores = snap.index.arrivals.search(snap.index.vector(item_id)[None], k)
        found = sorted(found + [(i, float(s)) for i, s in zip(ids[0], scores[0]) if i], key=lambda t: -t[1])[:k]
    return json_response(items_json(state, snap, [(i, s, []) for i, s in found]))


@router.get("/users/{user_id}", response_model=UserOut, responses=_responses(404, 422))
async def get_user(user_id: str, state: State, limit: int = Query(24, ge=1, le=500)):
    snap = state.snapshot
    m = snap.models[state.default_model]
    if user_id not in state.precomputed[state.default_model]:
        raise NotFound(f"unknown customer '{user_id}'")
    h, t = m.data.history(user_id)
    hist = [
        {
            "id": m.data.item_ids[j],
            "date": str(np.datetime_as_string(ts, unit="D")),
            **state.item_info(m.data.item_ids[j], snap),
        }
        for j, ts in list(zip(h, t))[::-1][:limit]
    ]
    return json_response({"id": user_id, "purchases": int(len(h)), "history": hist})


@router.get("/users/{user_id}/recommendations", response_model=RecommendationsOut, responses=_responses(404, 422))
async def get_recs(
    user_id: str, state: State, k: int = Query(12, ge=1, le=100), model: str | None = Query(None, max_length=64)
):
    snap = state.snapshot
    name = model_name(state, snap, model)
    recs = state.precomputed[name].get(user_id, max(k, 1) + len(snap.removed)) if k <= state.k_precomputed else None
    if recs is None:
        if user_id not in state.precomputed[name]:
            raise NotFound(f"unknown customer '{user_id}'")

        def live():  # scored live (k above the precomputed lists): in the thread pool, on this request's snapshot
            return [(r.item, r.score, r.because) for r in snap.models[name].recommend(user_id, k + len(snap.removed))]

        recs = await run_in_threadpool(live)
    return json_response({"user": user_id, "model": name, "items": items_json(state, snap, recs, k)})


@router.get("/users/{user_id}/new-in", response_model=RecommendationsOut, responses=_responses(404, 422))
async def get_new_in(
    user_id: str, state: State, k: int = Query(12, ge=1, le=100), model: str | None = Query(None, max_length=64)
):
    """New in for this customer: the photos nobody has bought yet (new arrivals included), ranked by the model for
    them (the default model reads their taste from photos: `recommend.taste`)."""
    snap = state.snapshot
    name = model_name(state, snap, model)
    if user_id not in state.precomputed[name]:
        raise NotFound(f"unknown customer '{user_id}'")

    def rank():
        m = snap.models[name]
        sold = np.zeros(m.data.n_items, dtype=bool)
        sold[: m.data.matrix.shape[1]] = m.data.matrix.getnnz(axis=0) > 0
        photos = state.catalog.image_paths
        pool = np.array(
            [
                j
                for j in np.flatnonzero(~sold)
                if (m.data.item_ids[j] in photos or m.data.item_ids[j] in snap.arrivals)
                and m.data.item_ids[j] not in snap.removed
            ],
            dtype=np.int64,
        )
        if not len(pool):
            return []
        s = m.score_items([user_id], pool)[0]
        order = np.lexsort((pool, -s))
        return [(m.data.item_ids[pool[o]], float(s[o]), []) for o in order[:k] if np.isfinite(s[o])]

    recs = await run_in_threadpool(rank)
    return json_response({"user": user_id, "model": name, "items": items_json(state, snap, recs, k)})


@router.post("/recommendations", response_model=RecommendationsOut, responses=_responses(400, 413, 422))
def post_recs(body: HistoryIn, state: State):
    snap = state.snapshot
    name = model_name(state, snap, body.model)
    unknown = [i for i in body.history if not state.known_item(i, snap)]
    if unknown:
        raise InvalidInput(f"unknown item id(s) in history: {unknown[:5]}")
    only = None
    if body.items is not None:
        bad = [i for i in body.items if not state.known_item(i, snap) or i in snap.removed]
        if bad:
            raise InvalidInput(f"unknown item id(s) in items: {bad[:5]}")
        only = body.items
    recs = snap.models[name].recommend_from_history(
        body.history, body.k + len(snap.removed), exclude_bought=body.exclude_bought, only=only
    )
    return json_response(
        {
            "user": None,
            "model": name,
            "items": items_json(state, snap, [(r.item, r.score, r.because) for r in recs], body.k),
        }
    )


@router.post("/search/image", response_model=ImageSearchOut, responses=_responses(400, 413, 415, 422))
def search_image(
    request: Request,
    state: State,
    file: UploadFile = File(...),
    k: int = Query(12, ge=1, le=100),
    category: str | None = Query(None, max_length=MAX_LABEL_CHARS),
):
    with request.app.state.heavy:
        data, img = read_upload(file)
        raw, vec = embed_image(state, img)
    snap = state.snapshot
    tags = {t.column: t.predict(raw) for t in state.taggers}
    return json_response({"tags": tags, "similar": items_json(state, snap, similar(snap, vec, k, category))})


@router.post(
    "/items",
    status_code=201,
    response_model=ItemOut,
    dependencies=[Depends(writer)],
    responses=_responses(400, 401, 403, 409, 413, 415, 422),
)
def post_item(
    request: Request,
    state: State,
    file: UploadFile = File(...),
    item_id: str = Form(..., alias="id", max_length=64, pattern=ID_PATTERN),
    name: str | None = Form(None, max_length=10 * MAX_NAME_CHARS),
    category: str | None = Form(None, max_length=10 * MAX_LABEL_CHARS),
    colour: str | None = Form(None, max_length=10 * MAX_LABEL_CHARS),
):
    """A new arrival, recommendable at once and kept across restarts. Concurrent posts of one id: the first
    wins (201), the others get 409; an existing item is never replaced."""
    if not ID_RE.fullmatch(item_id):
        raise InvalidInput("id must be 1-64 characters: a letter or digit, then letters, digits, '_', '-', '.'")
    meta = {
        "prod_name": text_field(name, "name", MAX_NAME_CHARS),
        "product_group_name": text_field(category, "category", MAX_LABEL_CHARS),
        "colour_group_name": text_field(colour, "colour", MAX_LABEL_CHARS),
    }
    meta = {k: v for k, v in meta.items() if v}
    if state.known_item(item_id) or item_id in state.pending:  # cheap early answer; the reservation decides
        raise Conflict(f"item '{item_id}' already exists")
    with request.app.state.heavy:
        data, img = read_upload(file)
        info = create_arrival(state, item_id, data, meta, image=img)
    return json_response(info, status=201)


@router.delete(
    "/items/{item_id}", status_code=204, dependencies=[Depends(writer)], responses=_responses(401, 403, 404, 409)
)
def delete_item(item_id: str, state: State):
    """Delete a new arrival (catalog items are read-only: 409)."""
    remove_arrival(state, item_id)
    return Response(status_code=204)


def checked_image(request: Request, state: ServingState, item_id: str) -> tuple[Path, str] | None:
    p = state.safe_image_path(item_id)
    if p is None:
        return None
    try:
        st = p.stat()
    except OSError:
        return None
    checks = request.app.state.image_checks
    hit = checks.get(item_id)
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
    checks[item_id] = (p, st.st_size, st.st_mtime_ns, media)
    return (p, media) if media else None


@router.get(
    "/images/{item_id}",
    responses={
        200: {"content": {m: {} for m in sorted(set(SERVED_FORMATS.values()))}, "description": "the item's photo"},
        **_responses(404),
    },
    response_class=Response,
)
async def get_image(request: Request, item_id: str, state: State):
    found = await run_in_threadpool(checked_image, request, state, item_id)
    if found is None:
        raise NotFound(f"no image for item '{item_id}'")
    p, media = found
    return FileResponse(p, media_type=media, headers={"Cache-Control": "public, max-age=3600"})


@router.get("/customers", response_model=list[CustomerOut], responses=_responses(422))
async def customers(state: State, limit: int = Query(50, ge=1, le=1000)):
    m = state.snapshot.models[state.default_model]
    counts = m.data.matrix.getnnz(axis=1)
    order = np.argsort(-counts, kind="stable")[:limit]
    return json_response([{"id": m.data.user_ids[j], "purchases": int(counts[j])} for j in order])


@router.get("/search/items", response_model=list[ItemOut], responses=_responses(422))
def search_items(state: State, q: str = Query(..., min_length=1, max_length=100), limit: int = Query(20, ge=1, le=100)):
    snap = state.snapshot
    meta = state.catalog.metadata
    ql = q.lower()
    hits = [i for i in state.catalog.image_paths if i.startswith(q)][:limit]
    if len(hits) < limit and "prod_name" in meta.columns:
        names = meta["prod_name"].astype(str).str.lower()
        more = [i for i in names.index[names.str.contains(re.escape(ql))] if i in snap.index and i not in hits]
        hits += more[: limit - len(hits)]
    return json_response([state.item_info(i, snap) for i in hits])


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page():
    return HTMLResponse((STATIC / "index.html").read_text())


@router.get("/favicon.ico", include_in_schema=False)
async def favicon():
    return Response(status_code=204)  # no icon; answered so browsers log no 404


STATIC_TYPES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str):
    if name not in STATIC_TYPES:  # a fixed list: no path from the request ever reaches the file system
        raise NotFound("not found")
    return Response((STATIC / name).read_bytes(), media_type=STATIC_TYPES[name], headers={"Cache-Control": "no-cache"})


# ---------------------------------------------------------------------------------------------- the app
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

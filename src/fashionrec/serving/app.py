"""The FastAPI app: `create_app(state)`. Bad input is answered (404/413/415/422), never a 500."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from fashionrec.data.images import ImageDecodeError, decode_image
from fashionrec.errors import FashionrecError
from fashionrec.serving.state import ServingState, add_arrival, embed_upload

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff"}
ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


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


class HistoryIn(BaseModel):
    history: list[str] = Field(..., min_length=1, max_length=500, description="item ids, oldest first")
    k: int = Field(12, ge=1, le=100)
    model: Optional[str] = None
    exclude_bought: bool = False


class Tag(BaseModel):
    label: str
    probability: float


class ImageSearchOut(BaseModel):
    tags: dict[str, list[Tag]]
    similar: list[RecItem]


def _err(status: int, msg: str):
    raise HTTPException(status_code=status, detail=msg)


def create_app(state: ServingState) -> FastAPI:
    app = FastAPI(title="fashionrec", version="0.1.0",
                  description="Similar items, personalised recommendations and photo search for a fashion catalog.")
    app.state.fr = state

    def items_json(recs) -> list[dict]:
        """The hot path: plain dicts serialised by orjson (the response models still document the schema)."""
        out = []
        for item, score, because in recs:
            info = state.item_info(item)
            out.append({"id": item, "score": round(float(score), 6), "because": list(because), "name": info["name"],
                        "category": info["category"], "image_url": info["image_url"]})
        return out

    def json_response(obj) -> Response:
        import orjson

        return Response(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    def items_out(recs) -> list[RecItem]:
        return [RecItem(**d) for d in items_json(recs)]

    def model_or_422(name: Optional[str]):
        name = name or state.default_model
        if name not in state.models:
            _err(422, f"unknown model '{name}'; available: {sorted(state.models)}")
        return name

    def similar(vec: np.ndarray, k: int, category: Optional[str], exclude=()) -> list:
        ids, scores = state.index.search(vec[None], k, category=category, exclude=exclude)
        return [(i, s, []) for i, s in zip(ids[0], scores[0]) if i]

    async def read_upload(file: UploadFile, request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_UPLOAD_BYTES + 64 * 1024:
            _err(413, f"upload is {int(length):,} bytes; the limit is {MAX_UPLOAD_BYTES:,}")
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            _err(413, f"upload is over the {MAX_UPLOAD_BYTES:,}-byte limit")
        ctype = (file.content_type or "").split(";")[0].strip().lower()
        if ctype and ctype not in IMAGE_TYPES and ctype != "application/octet-stream":
            _err(415, f"'{file.filename}' is {ctype}, not an image (accepted: {sorted(IMAGE_TYPES)})")
        if not data:
            _err(422, f"'{file.filename}': empty file (0 bytes), not an image")
        try:
            decode_image(data, source=file.filename or "upload")
        except ImageDecodeError as e:
            msg = str(e)
            if "decompression bomb" in msg or "pixel limit" in msg:
                _err(413, msg)
            if "cannot identify image file" in msg:
                _err(415, f"'{file.filename}' is not an image: {msg}")
            _err(422, msg)
        return data

    @app.exception_handler(FashionrecError)
    async def _fashionrec_error(request: Request, exc: FashionrecError):
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # last resort: still a JSON answer with the cause
        return JSONResponse(status_code=500, content={"detail": f"internal error: {type(exc).__name__}: {exc}"})

    @app.get("/health")
    async def health():
        m = state.models[state.default_model]
        return {"status": "ok", "items": m.data.n_items, "customers": len(state.precomputed[state.default_model]),
                "models": sorted(state.models), "default_model": state.default_model, "index": state.index.kind,
                "uptime_s": round(time.time() - state.started, 1)}

    @app.get("/items/{item_id}")
    async def get_item(item_id: str):
        if not state.known_item(item_id):
            _err(404, f"unknown item '{item_id}'")
        return state.item_info(item_id)

    @app.get("/items/{item_id}/similar", response_model=list[RecItem])
    async def get_similar(item_id: str, k: int = Query(12, ge=1, le=100), category: Optional[str] = None):
        if item_id not in state.index:
            _err(404, f"unknown item '{item_id}' (or it has no image)")
        return json_response(items_json(similar(state.index.vector(item_id), k, category, exclude=[item_id])))

    @app.get("/users/{user_id}")
    async def get_user(user_id: str, limit: int = Query(24, ge=1, le=500)):
        m = state.models[state.default_model]
        if user_id not in state.precomputed[state.default_model]:
            _err(404, f"unknown customer '{user_id}'")
        h, t = m.data.history(user_id)
        hist = [{"id": m.data.item_ids[j], "date": str(np.datetime_as_string(ts, unit="D")), **state.item_info(m.data.item_ids[j])}
                for j, ts in list(zip(h, t))[::-1][:limit]]
        return {"id": user_id, "purchases": int(len(h)), "history": hist}

    @app.get("/users/{user_id}/recommendations", response_model=RecommendationsOut)
    async def get_recs(user_id: str, k: int = Query(12, ge=1, le=100), model: Optional[str] = None):
        name = model_or_422(model)
        table = state.precomputed[name]
        if user_id not in table:
            _err(404, f"unknown customer '{user_id}'")
        if k <= state.k_precomputed:
            recs = table[user_id][:k]
        else:
            recs = [(r.item, r.score, r.because) for r in state.models[name].recommend(user_id, k)]
        return json_response({"user": user_id, "model": name, "items": items_json(recs)})

    @app.post("/recommendations", response_model=RecommendationsOut)
    def post_recs(body: HistoryIn):
        name = model_or_422(body.model)
        m = state.models[name]
        unknown = [i for i in body.history if i not in m.data.item_index]
        if unknown:
            _err(422, f"unknown item id(s) in history: {unknown[:5]}")
        recs = m.recommend_from_history(body.history, body.k, exclude_bought=body.exclude_bought)
        return RecommendationsOut(model=name, items=items_out([(r.item, r.score, r.because) for r in recs]))

    @app.post("/search/image", response_model=ImageSearchOut)
    async def search_image(request: Request, file: UploadFile = File(...), k: int = Query(12, ge=1, le=100),
                           category: Optional[str] = None):
        data = await read_upload(file, request)
        raw, vec = embed_upload(state, data, source=file.filename or "upload")
        tags = {t.column: [Tag(**x) for x in t.predict(raw)] for t in state.taggers}
        return ImageSearchOut(tags=tags, similar=items_out(similar(vec, k, category)))

    @app.post("/items", status_code=201)
    async def post_item(request: Request, file: UploadFile = File(...), item_id: str = Form(..., alias="id"),
                        name: Optional[str] = Form(None), category: Optional[str] = Form(None),
                        colour: Optional[str] = Form(None)):
        if not ID_RE.match(item_id):
            _err(422, "id must be 1-64 characters of letters, digits, '_', '-', '.'")
        if state.known_item(item_id):
            _err(409, f"item '{item_id}' already exists")
        data = await read_upload(file, request)
        meta = {k: v for k, v in {"prod_name": name, "product_group_name": category, "colour_group_name": colour}.items() if v}
        return add_arrival(state, item_id, data, meta)

    @app.get("/images/{item_id}")
    async def get_image(item_id: str):
        p = state.image_path(item_id)
        if p is None or not p.exists():
            _err(404, f"no image for item '{item_id}'")
        media = "image/jpeg" if p.suffix.lower() in {".jpg", ".jpeg"} else None
        return FileResponse(p, media_type=media, headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/customers")
    async def customers(limit: int = Query(50, ge=1, le=1000)):
        m = state.models[state.default_model]
        counts = m.data.matrix.getnnz(axis=1)
        order = np.argsort(-counts)[:limit]
        return [{"id": m.data.user_ids[j], "purchases": int(counts[j])} for j in order]

    @app.get("/search/items")
    async def search_items(q: str = Query(..., min_length=1, max_length=100), limit: int = Query(20, ge=1, le=100)):
        meta = state.shop.catalog.metadata
        ql = q.lower()
        hits = [i for i in state.shop.catalog.image_paths if i.startswith(q)][:limit]
        if len(hits) < limit and "prod_name" in meta.columns:
            names = meta["prod_name"].astype(str).str.lower()
            more = [i for i in names.index[names.str.contains(re.escape(ql))] if i in state.index and i not in hits]
            hits += more[: limit - len(hits)]
        return [state.item_info(i) for i in hits]

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text())

    return app

"""The REST API's endpoints, on one APIRouter; each takes the app's state through the `get_state` dependency and
returns plain data that FastAPI validates against the route's response model (serving.schemas) and serialises.

Which thread runs what: `async def` endpoints do only lookups (precomputed lists, dicts, one HNSW search: well under
a millisecond) on the event loop; everything that scores, decodes or embeds is a plain `def` endpoint (FastAPI runs
it in its thread pool) or goes through `run_in_threadpool`. Each request reads `state.snapshot` once and uses only
that snapshot.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fashionrec.serving.errors import Conflict, InvalidInput, NotFound, WritesRefused
from fashionrec.serving.middleware import write_denied
from fashionrec.serving.schemas import (
    CustomerOut,
    HealthOut,
    HistoryIn,
    ImageSearchOut,
    ItemOut,
    RecItem,
    RecommendationsOut,
    UserOut,
    responses,
)
from fashionrec.serving.state import ServingState, Snapshot
from fashionrec.serving.uploads import (
    ID_PATTERN,
    ID_RE,
    MAX_LABEL_CHARS,
    MAX_NAME_CHARS,
    SERVED_FORMATS,
    checked_image,
    read_upload,
    text_field,
)
from fashionrec.serving.writes import create_arrival, embed_image, remove_arrival

STATIC = Path(__file__).parent / "static"


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
    """The reply's items (RecItem fields) for (item, score, because) triples, removed items left out."""
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


def model_name(state: ServingState, snap: Snapshot, name: str | None) -> str:
    name = name or state.default_model
    if name not in snap.models:
        raise InvalidInput(f"unknown model '{name}'; available: {sorted(snap.models)}")
    return name


def similar(snap: Snapshot, vec: np.ndarray, k: int, category: str | None, exclude=()) -> list:
    return [(i, s, []) for i, s in snap.index.search(vec, k, category=category, exclude=exclude)]


@router.get("/health", response_model=HealthOut)
async def health(request: Request, state: State):
    snap = state.snapshot
    m = snap.models[state.default_model]
    return {
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


@router.get("/items/{item_id}", response_model=ItemOut, responses=responses(404))
async def get_item(item_id: str, state: State):
    snap = state.snapshot
    if not state.known_item(item_id, snap):
        raise NotFound(f"unknown item '{item_id}'")
    return state.item_info(item_id, snap)


@router.get("/items/{item_id}/similar", response_model=list[RecItem], responses=responses(404, 422))
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
        return items_json(state, snap, recs)
    if snap.index.arrivals is not None and len(snap.index.arrivals):  # the snapshot's arrivals compete on score
        ids, scores = snap.index.arrivals.search(snap.index.vector(item_id)[None], k)
        found = sorted(found + [(i, float(s)) for i, s in zip(ids[0], scores[0]) if i], key=lambda t: -t[1])[:k]
    return items_json(state, snap, [(i, s, []) for i, s in found])


@router.get("/users/{user_id}", response_model=UserOut, responses=responses(404, 422))
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
    return {"id": user_id, "purchases": int(len(h)), "history": hist}


@router.get("/users/{user_id}/recommendations", response_model=RecommendationsOut, responses=responses(404, 422))
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
    return {"user": user_id, "model": name, "items": items_json(state, snap, recs, k)}


@router.get("/users/{user_id}/new-in", response_model=RecommendationsOut, responses=responses(404, 422))
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
    return {"user": user_id, "model": name, "items": items_json(state, snap, recs, k)}


@router.post("/recommendations", response_model=RecommendationsOut, responses=responses(400, 413, 422))
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
    return {
        "user": None,
        "model": name,
        "items": items_json(state, snap, [(r.item, r.score, r.because) for r in recs], body.k),
    }


@router.post("/search/image", response_model=ImageSearchOut, responses=responses(400, 413, 415, 422))
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
    return {"tags": tags, "similar": items_json(state, snap, similar(snap, vec, k, category))}


@router.post(
    "/items",
    status_code=201,
    response_model=ItemOut,
    dependencies=[Depends(writer)],
    responses=responses(400, 401, 403, 409, 413, 415, 422),
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
    return info


@router.delete(
    "/items/{item_id}", status_code=204, dependencies=[Depends(writer)], responses=responses(401, 403, 404, 409)
)
def delete_item(item_id: str, state: State):
    """Delete a new arrival (catalog items are read-only: 409)."""
    remove_arrival(state, item_id)
    return Response(status_code=204)


@router.get(
    "/images/{item_id}",
    responses={
        200: {"content": {m: {} for m in sorted(set(SERVED_FORMATS.values()))}, "description": "the item's photo"},
        **responses(404),
    },
    response_class=Response,
)
async def get_image(request: Request, item_id: str, state: State):
    found = await run_in_threadpool(checked_image, request, state, item_id)
    if found is None:
        raise NotFound(f"no image for item '{item_id}'")
    p, media = found
    return FileResponse(p, media_type=media, headers={"Cache-Control": "public, max-age=3600"})


@router.get("/customers", response_model=list[CustomerOut], responses=responses(422))
async def customers(state: State, limit: int = Query(50, ge=1, le=1000)):
    m = state.snapshot.models[state.default_model]
    counts = m.data.matrix.getnnz(axis=1)
    order = np.argsort(-counts, kind="stable")[:limit]
    return [{"id": m.data.user_ids[j], "purchases": int(counts[j])} for j in order]


@router.get("/search/items", response_model=list[ItemOut], responses=responses(422))
def search_items(state: State, q: str = Query(..., min_length=1, max_length=100), limit: int = Query(20, ge=1, le=100)):
    snap = state.snapshot
    meta = state.catalog.metadata
    ql = q.lower()
    hits = [i for i in state.catalog.image_paths if i.startswith(q)][:limit]
    if len(hits) < limit and "prod_name" in meta.columns:
        names = meta["prod_name"].astype(str).str.lower()
        more = [i for i in names.index[names.str.contains(re.escape(ql))] if i in snap.index and i not in hits]
        hits += more[: limit - len(hits)]
    return [state.item_info(i, snap) for i in hits]


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

"""The REST API's request and reply schemas (pydantic): FastAPI validates every request and every reply by them,
and documents them at /docs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints


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


def responses(*codes: int) -> dict:
    return {c: {"model": ErrorOut} for c in codes}

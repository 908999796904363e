"""Request and response bodies (the tables are in api/db.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from api.db import Run
from api.progress import Progress


class RunCreate(BaseModel):
    name: str | None = Field(default=None, max_length=200)
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="nanoGPT training keys (gpt/config.py); unset keys take the dataset recipe's or nanoGPT's defaults",
        examples=[{"dataset": "shakespeare_char", "n_layer": 2, "n_head": 2, "n_embd": 64, "max_iters": 200}],
    )


def _iso(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


class RunPublic(BaseModel):
    id: str
    name: str | None
    status: str
    reason: str | None
    config: dict[str, Any]
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, run: Run) -> RunPublic:
        return cls(
            id=run.id,
            name=run.name,
            status=run.status,
            reason=run.reason,
            config=run.config,
            attempt=run.attempt,
            created_at=_iso(run.created_at),  # type: ignore[arg-type]
            started_at=_iso(run.started_at),
            finished_at=_iso(run.finished_at),
        )


class RunDetail(RunPublic):
    progress: Progress


class RunList(BaseModel):
    runs: list[RunPublic]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; null on the last page")


class EventsPage(BaseModel):
    events: list[dict[str, Any]] = Field(description="events in seq order, in the wire format")
    next_after: int = Field(description="pass as ?after= to get what follows (the next page, or newer events later)")
    has_more: bool = Field(description="true when more events already exist after next_after")


class Problem(BaseModel):
    detail: str


class Health(BaseModel):
    database: str
    redis: str

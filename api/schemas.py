"""Request and response bodies (the tables are in api/db.py)."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.db import Run
from api.diagnostics import Diagnostics
from api.progress import Glance, Progress


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")  # `{"confg": ...}` is a 422, not a default-sized run

    name: str | None = Field(default=None, max_length=200, description="a label: any text but control characters")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="nanoGPT training keys (gpt/config.py); unset keys take the dataset recipe's or nanoGPT's defaults",
        examples=[{"dataset": "shakespeare_char", "n_layer": 2, "n_head": 2, "n_embd": 64, "max_iters": 200}],
    )
    max_restarts: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="times the run is resumed after losing its worker before it fails; null: the server's default",
    )

    @field_validator("name")
    @classmethod
    def _no_control_chars(cls, name: str | None) -> str | None:
        if why := control_chars(name):
            raise ValueError(why)
        return name


def control_chars(label: str | None) -> str | None:
    """What is wrong with a label (a run's name): a control character. Labels are shown in
    lists, logs and terminals, where one could forge a log line or rewrite the screen; they
    are never used as paths, so "../" is just text."""
    for i, c in enumerate(label or ""):
        if unicodedata.category(c) == "Cc":
            return f"must not contain control characters ({c!r} at position {i})"
    return None


def check_label(label: str | None, loc: tuple[str, ...]) -> str | None:
    """The label, or a 422 at loc (for form fields, which no pydantic model checks)."""
    from api.limits import invalid

    if why := control_chars(label):
        raise invalid(loc, why, label)
    return label


def iso(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


class TrainedOn(BaseModel):
    id: str = Field(description="the dataset's id (config.dataset holds it too)")
    sha256: str = Field(description="of the bytes it was prepared from")


class StartedFrom(BaseModel):
    run_id: str = Field(description="the run whose checkpoint this one started from (init_from run:<id>)")
    iter: int = Field(description="that checkpoint's iteration")


class RunPublic(BaseModel):
    id: str
    name: str | None
    status: str
    reason: str | None
    config: dict[str, Any]
    attempt: int = Field(description="how many times a worker has started this run (resumes included)")
    restarts: int = Field(description="times the run was resumed after losing its worker")
    max_restarts: int | None
    dataset: TrainedOn | None = Field(description="the dataset of yours it trains on; null for a built-in one")
    parent: StartedFrom | None = Field(description="where its weights came from, when another run's checkpoint")
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
            restarts=run.restarts,
            max_restarts=run.max_restarts,
            dataset=TrainedOn(id=run.dataset_id, sha256=run.dataset_sha256 or "") if run.dataset_id else None,
            parent=StartedFrom(run_id=run.parent_run_id, iter=run.parent_iter or 0) if run.parent_run_id else None,
            created_at=iso(run.created_at),  # type: ignore[arg-type]
            started_at=iso(run.started_at),
            finished_at=iso(run.finished_at),
        )


class RunDetail(RunPublic):
    progress: Progress
    diagnostics: Diagnostics


class RunListItem(RunPublic):
    progress: Glance = Field(description="at a glance: GET /runs/{id} has the whole progress and diagnostics")


class RunList(BaseModel):
    runs: list[RunListItem]
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


class SampleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key (`max_tokens`) is a 422, not silently ignored

    prompt: str = Field(default="\n", description="text to continue; nanoGPT's sample.py starts from a newline")
    max_new_tokens: int = Field(default=200, ge=1, description="tokens to generate per sample")
    temperature: float = Field(
        default=0.8, ge=0, le=100, allow_inf_nan=False, description="0 is greedy; higher is more random"
    )
    top_k: int | None = Field(default=200, ge=1, lt=2**62, description="sample among the k likeliest tokens; null: all")
    seed: int | None = Field(
        default=None, ge=0, lt=2**63, description="same seed, checkpoint and request: same text; null: a new one"
    )
    num_samples: int = Field(default=1, ge=1, description="samples generated together as one batch")
    checkpoint: Literal["latest", "best"] | Annotated[int, Field(ge=0, lt=2**62)] = Field(
        default="latest", description='"latest", "best" (lowest val loss) or an iter from GET /runs/{id}/checkpoints'
    )
    stream: bool = Field(
        default=False,
        description="send text as it is generated: text/plain, or server-sent events with Accept: text/event-stream",
    )

    @field_validator("prompt")
    @classmethod
    def _unicode(cls, prompt: str) -> str:
        # JSON's "\ud800" parses to a lone surrogate: no tokenizer, and no UTF-8 reply, can take it.
        try:
            prompt.encode()
        except UnicodeEncodeError as e:
            raise ValueError(f"must be valid Unicode text (a lone surrogate at position {e.start})") from None
        return prompt

    @field_validator("temperature")
    @classmethod
    def _not_vanishing(cls, t: float) -> float:
        # Logits divided by a tiny temperature overflow float32 to inf, and softmax gives NaN.
        if 0 < t < 1e-3:
            raise ValueError("must be 0 (greedy) or at least 0.001")
        return t


class SampleText(BaseModel):
    text: str = Field(description="what the model wrote after the prompt")


class SampleResult(BaseModel):
    samples: list[SampleText]
    checkpoint_iter: int = Field(description="the iteration of the checkpoint sampled")
    new_tokens: int = Field(description="tokens generated, over all samples")
    tokens_per_s: float | None = Field(description="generation speed on the worker, over all samples")
    seed: int = Field(description="the seed used: send it back to get the same text again")


class CheckpointInfo(BaseModel):
    iter: int
    val_loss: float | None = Field(description="null for a checkpoint written at a cancel")
    best: bool = Field(description="the lowest val loss so far (best.pt)")
    latest: bool = Field(description="the newest (ckpt.pt)")
    bytes: int
    created_at: datetime


class CheckpointList(BaseModel):
    checkpoints: list[CheckpointInfo] = Field(description="the kept checkpoints, oldest first")


# --- datasets and uploads ---------------------------------------------------------------------


class DatasetProgress(BaseModel):
    phase: str | None = Field(default=None, description="vocabulary (a char vocabulary's pass), tokenizing, splitting")
    bytes_done: int = Field(default=0, description="of the upload as stored (compressed or not)")
    tokens: int = 0
    tokens_per_s: float = 0.0
    eta_s: float | None = None


class DatasetPublic(BaseModel):
    id: str
    name: str
    status: str = Field(description="preparing, ready or failed")
    reason: str | None = Field(description="why it failed")
    format: str | None = Field(description="text, jsonl or nanogpt; null until the worker has looked, if not given")
    tokenizer: str | None = Field(description="char or gpt2; null until read from a nanoGPT archive")
    val_fraction: float
    text_field: str
    filename: str | None
    bytes: int = Field(description="the upload's size, as sent")
    sha256: str = Field(description="of the upload")
    progress: DatasetProgress
    train_tokens: int | None
    val_tokens: int | None
    vocab_size: int | None
    documents: int | None = Field(description="JSON Lines documents (0 for a nanoGPT archive, 1 for a text)")
    preview: str | None = Field(description="the first few hundred characters, decoded from the prepared tokens")
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, ds: Any) -> DatasetPublic:
        return cls(
            id=ds.id,
            name=ds.name,
            status=ds.status,
            reason=ds.reason,
            format=ds.format,
            tokenizer=ds.tokenizer,
            val_fraction=ds.val_fraction,
            text_field=ds.text_field,
            filename=ds.filename,
            bytes=ds.bytes,
            sha256=ds.sha256,
            progress=DatasetProgress(**(ds.progress or {})),
            train_tokens=ds.train_tokens,
            val_tokens=ds.val_tokens,
            vocab_size=ds.vocab_size,
            documents=ds.documents,
            preview=ds.preview,
            created_at=iso(ds.created_at),  # type: ignore[arg-type]
            finished_at=iso(ds.finished_at),
        )


class DatasetList(BaseModel):
    datasets: list[DatasetPublic] = Field(description="newest first")


SHA256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="hex digest, lower case")]


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(
        min_length=1, max_length=500, description="the file's name (a label; .jsonl means JSON Lines)"
    )
    bytes: int = Field(ge=1, lt=2**62, description="the whole file's size: parts must add up to it")
    sha256: SHA256 | None = Field(default=None, description="the whole file's, checked at complete")


class UploadPart(BaseModel):
    n: int
    bytes: int
    sha256: str


class UploadPublic(BaseModel):
    id: str
    filename: str
    bytes: int
    sha256: str | None
    part_bytes: int = Field(
        description="the most bytes one part may hold; every part but the last should hold this many"
    )
    parts_expected: int = Field(description="bytes / part_bytes, rounded up: the parts to send, numbered from 1")
    parts: list[UploadPart] = Field(description="the parts that arrived, by number")
    received_bytes: int
    status: str = Field(description="open, or completed (then dataset_id names the dataset)")
    dataset_id: str | None
    expires_at: datetime | None = Field(description="an open upload untouched until then is removed")


class UploadComplete(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="your name for the dataset (config.dataset may use it)")
    tokenizer: Literal["char", "gpt2"] | None = Field(default=None, description="default gpt2; a nanoGPT archive's own")
    format: Literal["text", "jsonl", "nanogpt"] | None = Field(default=None, description="default: told from the file")
    val_fraction: float | None = Field(default=None, gt=0, lt=1, allow_inf_nan=False, description="default 0.1")
    text_field: str | None = Field(default=None, min_length=1, max_length=200, description="JSON Lines: default text")
    sha256: SHA256 | None = Field(default=None, description="the whole file's, if not declared at POST /uploads")

"""What the server returns, as typed values. Each keeps the JSON it came from in `raw`, so a
field the server sends that a type does not name yet is still there.

Events stay plain dicts (`Event`): they are the wire format, the same JSON in the database, on
the WebSocket and in GET /runs/{id}/events, and their fields depend on their `type` (see
ARCHITECTURE.md's table): `{"run_id", "seq", "attempt", "type", "ts", ...}`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

Event = dict[str, Any]

# A run's last statuses: its final `status` event carries one of these, and nothing follows it.
# `pruned`: its sweep's early stopping ended it (after a checkpoint).
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "pruned"})
SWEEP_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of `data` that `cls` has a field for (`raw` aside)."""
    names = {f.name for f in fields(cls)} - {"raw"}
    return {k: v for k, v in data.items() if k in names}


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


@dataclass(frozen=True)
class RunWarning:
    code: str | None = None  # overfitting, nan_loss, low_mfu, ...
    message: str | None = None
    iter: int | None = None


@dataclass(frozen=True)
class Progress:
    """Where a run is. GET /runs/{id} fills every field; a list's runs only the glance
    (iter, max_iters, fraction, loss, best_val_loss, mfu)."""

    iter: int | None = None  # the newest iter event's: iteration `iter` is the (iter+1)-th step
    max_iters: int | None = None
    fraction: float | None = None
    loss: float | None = None
    lr: float | None = None
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    median_step_ms: float | None = None
    mfu: float | None = None  # None where the device's peak FLOP/s is unknown (any CPU)
    tokens_per_s: float | None = None
    tokens_seen: int | None = None
    eta_s: float | None = None
    last_seq: int | None = None  # the newest event's seq: stream(after=last_seq) follows from here
    warnings: list[RunWarning] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        warnings = [RunWarning(**_known(RunWarning, w)) for w in data.get("warnings") or []]
        return cls(**{**_known(cls, data), "warnings": warnings}, raw=data)


@dataclass(frozen=True)
class Diagnostics:
    """How a run is going, read as someone who knows nanoGPT's log would (GET /runs/{id} only)."""

    summary: list[str] = field(default_factory=list)  # the findings as sentences, the most pressing first
    loss_trend: str | None = None  # falling, flat or rising
    loss_change: float | None = None
    train_val_gap: float | None = None
    gap_widening: bool | None = None
    overhead_share: float | None = None  # of wall time, evaluating and saving
    mfu: float | None = None
    device: str | None = None
    n_params: int | None = None
    tokens_per_param: float | None = None
    nan_iters: list[int] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Diagnostics:
        return cls(**_known(cls, data), raw=data)


@dataclass(frozen=True)
class Run:
    id: str
    status: str  # queued, running, recovering, succeeded, failed, cancelled, pruned
    name: str | None = None
    reason: str | None = None  # why it is in its status, as a sentence
    config: dict[str, Any] = field(default_factory=dict)  # every key filled in by the server
    attempt: int = 0  # times a worker has started it (resumes included)
    restarts: int = 0  # times it was resumed after losing its worker
    max_restarts: int | None = None  # None: the server's default
    sweep: str | None = None  # the sweep that started it
    params: dict[str, Any] | None = None  # a sweep's run: the values it tries
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress = field(default_factory=Progress)
    diagnostics: Diagnostics | None = None  # GET /runs/{id} only
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        values = _known(cls, data)
        values.update({k: _time(data.get(k)) for k in ("created_at", "started_at", "finished_at")})
        values["progress"] = Progress.from_json(data.get("progress") or {})
        diagnostics = data.get("diagnostics")
        values["diagnostics"] = Diagnostics.from_json(diagnostics) if isinstance(diagnostics, dict) else None
        return cls(**values, raw=data)


@dataclass(frozen=True)
class RunPage:
    """One page of GET /runs, newest first; `next_cursor` gets the next (older) page."""

    runs: list[Run]
    next_cursor: str | None

    def __iter__(self) -> Iterator[Run]:
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)


@dataclass(frozen=True)
class EventPage:
    """One page of GET /runs/{id}/events: pass `next_after` as `after` for what follows;
    `has_more` says whether more is there already."""

    events: list[Event]
    next_after: int
    has_more: bool


@dataclass(frozen=True)
class Checkpoint:
    iter: int
    val_loss: float | None  # None for one written at a cancel
    best: bool  # the lowest val loss so far (best.pt)
    latest: bool  # the newest (ckpt.pt)
    bytes: int
    created_at: datetime | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(**{**_known(cls, data), "created_at": _time(data.get("created_at"))}, raw=data)


@dataclass(frozen=True)
class SampleResult:
    """What the model wrote after the prompt, one text per sample, and how."""

    texts: list[str]
    checkpoint_iter: int  # the iteration of the checkpoint sampled
    new_tokens: int  # over all samples
    tokens_per_s: float | None
    seed: int  # send it back, with the same checkpoint and request, for the same text
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def text(self) -> str:
        """The first (often the only) sample."""
        return self.texts[0]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SampleResult:
        texts = [s["text"] for s in data.get("samples") or []]
        return cls(**{**_known(cls, data), "texts": texts}, raw=data)


@dataclass(frozen=True)
class DatasetProgress:
    phase: str | None = None  # vocabulary (a char vocabulary's pass), tokenizing, splitting, done
    bytes_done: int = 0  # of the upload as stored
    tokens: int = 0
    tokens_per_s: float = 0.0
    eta_s: float | None = None


@dataclass(frozen=True)
class Dataset:
    """A corpus of yours: `preparing` until its token arrays are made, then `ready` (or
    `failed`, with the reason). Runs name it in config.dataset, by id or name."""

    id: str
    name: str
    status: str  # preparing, ready, failed
    reason: str | None = None
    format: str | None = None  # text, jsonl, nanogpt
    tokenizer: str | None = None  # char, gpt2
    bytes: int = 0
    sha256: str = ""
    progress: DatasetProgress = field(default_factory=DatasetProgress)
    train_tokens: int | None = None
    val_tokens: int | None = None
    vocab_size: int | None = None
    documents: int | None = None
    preview: str | None = None
    created_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ended(self) -> bool:
        return self.status in ("ready", "failed")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Dataset:
        values = _known(cls, data)
        values["progress"] = DatasetProgress(**_known(DatasetProgress, data.get("progress") or {}))
        values["created_at"] = _time(data.get("created_at"))
        return cls(**values, raw=data)


@dataclass(frozen=True)
class UploadPart:
    n: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Upload:
    """A resumable upload: parts 1..parts_expected of at most part_bytes each."""

    id: str
    filename: str
    bytes: int
    part_bytes: int
    parts_expected: int
    parts: list[UploadPart]
    status: str  # open, completed
    dataset_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Upload:
        parts = [UploadPart(**_known(UploadPart, p)) for p in data.get("parts") or []]
        return cls(**{**_known(cls, data), "parts": parts}, raw=data)


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep, as GET /sweeps/{id} lists it."""

    id: str
    trial: int  # its number in the sweep, from 0, in the order the runs started
    status: str
    name: str | None = None
    reason: str | None = None  # a pruned run's: the rung, its val loss and the cut
    params: dict[str, Any] = field(default_factory=dict)
    best_val_loss: float | None = None
    iter: int | None = None
    max_iters: int | None = None


@dataclass(frozen=True)
class SweepBest:
    run: str  # the run's id
    params: dict[str, Any]
    val_loss: float
    status: str


@dataclass(frozen=True)
class Sweep:
    """A search over runs: `running` until every run its budget allows has ended
    (`succeeded`, or `failed` when none did), or `cancelled`."""

    id: str
    status: str
    name: str | None = None
    reason: str | None = None
    method: str = "random"  # grid, random, tpe
    parameters: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # the base, as sent
    max_runs: int = 0
    max_concurrent: int = 0
    early_stop: dict[str, Any] | None = None
    seed: int | None = None
    runs_by_status: dict[str, int] = field(default_factory=dict)
    left: int = 0  # runs still to start
    best: SweepBest | None = None  # the lowest val loss so far
    runs: list[SweepRun] = field(default_factory=list)  # GET /sweeps/{id} only
    created_at: datetime | None = None
    finished_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ended(self) -> bool:
        return self.status in SWEEP_TERMINAL

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sweep:
        values = _known(cls, data)
        values.update({k: _time(data.get(k)) for k in ("created_at", "finished_at")})
        best = data.get("best")
        values["best"] = SweepBest(**_known(SweepBest, best)) if isinstance(best, dict) else None
        values["runs"] = [SweepRun(**_known(SweepRun, r)) for r in data.get("runs") or []]
        return cls(**values, raw=data)

"""A run's progress, derived from its events: the events table is the only record."""

from __future__ import annotations

import json
import statistics
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlmodel import Session

from api.db import CURRENT, E, Run

RECENT = 50  # iter events the median step time looks at: recent enough to follow a change


class Warning_(BaseModel):
    code: str | None = None
    message: str | None = None
    iter: int | None = None


class Progress(BaseModel):
    iter: int | None = None
    max_iters: int | None = None
    fraction: float | None = None
    loss: float | None = None
    lr: float | None = None
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    median_step_ms: float | None = None
    mfu: float | None = None  # null where the device's peak FLOP/s is unknown
    tokens_per_s: float | None = None
    tokens_seen: int | None = None
    eta_s: float | None = None
    last_seq: int = 0
    warnings: list[Warning_] = []


def _bodies(s: Session, run_id: str, type_: str, *, newest: int | None = None) -> list[dict[str, Any]]:
    q = select(E.body).where(E.run_id == run_id, E.type == type_, CURRENT)
    q = q.order_by(E.seq.desc()).limit(newest) if newest else q.order_by(E.seq)
    return [json.loads(b) for b in s.execute(q).scalars()]


def progress(s: Session, run: Run) -> Progress:
    cfg = run.config
    p = Progress(max_iters=cfg.get("max_iters"))
    p.last_seq = (
        s.execute(select(E.seq).where(E.run_id == run.id, CURRENT).order_by(E.seq.desc()).limit(1)).scalar() or 0
    )
    iters = _bodies(s, run.id, "iter", newest=RECENT)
    evals = _bodies(s, run.id, "eval")
    p.warnings = [Warning_(**{k: w.get(k) for k in ("code", "message", "iter")}) for w in _bodies(s, run.id, "warning")]
    if iters:
        last = iters[0]
        p.iter, p.loss, p.lr, p.mfu = (
            last.get("iter"),
            last.get("loss"),
            last.get("lr"),
            last.get("mfu_avg", last.get("mfu")),
        )
        p.tokens_per_s = last.get("tokens_per_s")
        steps = [e["step_ms"] for e in iters if isinstance(e.get("step_ms"), int | float)]
        p.median_step_ms = statistics.median(steps) if steps else None
    vals = [e["val_loss"] for e in evals if isinstance(e.get("val_loss"), int | float)]
    if vals:
        p.best_val_loss, p.last_val_loss = min(vals), vals[-1]
    if p.iter is not None:
        tpi = cfg.get("gradient_accumulation_steps", 1) * cfg.get("batch_size", 1) * cfg.get("block_size", 1)
        # iter i reports the (i+1)-th step; a finished run trained all of max_iters, whatever
        # log_interval left unreported.
        trained = p.max_iters if run.status == "succeeded" and p.max_iters else p.iter + 1
        p.tokens_seen = trained * tpi
        if p.max_iters:
            p.fraction = 1.0 if run.status == "succeeded" else min(1.0, p.iter / p.max_iters)
        if p.max_iters is not None and p.median_step_ms is not None and run.status == "running":
            left = max(0, p.max_iters - p.iter)
            eta_ms = left * p.median_step_ms
            eval_ms = [e["eval_ms"] for e in evals if isinstance(e.get("eval_ms"), int | float)]
            if eval_ms and cfg.get("eval_interval"):
                eta_ms += (left // cfg["eval_interval"]) * statistics.median(eval_ms)  # evals are not steps
            p.eta_s = eta_ms / 1000
    return p


class Glance(BaseModel):
    """A run at a glance, for lists: the newest iter event and the best val loss."""

    iter: int | None = None
    max_iters: int | None = None
    fraction: float | None = None
    loss: float | None = None
    best_val_loss: float | None = None
    mfu: float | None = None


def glances(s: Session, runs: list[Run]) -> dict[str, Glance]:
    """Glances for a page of runs in two queries, not three per run."""
    ids = [r.id for r in runs]
    out = {r.id: Glance(max_iters=r.config.get("max_iters")) for r in runs}
    if not ids:
        return out
    newest = (
        select(E.run_id, func.max(E.seq).label("seq"))
        .where(E.run_id.in_(ids), E.type == "iter", CURRENT)
        .group_by(E.run_id)
        .subquery()
    )
    for run_id, body in s.execute(
        select(E.run_id, E.body).join(newest, (E.run_id == newest.c.run_id) & (E.seq == newest.c.seq))
    ):
        ev, g = json.loads(body), out[run_id]
        g.iter, g.loss, g.mfu = ev.get("iter"), ev.get("loss"), ev.get("mfu_avg", ev.get("mfu"))
        if g.iter is not None and g.max_iters:
            g.fraction = min(1.0, g.iter / g.max_iters)
    for run_id, body in s.execute(select(E.run_id, E.body).where(E.run_id.in_(ids), E.type == "eval", CURRENT)):
        val = json.loads(body).get("val_loss")
        g = out[run_id]
        if isinstance(val, int | float) and (g.best_val_loss is None or val < g.best_val_loss):
            g.best_val_loss = val
    for r in runs:
        if r.status == "succeeded":
            out[r.id].fraction = 1.0
    return out

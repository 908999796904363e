"""A run read the way someone who knows nanoGPT's log reads it: is the loss still falling,
is it overfitting, where does the time go, is the GPU busy, did it blow up, how much data
has the model seen. Derived from the run's events (its current timeline) at request time.

The readings the training loop also gives as it trains (overfitting, low MFU) come from
gpt.readings, rules and sentences both; the ones only a finished timeline can give are here.
"""

from __future__ import annotations

import statistics

from pydantic import BaseModel, Field
from sqlmodel import Session

from api.db import Run
from api.progress import Progress, _bodies
from gpt import readings

TREND_WINDOW = 200  # iter events the loss trend is fitted over
FLAT = 0.02  # a relative change over the window below this is a plateau


class Diagnostics(BaseModel):
    summary: list[str] = Field(default=[], description="the findings as sentences, the most pressing first")
    loss_trend: str | None = Field(default=None, description="falling, flat or rising, over the recent iterations")
    loss_change: float | None = Field(default=None, description="fitted change of the loss over that window")
    train_val_gap: float | None = Field(default=None, description="val loss minus train loss at the last eval")
    gap_widening: bool | None = Field(default=None, description="the gap grew over the last three evals")
    overhead_share: float | None = Field(default=None, description="share of wall time spent evaluating and saving")
    mfu: float | None = Field(default=None, description="smoothed MFU against the device's peak; null if unknown")
    device: str | None = None
    n_params: int | None = None
    tokens_per_param: float | None = Field(default=None, description="tokens seen per parameter (Chinchilla: ~20)")
    nan_iters: list[int] = Field(default=[], description="iterations where the loss became NaN or inf")


def _slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def diagnose(s: Session, run: Run, p: Progress) -> Diagnostics:
    d = Diagnostics()
    cfg = run.config
    started = next((e for e in _bodies(s, run.id, "status") if e.get("status") == "running"), {})
    d.device, d.n_params = started.get("device"), started.get("n_params")
    said: list[str] = []

    nans = [w for w in _bodies(s, run.id, "warning") if w.get("code") == "nan_loss"]
    d.nan_iters = [w["iter"] for w in nans if isinstance(w.get("iter"), int)]
    if nans:
        said.append(nans[-1].get("message") or f"the loss became NaN at iter {d.nan_iters[-1]}")

    evals = [
        e
        for e in _bodies(s, run.id, "eval")
        if isinstance(e.get("val_loss"), int | float) and isinstance(e.get("train_loss"), int | float)
    ]  # a non-finite loss is stored as null
    if evals:
        gaps = [e["val_loss"] - e["train_loss"] for e in evals]
        d.train_val_gap = gaps[-1]
        if len(evals) >= 3:
            d.gap_widening = gaps[-1] > gaps[-2] > gaps[-3]
        if overfitting := readings.overfitting([(e["iter"], e["train_loss"], e["val_loss"]) for e in evals]):
            said.append(overfitting)

    iters = [e for e in _bodies(s, run.id, "iter", newest=TREND_WINDOW) if isinstance(e.get("loss"), int | float)]
    if len(iters) >= 10:
        pts = [(float(e["iter"]), float(e["loss"])) for e in iters]
        span = max(x for x, _ in pts) - min(x for x, _ in pts)
        d.loss_change = _slope(pts) * span
        mean = statistics.fmean(y for _, y in pts)
        rel = d.loss_change / mean if mean else 0.0
        d.loss_trend = "falling" if rel < -FLAT else "rising" if rel > FLAT else "flat"
        if d.loss_trend == "rising" and not nans:
            said.append(
                f"the training loss is rising ({d.loss_change:+.4f} over the last {len(iters)} logged iterations): "
                "a learning rate too high for this model, or a bad batch"
            )
        elif d.loss_trend == "flat" and run.status == "running":
            said.append(
                f"the training loss is flat over the last {len(iters)} logged iterations "
                f"({d.loss_change:+.4f}): lr has decayed, or the model has learned what it can"
            )

    timed = [*evals, *_bodies(s, run.id, "checkpoint")]
    spent_ms = sum(e.get("eval_ms") or e.get("ckpt_ms") or 0.0 for e in timed)
    first_ts = started.get("ts")
    last_ts = iters[0]["ts"] if iters else None
    if timed and first_ts is not None and last_ts is not None:
        last_ts = max(last_ts, *(e.get("ts", 0) for e in timed))
        if last_ts > first_ts:
            d.overhead_share = min(1.0, spent_ms / ((last_ts - first_ts) * 1000))
            if d.overhead_share > 0.2:
                said.append(
                    f"evaluation and checkpoints take {d.overhead_share:.0%} of the wall time: raise eval_interval "
                    f"(now {cfg.get('eval_interval')}) or lower eval_iters (now {cfg.get('eval_iters')})"
                )

    d.mfu = p.mfu
    if d.mfu is None and d.device:
        if d.device == "cpu" or started.get("peak_flops") is None:
            said.append(
                f"MFU is n/a: the peak FLOP/s of {d.device} is not known (set peak_flops in the config to get one)"
            )
    elif d.mfu is not None:
        low_mfu = readings.low_mfu(
            d.mfu,
            device=d.device or "the device",
            batch_size=cfg.get("batch_size", 0),
            block_size=cfg.get("block_size", 0),
            n_embd=cfg.get("n_embd", 0),
            compiled=bool(started.get("compile")),
            dtype=started.get("dtype"),
        )
        if low_mfu:
            said.append(low_mfu)

    if p.tokens_seen and d.n_params:
        d.tokens_per_param = p.tokens_seen / d.n_params
        said.append(
            f"{p.tokens_seen:,} tokens seen, {d.tokens_per_param:.1f} per parameter"
            + (" (compute-optimal is about 20)" if d.tokens_per_param < 20 else "")
        )
    if p.eta_s is not None:
        said.append(f"about {_duration(p.eta_s)} to go")
    d.summary = said
    return d


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"

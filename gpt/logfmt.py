"""Events as the lines a person knows from nanoGPT's terminal (`iter ...`, `step ...`).

Torch-free: the command line and the API's /log both print through it.
"""

from __future__ import annotations

from typing import Any


def _num(x: Any, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, int | float) else "n/a"


def format_event(ev: dict[str, Any]) -> list[str]:
    t = ev.get("type")
    if t == "iter":
        # The smoothed MFU, as nanoGPT prints; null where the device's peak is unknown.
        mfu = ev.get("mfu_avg", ev.get("mfu"))
        mfu_s = f"{mfu * 100:.2f}%" if isinstance(mfu, int | float) else "n/a"
        loss, step_ms = _num(ev.get("loss"), ".4f"), _num(ev.get("step_ms"), ".2f")
        return [f"iter {ev.get('iter')}: loss {loss}, time {step_ms}ms, mfu {mfu_s}"]
    if t == "eval":
        return [
            f"step {ev.get('iter')}: train loss {_num(ev.get('train_loss'), '.4f')}, "
            f"val loss {_num(ev.get('val_loss'), '.4f')}",
            f"eval time {_num(ev.get('eval_ms'), '.2f')}ms",  # nanoGPT folds this into the next iter's time
        ]
    if t == "checkpoint":
        best = " (best so far)" if ev.get("best") else ""
        size = ev.get("bytes")
        size_s = f"{size / 1e6:.1f} MB, " if isinstance(size, int | float) else ""
        return [f"saving checkpoint to {ev.get('path', 'out')}{best} ({size_s}{_num(ev.get('ckpt_ms'), '.0f')}ms)"]
    if t == "status":
        line = f"run {ev.get('status')}"
        if ev.get("from_iter") is not None:
            line += f" (resuming from iter {ev['from_iter']})"
        if ev.get("reason"):
            line += f": {ev['reason']}"
        return [line]
    if t == "warning":
        return [f"warning [{ev.get('code')}] at iter {ev.get('iter')}: {ev.get('message')}"]
    if t == "sample":
        return [f"sample at iter {ev.get('iter')} for {ev.get('prompt')!r}:", *str(ev.get("text", "")).splitlines()]
    return [f"{t}: {ev}"]

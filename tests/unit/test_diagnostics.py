"""GET /runs/{id}'s diagnostics, from events written as a worker writes them (SQLite, no Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.db import Database, Run, dumps, event_row, insert_events
from api.main import create_app
from api.migrate import upgrade
from api.settings import Settings
from gpt.readings import overfitting
from tests.harness import free_port

CFG = {"max_iters": 1000, "batch_size": 4, "block_size": 64, "n_embd": 128, "eval_interval": 100, "eval_iters": 200}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[TestClient, Database]]:
    settings = Settings(data_dir=tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    upgrade(settings.db_url)
    with TestClient(create_app(settings)) as c:
        yield c, c.app.state.db  # type: ignore[attr-defined]


def _run(db: Database, events: list[dict[str, Any]], status: str = "running") -> str:
    with db.transaction() as s:
        s.add(Run(id="r", status=status, config=CFG, attempt=1, created_at=0.0))
        rows = []
        for seq, ev in enumerate(events, 1):
            ev = {"run_id": "r", "seq": seq, "attempt": 1, **ev}
            rows.append(event_row(ev, dumps(ev)))
        insert_events(s, rows)
    return "r"


def _start(device: str = "NVIDIA H200", peak: float | None = 989e12) -> dict[str, Any]:
    return {"type": "status", "status": "running", "ts": 0.0, "iter": 0, "device": device, "dtype": "float32"} | {
        "compile": False,
        "n_params": 10_000,
        "peak_flops": peak,
    }


def _iters(start: int, stop: int, loss: Any, mfu: float | None = 0.03) -> list[dict[str, Any]]:
    return [
        {"type": "iter", "ts": i * 0.05, "iter": i, "loss": loss(i), "step_ms": 50.0, "mfu": mfu, "mfu_avg": mfu}
        for i in range(start, stop)
    ]


def _eval(it: int, train: float | None, val: float | None) -> dict[str, Any]:
    return {"type": "eval", "ts": it * 0.05, "iter": it, "train_loss": train, "val_loss": val, "eval_ms": 4000.0}


def test_overfitting_overhead_low_mfu_and_tokens_per_param(app: tuple[TestClient, Database]) -> None:
    client, db = app
    events = [_start()]
    for k, (train, val) in enumerate([(2.0, 2.1), (1.5, 1.7), (1.2, 1.75), (1.0, 1.8)]):
        events += _iters(k * 100, (k + 1) * 100, lambda i: 3.0 - i / 200)
        events.append(_eval((k + 1) * 100, train, val))
    _run(db, events)
    d = client.get("/runs/r").json()["diagnostics"]
    assert d["loss_trend"] == "falling" and d["loss_change"] < 0
    assert d["train_val_gap"] == pytest.approx(0.8) and d["gap_widening"] is True
    text = " | ".join(d["summary"])
    assert "overfitting" in text and "iter 200" in text  # the best val loss, 1.7, was at iter 200
    evals = [(100, 2.0, 2.1), (200, 1.5, 1.7), (300, 1.2, 1.75), (400, 1.0, 1.8)]
    assert overfitting(evals) in d["summary"]  # the training loop's own warning, word for word
    # 4 evals x 4 s in 20 s of training: evaluation dominates the wall time.
    assert d["overhead_share"] > 0.5 and "raise eval_interval (now 100)" in text
    assert d["mfu"] == pytest.approx(0.03)
    assert "MFU is 3.0% of NVIDIA H200's peak" in text
    assert "small micro-batches (4 x 64 = 256 tokens)" in text and "torch.compile is off" in text
    assert d["tokens_per_param"] == pytest.approx(400 * 256 / 10_000)  # iter 399 was the 400th step
    assert "compute-optimal is about 20" in text


def test_nan_and_a_rising_loss(app: tuple[TestClient, Database]) -> None:
    client, db = app
    events = [_start(), *_iters(0, 50, lambda i: 2.0 + i / 10), _eval(50, None, None)]  # non-finite: null
    events.append(
        {"type": "warning", "ts": 3.0, "code": "nan_loss", "iter": 50, "message": "loss became nan at iter 50"}
    )
    _run(db, events, status="failed")
    d = client.get("/runs/r").json()["diagnostics"]
    assert d["nan_iters"] == [50]
    assert d["summary"][0] == "loss became nan at iter 50"  # the most pressing first
    assert d["loss_trend"] == "rising"


def test_a_cpu_run_has_no_mfu_and_says_why(app: tuple[TestClient, Database]) -> None:
    client, db = app
    _run(db, [_start(device="cpu", peak=None), *_iters(0, 20, lambda i: 2.0, mfu=None)])
    d = client.get("/runs/r").json()["diagnostics"]
    assert d["mfu"] is None
    assert any("MFU is n/a: the peak FLOP/s of cpu is not known" in line for line in d["summary"])
    assert d["loss_trend"] == "flat"

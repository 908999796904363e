"""Runs on several devices through the service: a training worker owning two CPU ranks
(`gptjobs worker --queue train --nproc 2`), its runs' ranks started by torch's elastic
launcher (gloo, one torch thread each), rank 0's events in one stream; a cancel and a warm
shutdown reaching every rank; a run no worker can serve waiting with its reason."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import FINAL, Proc, Stack, wait_for

TWO: dict[str, Any] = {"nproc_per_node": 2, "gradient_accumulation_steps": 2, "warmup_iters": 5}


@pytest.fixture(scope="module")
def ddp_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"GPTJOBS_IDLE_CHECK_S": "1", "GPTJOBS_REAPER_INTERVAL_S": "0.5"}
    with Stack(tmp_path_factory.mktemp("gptjobs-ddp"), env=env) as s:
        s.up(train=0)
        s.start_worker("train", nproc=2)
        yield s


def worker(stack: Stack) -> Proc:
    return stack.workers[-1]


def iters(events: list[dict[str, Any]]) -> list[int]:
    return [e["iter"] for e in events if e["type"] == "iter"]


def ranks_gone(stack: Stack, timeout: float = 10) -> None:
    wait_for(lambda: not worker(stack).ranks(), timeout, "the ranks to end")


def test_a_two_rank_run_is_one_stream(ddp_stack: Stack) -> None:
    run = ddp_stack.submit(TWO | {"max_iters": 30, "lr_decay_iters": 30, "eval_interval": 10})
    done = ddp_stack.wait_status(run["id"], FINAL)
    assert done["status"] == "succeeded", done
    history = ddp_stack.events(run["id"])
    started = history[0]
    assert started["world_size"] == 2 and "2 x cpu" in started["reason"], started
    assert started["tokens_per_iter"] == 2 * 4 * 32  # both ranks' micro-steps: batch 4, block 32
    assert iters(history) == list(range(30))  # one iter event per iteration, not one per rank
    ckpt = ddp_stack.checkpoint(run["id"])
    assert len(ckpt["resume"]["ranks"]) == 2 and ckpt["iter_num"] == 30


def test_cancel_ends_every_rank_within_one_step(ddp_stack: Stack) -> None:
    run_id = ddp_stack.submit(TWO | {"max_iters": 100_000, "eval_interval": 1000})["id"]
    ddp_stack.wait_iter(run_id, 20, timeout=90)
    ranks = worker(ddp_stack).ranks()
    assert sorted(ranks) == [0, 1], ranks
    asked = time.monotonic()
    assert ddp_stack.http.post(f"/runs/{run_id}/cancel").status_code == 202
    done = ddp_stack.wait_status(run_id, FINAL, timeout=30)
    took = time.monotonic() - asked
    ranks_gone(ddp_stack)
    assert done["status"] == "cancelled", done
    history = ddp_stack.events(run_id)
    last = iters(history)[-1]
    ckpt = [e for e in history if e["type"] == "checkpoint"][-1]
    assert ckpt["iter"] == last + 1  # stopped at the next step: both ranks, at the same one
    assert took < 10, f"{took:.1f} s from the cancel to the end"


def test_warm_shutdown_checkpoints_every_rank_and_the_run_resumes(ddp_stack: Stack) -> None:
    run_id = ddp_stack.submit(TWO | {"max_iters": 400, "lr_decay_iters": 400, "eval_interval": 1000})["id"]
    ddp_stack.wait_iter(run_id, 30, timeout=90)
    w = worker(ddp_stack)
    w.stop(signal.SIGTERM, grace=60)  # Celery's warm shutdown: the run in hand checkpoints first
    assert w.returncode == 0, w.tail()
    queued = ddp_stack.run(run_id)
    assert queued["status"] == "queued" and "the worker shut down" in queued["reason"], queued
    saved = ddp_stack.checkpoint(run_id)
    assert len(saved["resume"]["ranks"]) == 2
    w.start()
    done = ddp_stack.wait_status(run_id, FINAL, timeout=180)
    assert done["status"] == "succeeded", done
    history = ddp_stack.events(run_id)
    resumed = [e for e in history if e["type"] == "status" and e.get("from_iter") is not None]
    assert [e["from_iter"] for e in resumed] == [saved["iter_num"]]
    assert iters(history) == list(range(400))  # each iteration once


def test_a_run_no_worker_can_serve_waits_saying_why(ddp_stack: Stack, tmp_path: Path) -> None:
    run_id = ddp_stack.submit({"nproc_per_node": 4, "gradient_accumulation_steps": 4, "max_iters": 10})["id"]

    def reason() -> str | None:
        return ddp_stack.run(run_id)["reason"]

    said = wait_for(reason, 10, "the run's reason")
    assert said == "waiting for a worker with 4 devices; the largest connected has 2", said
    assert ddp_stack.run(run_id)["status"] == "queued"
    assert ddp_stack.http.post(f"/runs/{run_id}/cancel").json()["status"] == "cancelled"

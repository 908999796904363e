"""The Python client (`gptjobs`) against the real stack: one small run, created, streamed to
its end and waited for, then listed, paged, sampled and its checkpoints downloaded; the
server's refusals as the library's error types; a wait that times out and a cancel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import gptjobs
from tests.harness import TINY, free_port
from tests.integration.conftest import Stack

CONFIG = {**TINY, "max_iters": 40, "lr_decay_iters": 40, "eval_interval": 20, "warmup_iters": 0}


@pytest.fixture(scope="module")
def client(stack: Stack) -> Any:
    with gptjobs.Client(stack.url) as c:
        yield c


@pytest.fixture(scope="module")
def streamed(client: gptjobs.Client) -> tuple[gptjobs.Run, list[gptjobs.Event]]:
    """The module's run, and every event the stream yielded from its creation to its end."""
    run = client.runs.create(CONFIG, name="lib tiny", idempotency_key="lib-tiny-1")
    assert run.status == "queued" and run.name == "lib tiny"
    return run, list(client.runs.stream(run.id))


def test_create_stream_wait(stack: Stack, client: gptjobs.Client, streamed: tuple[gptjobs.Run, list]) -> None:
    run, events = streamed
    assert run.config["n_layer"] == 1 and run.config["out_dir"] == f"runs/{run.id}"  # filled in by the server
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1))  # contiguous, each once
    assert seqs == [e["seq"] for e in stack.events(run.id)]
    assert events[-1]["type"] == "status" and events[-1]["status"] == "succeeded"
    assert {"iter", "eval", "checkpoint"} <= {e["type"] for e in events}

    done = client.runs.wait(run.id, timeout=30)
    assert done.status == "succeeded" and done.ended and done.finished_at is not None
    assert done.progress.iter == 39 and done.progress.best_val_loss is not None
    assert done.progress.last_seq == seqs[-1] and done.raw == stack.run(run.id) | {"created_at": done.raw["created_at"]}
    assert done.diagnostics is not None and done.diagnostics.summary

    # From the middle: only what follows; from the end: nothing, and the run's own status.
    rest = list(client.runs.stream(run.id, after=seqs[-5]))
    assert [e["seq"] for e in rest] == seqs[-4:]
    late = client.runs.stream(run.id, after=seqs[-1])
    assert list(late) == [] and late.final is not None and late.final["status"] == "succeeded"

    # The same Idempotency-Key and body: the same run, not a second one.
    again = client.runs.create(CONFIG, name="lib tiny", idempotency_key="lib-tiny-1")
    assert again.id == run.id
    with pytest.raises(gptjobs.Conflict, match="Idempotency-Key"):
        client.runs.create({**CONFIG, "max_iters": 41}, idempotency_key="lib-tiny-1")


def test_list_and_events_a_page_at_a_time(client: gptjobs.Client, streamed: tuple[gptjobs.Run, list]) -> None:
    run, events = streamed
    page = client.runs.list(limit=1)
    assert len(page) == 1 and isinstance(page.runs[0], gptjobs.Run)
    everything = list(client.runs.list_all(page_size=1))
    assert run.id in [r.id for r in everything] and len(everything) >= 1
    if len(everything) > 1:
        assert page.next_cursor is not None
        assert client.runs.list(limit=1, cursor=page.next_cursor).runs[0].id == everything[1].id
    mine = next(r for r in client.runs.list(status=["succeeded"]) if r.id == run.id)
    assert mine.progress.loss is not None and mine.progress.iter == 39  # a list's glance
    assert all(r.status == "succeeded" for r in client.runs.list(status="succeeded"))

    first = client.runs.events(run.id, limit=5)
    assert [e["seq"] for e in first.events] == [1, 2, 3, 4, 5] and first.has_more and first.next_after == 5
    assert list(client.runs.events_all(run.id, limit=7)) == events
    evals = list(client.runs.events_all(run.id, type=["eval", "checkpoint"]))
    assert evals == [e for e in events if e["type"] in ("eval", "checkpoint")]
    tail = client.runs.events(run.id, after=events[-1]["seq"])
    assert tail.events == [] and not tail.has_more and tail.next_after == events[-1]["seq"]


def test_sample_plain_and_streamed(client: gptjobs.Client, sample_worker: None, streamed: tuple) -> None:
    run, _ = streamed
    plain = client.runs.sample(run.id, "ROMEO:", max_new_tokens=30, seed=7, num_samples=2, checkpoint="best")
    assert (plain.checkpoint_iter, plain.seed, len(plain.texts)) == (40, 7, 2)
    assert plain.new_tokens == 60 and all(plain.texts)

    with client.runs.sample_stream(run.id, "ROMEO:", max_new_tokens=30, seed=7, num_samples=2, checkpoint="best") as s:
        assert (s.checkpoint_iter, s.seed, s.num_samples) == (40, 7, 2)
        pieces = list(s)
    assert len(pieces) >= 1 and "".join(pieces) == plain.text  # the same seed writes the same text
    assert s.result is not None and s.result.texts == plain.texts == s.texts

    drawn = client.runs.sample(run.id, max_new_tokens=5)  # no seed: the server draws one, and says which
    assert client.runs.sample(run.id, max_new_tokens=5, seed=drawn.seed).texts == drawn.texts
    with pytest.raises(gptjobs.ValidationError) as e:
        client.runs.sample(run.id, checkpoint=12345)
    assert e.value.fields == {"checkpoint": "no checkpoint at iter 12345 is kept (kept: 20, 40)"}


def test_checkpoints_list_and_download(stack: Stack, client: gptjobs.Client, streamed: tuple, tmp_path: Path) -> None:
    run, _ = streamed
    kept = client.runs.checkpoints(run.id)
    assert [c.iter for c in kept] == [20, 40] and kept[-1].latest and not kept[0].latest
    assert sum(c.best for c in kept) == 1 and all(c.bytes > 0 and c.created_at for c in kept)

    best = client.runs.download_checkpoint(run.id, "best", tmp_path / "a" / "best.pt")
    assert best == tmp_path / "a" / "best.pt"
    assert best.read_bytes() == stack.http.get(f"/runs/{run.id}/checkpoints/best").content
    into = client.runs.download_checkpoint(run.id, 20, tmp_path)  # a directory: ckpt.pt in it, for nanoGPT
    assert into == tmp_path / "ckpt.pt"
    assert into.read_bytes() == stack.http.get(f"/runs/{run.id}/checkpoints/20").content
    assert into.stat().st_size == kept[0].bytes
    with pytest.raises(gptjobs.NotFound, match="has no checkpoint 30"):
        client.runs.download_checkpoint(run.id, 30, tmp_path / "none.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "ckpt.pt"]  # nothing half-written left


def test_refusals_are_typed(client: gptjobs.Client, streamed: tuple) -> None:
    run, _ = streamed
    with pytest.raises(gptjobs.NotFound) as nf:
        client.runs.get("nosuchrun")
    assert (nf.value.status, nf.value.detail) == (404, "run 'nosuchrun' not found")
    with pytest.raises(gptjobs.NotFound, match=r"\(4404\)"):
        list(client.runs.stream("nosuchrun"))
    with pytest.raises(gptjobs.ValidationError) as bad:
        client.runs.create({**CONFIG, "n_embd": 100, "n_head": 6})
    assert bad.value.fields == {"config.n_embd": "must be divisible by n_head (100 is not a multiple of 6)"}
    with pytest.raises(gptjobs.ValidationError, match="unknown status") as bad:
        client.runs.list(status="bogus")
    assert list(bad.value.fields) == ["status"]
    with pytest.raises(gptjobs.Conflict, match="run already ended: succeeded") as ended:
        client.runs.cancel(run.id)
    assert ended.value.status == 409
    with pytest.raises(gptjobs.Unreachable), gptjobs.Client(f"http://127.0.0.1:{free_port()}") as nobody:
        nobody.runs.get(run.id)


def test_a_wait_that_runs_out_then_a_cancel(client: gptjobs.Client, streamed: tuple) -> None:
    run = client.runs.create({**CONFIG, "max_iters": 100_000, "lr_decay_iters": 100_000, "eval_interval": 100_000})
    try:
        with pytest.raises(gptjobs.Timeout):
            client.runs.wait(run.id, timeout=1)
        assert not client.runs.get(run.id).ended  # the wait ran out, not the run
        asked = client.runs.cancel(run.id)
        assert asked.status in ("cancelled", "running")  # at once if still queued, else after a checkpoint
        done = client.runs.wait(run.id, timeout=60)
    finally:
        if not client.runs.get(run.id).ended:  # never leave a long run in front of the other tests' runs
            client.runs.cancel(run.id)
    assert done.status == "cancelled"

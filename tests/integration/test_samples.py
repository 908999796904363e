"""Sampling against the real processes: sampling over HTTP from a finished run and from
one still training, determinism under a seed, every error, and the checkpoints endpoints."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import torch
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from tests.harness import Stack, wait_for

NANOGPT_KEYS = {"model", "optimizer", "model_args", "iter_num", "best_val_loss", "config"}
NANOGPT_MODEL_ARGS = {"n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout"}


@pytest.fixture(scope="module")
def finished(stack: Stack) -> str:
    run = stack.submit(dict(max_iters=40, lr_decay_iters=40, eval_interval=20, warmup_iters=0))
    assert stack.wait_status(run["id"], {"succeeded", "failed"})["status"] == "succeeded", stack.log_tail("train")
    return run["id"]


def _sample(stack: Stack, run_id: str, **body: Any) -> dict[str, Any]:
    resp = stack.http.post(f"/runs/{run_id}/samples", json=body)
    assert resp.status_code == 200, (resp.text, stack.log_tail("sample"))
    return resp.json()


def _sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields.get("event", "message"), json.loads(fields["data"])))
    return out


def test_sample_a_finished_run_as_json_and_streamed(stack: Stack, sample_worker: None, finished: str) -> None:
    req = {"prompt": "ROMEO:", "max_new_tokens": 40, "seed": 7, "num_samples": 2}
    got = _sample(stack, finished, **req)
    assert got["checkpoint_iter"] == 40 and got["seed"] == 7 and got["new_tokens"] == 80 and got["tokens_per_s"] > 0
    texts = [s["text"] for s in got["samples"]]
    assert len(texts) == 2 and all(len(t) == 40 for t in texts) and texts[0] != texts[1]  # one char a token

    # Same seed, checkpoint and request: the same text. Another seed: another text.
    assert _sample(stack, finished, **req)["samples"] == got["samples"]
    assert _sample(stack, finished, **{**req, "seed": 8})["samples"] != got["samples"]
    # Without a seed one is chosen and returned, so the request can be repeated exactly.
    free = _sample(stack, finished, prompt="ROMEO:", max_new_tokens=20)
    assert _sample(stack, finished, prompt="ROMEO:", max_new_tokens=20, seed=free["seed"])["samples"] == free["samples"]

    # Streamed as text: the prompt, sample 0 as it is generated, then the others.
    with stack.http.stream("POST", f"/runs/{finished}/samples", json={**req, "stream": True}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        assert resp.headers["x-seed"] == "7" and resp.headers["x-checkpoint-iter"] == "40"
        chunks = list(resp.iter_text())
    assert "".join(chunks) == f"ROMEO:{texts[0]}\n---------------\nROMEO:{texts[1]}\n"
    assert len(chunks) > 2  # piece by piece, not one body at the end

    # Server-sent events carry the same JSON: start, pieces, and the whole answer at the end.
    resp = stack.http.post(
        f"/runs/{finished}/samples", json={**req, "stream": True}, headers={"Accept": "text/event-stream"}
    )
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = _sse(resp.text)
    assert events[0] == ("start", {"checkpoint_iter": 40, "seed": 7, "num_samples": 2})
    pieces = [data["samples"] for kind, data in events if kind == "message"]
    assert ["".join(p[i]["text"] for p in pieces) for i in range(2)] == texts
    kind, end = events[-1]
    assert kind == "end" and {**end, "tokens_per_s": None} == {**got, "tokens_per_s": None}


def test_sample_chosen_checkpoints_and_download_them(stack: Stack, sample_worker: None, finished: str) -> None:
    listed = stack.http.get(f"/runs/{finished}/checkpoints").json()["checkpoints"]
    assert [c["iter"] for c in listed] == [20, 40]
    assert [c["latest"] for c in listed] == [False, True] and sum(c["best"] for c in listed) == 1
    assert all(c["bytes"] > 0 and isinstance(c["val_loss"], float) and c["created_at"] for c in listed)
    best = next(c["iter"] for c in listed if c["best"])

    assert _sample(stack, finished, max_new_tokens=5, checkpoint=20)["checkpoint_iter"] == 20
    assert _sample(stack, finished, max_new_tokens=5, checkpoint="best")["checkpoint_iter"] == best
    assert _sample(stack, finished, max_new_tokens=5, checkpoint="latest")["checkpoint_iter"] == 40

    # What nanoGPT's sample.py does with a ckpt.pt: torch.load(weights_only=True), then its keys.
    resp = stack.http.get(f"/runs/{finished}/checkpoints/20")
    assert resp.status_code == 200 and 'filename="ckpt.pt"' in resp.headers["content-disposition"]
    state = torch.load(io.BytesIO(resp.content), map_location="cpu", weights_only=True)
    assert set(state) >= NANOGPT_KEYS and state["iter_num"] == 20
    assert set(state["model_args"]) == NANOGPT_MODEL_ARGS
    assert stack.http.get(f"/runs/{finished}/checkpoints/latest").content != resp.content
    assert stack.http.get(f"/runs/{finished}/checkpoints/30").status_code == 404
    assert stack.http.get("/runs/nosuchrun/checkpoints").status_code == 404


def test_errors_are_answers(stack: Stack, sample_worker: None, finished: str) -> None:
    def post(run_id: str = finished, **body: Any) -> tuple[int, Any]:
        resp = stack.http.post(f"/runs/{run_id}/samples", json=body)
        return resp.status_code, resp.json()["detail"]

    def field(status_detail: tuple[int, Any]) -> tuple[str, str]:
        status, detail = status_detail
        assert status == 422, detail
        return "/".join(map(str, detail[0]["loc"])), detail[0]["msg"]

    status, detail = post("nosuchrun")
    assert status == 404 and "not found" in detail
    loc, msg = field(post(prompt="Café €5"))  # shakespeare_char has neither é nor €
    assert loc == "body/prompt" and "'é'" in msg and "'€'" in msg and "vocabulary" in msg
    loc, msg = field(post(prompt="é", stream=True))  # an error even when streaming was asked for
    assert loc == "body/prompt"
    loc, msg = field(post(max_new_tokens=10**6))
    assert loc == "body/max_new_tokens" and "at most 2000" in msg
    assert field(post(num_samples=1000))[0] == "body/num_samples"
    assert field(post(prompt="x" * 20_001))[0] == "body/prompt"
    assert field(post(temperature=-1))[0] == "body/temperature"
    assert field(post(top_k=0))[0] == "body/top_k"
    assert field(post(max_tokens=5))[0] == "body/max_tokens"  # a misspelt key is not ignored
    loc, msg = field(post(checkpoint=30))
    assert loc == "body/checkpoint" and "kept: 20, 40" in msg


def test_sample_while_training(stack: Stack, sample_worker: None) -> None:
    run = stack.submit(dict(max_iters=1_000_000, lr_decay_iters=1_000_000, eval_interval=25, eval_iters=2))
    queued = stack.submit()  # behind the first on the one training worker
    status, detail = _post_detail(stack, queued["id"])
    assert status == 409 and "no checkpoint yet: it is queued" in detail
    assert stack.http.post(f"/runs/{queued['id']}/cancel").status_code == 200
    status, detail = _post_detail(stack, queued["id"])
    assert status == 409 and "ended (cancelled) before writing one" in detail

    def newest() -> int:
        return max(
            (c["iter"] for c in stack.http.get(f"/runs/{run['id']}/checkpoints").json()["checkpoints"]), default=0
        )

    first = wait_for(newest, 60, "a first checkpoint")
    got = _sample(stack, run["id"], prompt="KING:", max_new_tokens=20)
    assert got["checkpoint_iter"] >= first and len(got["samples"][0]["text"]) == 20
    later = wait_for(lambda: (n := newest()) > got["checkpoint_iter"] and n, 60, "a newer checkpoint")
    again = _sample(stack, run["id"], prompt="KING:", max_new_tokens=20)
    assert again["checkpoint_iter"] >= later  # the worker noticed the newer ckpt.pt
    assert stack.run(run["id"])["status"] == "running"
    assert stack.http.post(f"/runs/{run['id']}/cancel").status_code == 202
    stack.wait_status(run["id"], {"cancelled"})


def _post_detail(stack: Stack, run_id: str, **body: Any) -> tuple[int, Any]:
    resp = stack.http.post(f"/runs/{run_id}/samples", json=body)
    return resp.status_code, resp.json()["detail"]


@pytest.fixture
def workerless(stack: Stack) -> Iterator[tuple[TestClient, redis.Redis]]:
    """The API on a Redis database no sampling worker listens to, with 1 s timeouts."""
    url = stack.redis_url.rsplit("/", 1)[0] + "/1"
    settings = Settings(
        data_dir=stack.data_dir,
        artifacts_url=stack.env.get("GPTJOBS_ARTIFACTS_URL"),
        database_url=stack.env["GPTJOBS_DATABASE_URL"],
        redis_url=url,
        sample_pickup_timeout_s=1,
        sample_answer_timeout_s=1,
    )
    r = redis.Redis.from_url(url)
    with TestClient(create_app(settings)) as client:
        yield client, r
    r.flushdb()
    r.close()


def test_no_worker_503_then_a_silent_one_504(workerless: tuple[TestClient, redis.Redis], finished: str) -> None:
    client, r = workerless
    resp = client.post(f"/runs/{finished}/samples", json={"max_new_tokens": 5})
    assert resp.status_code == 503 and "no sampling worker took the request within 1 s" in resp.json()["detail"]

    # A fake worker, named as such: it takes the request off Celery's queue list, says
    # "accepted", and then nothing. The API gives up with a 504 and tells it to stop.
    def take_and_go_quiet() -> None:
        popped = r.brpop(["sample"], timeout=10)
        assert popped is not None
        envelope = json.loads(popped[1])
        request_id = json.loads(base64.b64decode(envelope["body"]))[0][0]
        r.rpush(f"sample:{request_id}", json.dumps([{"t": "accepted"}]))
        stopped.append(request_id)

    r.delete("sample")
    stopped: list[str] = []
    fake = threading.Thread(target=take_and_go_quiet)
    fake.start()
    resp = client.post(f"/runs/{finished}/samples", json={"max_new_tokens": 5})
    fake.join()
    assert resp.status_code == 504 and "went quiet for 1 s" in resp.json()["detail"]
    assert r.exists(f"sample:{stopped[0]}:stop")


def test_a_client_that_leaves_stops_the_worker(stack: Stack, sample_worker: None, finished: str) -> None:
    body = {"max_new_tokens": 2000, "num_samples": 4, "stream": True}
    with stack.http.stream("POST", f"/runs/{finished}/samples", json=body) as resp:
        assert resp.status_code == 200 and next(resp.iter_text())
    # Leaving mid-stream closes the connection; the worker hears of it at its next push.
    wait_for(lambda: "nobody is listening any more" in stack.log_tail("sample", 5), 10, "the worker to stop")
    assert _sample(stack, finished, max_new_tokens=5)["new_tokens"] == 5  # and it serves the next one


def test_a_json_client_that_leaves_stops_the_worker_too(stack: Stack, sample_worker: None, finished: str) -> None:
    before = (stack.logs / "sample.log").read_text().count("nobody is listening any more")
    with pytest.raises(httpx.ReadTimeout):  # and httpx closes the connection
        stack.http.post(f"/runs/{finished}/samples", json={"max_new_tokens": 2000, "num_samples": 8}, timeout=0.3)
    wait_for(
        lambda: (stack.logs / "sample.log").read_text().count("nobody is listening any more") > before,
        10,
        "the worker to stop",
    )

"""The sampling task, on the `sample` queue, so that no training run ever stands in front of it.

A request names a run and a checkpoint ("latest", "best" or an iter); the text goes back on
the request's own Redis list as it is generated (the messages are listed in api/queue.py).
The worker keeps the most recently used checkpoints loaded, keyed by the file itself (its
inode): a newer ckpt.pt is a new file and is loaded, while ckpt.pt, best.pt and
ckpt-<iter>.pt naming the same file share one model. All samples of a request are one batch
through the KV cache; under a seed the text is the same every time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import redis

from api.queue import SAMPLE_REPLY_TTL_S, SAMPLE_TASK
from api.redis_keys import sample_reply_key, sample_stop_key
from api.settings import get_settings
from gpt import checkpoint as ckpt
from gpt.store import Store, file_version
from worker.app import app, redis_client

if TYPE_CHECKING:
    from gpt.sample import Loaded

log = logging.getLogger(__name__)


class Models:
    """Loaded checkpoints, least recently used first out, keyed by the object (its store and
    name) and checked against its version (inode and mtime on a disk, the ETag on an object
    store): a checkpoint replaced under the same name is loaded anew."""

    def __init__(self, size: int, device: str):
        self.size, self.device = size, device
        self.cache: OrderedDict[str, tuple[str, Loaded]] = OrderedDict()

    def get(self, store: Store, name: str) -> Loaded:
        from gpt import sample

        key = store.where(name)
        p = store.local_path(name)
        # On a disk, stat the descriptor we load from: a checkpoint replaced meanwhile
        # (os.replace) can never be cached under the other file's identity.
        with open(p, "rb") if p is not None else store.open(name) as f:
            if p is not None:
                version = file_version(os.fstat(f.fileno()))
            else:
                info = store.info(name)
                if info is None:
                    raise FileNotFoundError(key)
                version = info.version
            hit = self.cache.get(key)
            if hit is not None and hit[0] == version:
                self.cache.move_to_end(key)
                return hit[1]
            t0 = time.perf_counter()
            m = sample.load(f, self.device)
        log.info("loaded %s (iter %d) in %.0f ms", key, m.iter_num, (time.perf_counter() - t0) * 1e3)
        self.cache[key] = (version, m)
        self.cache.move_to_end(key)
        while len(self.cache) > self.size:
            self.cache.popitem(last=False)
        return m


@lru_cache
def _models() -> Models:
    import torch

    s = get_settings()
    return Models(s.sample_models, s.sample_device or ("cuda" if torch.cuda.is_available() else "cpu"))


class Reply:
    """Sends the answer back, a batch of messages per push: the first at once (the API's
    pickup deadline), then whatever piled up, at most every FLUSH_S while text flows. A push
    per token cost a Redis round trip (~0.5 ms on a busy 2-core box) per token, a quarter to
    a third of a tiny model's speed; pushing from a thread of its own cost as much in GIL
    hand-offs. Each push also asks whether the API is still listening."""

    FLUSH_S = 0.05  # text reaches a terminal in pieces of at most this long: too short to notice

    def __init__(self, r: redis.Redis, request_id: str):
        self.r = r
        self.key, self.stop_key = sample_reply_key(request_id), sample_stop_key(request_id)
        self.stopped = False  # the API gave up or the client left: stop generating
        self.pending: list[dict[str, Any]] = []
        self.next_flush = 0.0

    def send(self, msg: dict[str, Any], *, now: bool = False) -> None:
        last = self.pending[-1] if self.pending else None
        if msg["t"] == "text" and last is not None and last["t"] == "text":
            last["p"] = [a + b for a, b in zip(last["p"], msg["p"], strict=True)]
        else:
            self.pending.append(msg)
        if now or time.monotonic() >= self.next_flush:
            self.flush()

    def flush(self) -> None:
        if not self.pending or self.stopped:
            return
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.rpush(self.key, json.dumps(self.pending, separators=(",", ":")))
            pipe.expire(self.key, SAMPLE_REPLY_TTL_S)
            pipe.exists(self.stop_key)
            self.stopped = bool(pipe.execute()[-1])
        except redis.RedisError as e:
            log.warning("%s: cannot send the answer (%s); stopping", self.key, e)
            self.stopped = True
        self.pending = []
        self.next_flush = time.monotonic() + self.FLUSH_S


def _error(status: int, detail: str, loc: list[str] | None = None, value: Any = None) -> dict[str, Any]:
    return {"t": "error", "status": status, "detail": detail, "loc": loc, "input": value}


@app.task(name=SAMPLE_TASK)
def generate(request_id: str, run_id: str, req: dict[str, Any]) -> None:
    """Sample `req` (the API's validated request, seed filled in) from run_id's checkpoint."""
    reply = Reply(redis_client(), request_id)
    reply.send({"t": "accepted"}, now=True)
    try:
        _generate(reply, run_id, req)
    except Exception as e:
        log.exception("sample %s of run %s failed", request_id, run_id)
        reply.send(_error(500, f"sampling failed: {type(e).__name__}: {e}"))
    finally:
        reply.flush()


def _generate(reply: Reply, run_id: str, req: dict[str, Any]) -> None:
    from gpt import sample

    out = get_settings().run_store(run_id)
    which = req["checkpoint"]
    try:
        m = _models().get(out, ckpt.resolve(out, which))
    except FileNotFoundError:  # the API looked first; this is the rare race with a deletion
        if isinstance(which, int):
            kept = ", ".join(map(str, ckpt.kept(out))) or "none"
            msg = f"no checkpoint at iter {which} is kept (kept: {kept})"
            reply.send(_error(422, msg, ["body", "checkpoint"], which))
        else:
            reply.send(_error(409, f"run {run_id} has no checkpoint yet"))
        return
    unknown = getattr(m.tokenizer, "unknown", None)  # only a character vocabulary can lack one
    if unknown is not None and (missing := unknown(req["prompt"])):
        msg = f"characters not in this run's vocabulary: {', '.join(map(repr, missing))}"
        reply.send(_error(422, msg, ["body", "prompt"], req["prompt"]))
        return
    reply.send({"t": "start", "checkpoint_iter": m.iter_num})
    n = req["num_samples"]
    t0 = time.perf_counter()
    for i, pieces in enumerate(
        sample.stream(
            m,
            req["prompt"],
            max_new_tokens=req["max_new_tokens"],
            temperature=req["temperature"],
            top_k=req["top_k"],
            seed=req["seed"],
            num_samples=n,
        )
    ):
        if reply.stopped:
            log.info("%s: stopped after %d tokens: nobody is listening any more", reply.key, i)
            return
        if any(pieces):  # "" while a character's bytes are incomplete
            reply.send({"t": "text", "p": pieces})
    dt = time.perf_counter() - t0
    new = req["max_new_tokens"] * n
    reply.send({"t": "end", "new_tokens": new, "tokens_per_s": round(new / dt, 1) if dt > 0 else None})


def warm_up() -> None:
    """Pay for the first forward pass (allocator, kernels) at start, not in the first request."""
    import torch

    from gpt.model import GPT, GPTConfig

    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=8, dropout=0.0)).eval()
    list(model.generate_stream(torch.zeros(2, 1, dtype=torch.long), 4, 0.8, 4, torch.Generator()))

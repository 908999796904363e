"""Training throughput: gptjobs' engine against a bare loop, and the worker path against both.

    python bench/train_throughput.py [--iters 300]
    python bench/train_throughput.py --worker [--iters 300] [--rounds 2] [--threads N]

Runs the nanoGPT README's CPU config (4 layers, 4 heads, 128 wide, block 64, batch 12)
two ways in one process, interleaved in blocks so that both see the same machine load:
the engine (gpt.train.train, events and all) and a bare loop (batch, forward, backward,
clip, step; no events). Prints the median step time of each and their ratio. nanoGPT's
own train.py ran this config at 71-75 ms per iteration on the reference machine.

--worker runs the same config (a) in this process through gpt.train and (b) through the
whole service: POST /runs -> Celery worker process (solo pool) -> events XADDed to Redis
and written to SQLite -> read back with GET /runs/{id}/events. Rounds alternate a, b so
both see the same machine load. It prints the median step_ms of each (bar: the worker's
within 3% of in-process) and the median wall time between iter events, which also counts
the per-event work the worker adds (JSON, XADD, batched DB writes, the cancel-flag check).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages and tests.harness

from api.settings import usable_cores  # noqa: E402
from gpt.config import TrainConfig, make_config  # noqa: E402
from gpt.data import Dataset, prepare  # noqa: E402
from gpt.model import GPT, GPTConfig  # noqa: E402
from gpt.train import lr_at, train  # noqa: E402
from tests.harness import FINAL, NANOGPT_CPU, Stack  # noqa: E402

CONFIG = NANOGPT_CPU | {"eval_iters": 1, "eval_interval": 100_000}  # no evaluation inside the measured window


def bare_loop(cfg: TrainConfig, data: Dataset) -> Iterator[float]:
    """The same model and optimizer, stepped with nothing else around it."""
    torch.manual_seed(cfg.seed)
    args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size)
    model = GPT(GPTConfig(**args, bias=cfg.bias, vocab_size=data.vocab_size, dropout=cfg.dropout))
    opt = model.configure_optimizer(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), "cpu")
    it = 0
    while True:
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(it, cfg)
        x, y = data.batch("train", cfg.batch_size, cfg.block_size, torch.device("cpu"))
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        yield (time.perf_counter() - t0) * 1e3
        it += 1


def summarize(events: list[dict[str, Any]], skip: int) -> tuple[float, float]:
    iters = [e for e in events if e["type"] == "iter"][skip:]
    step = statistics.median(e["step_ms"] for e in iters)
    wall = statistics.median((b["ts"] - a["ts"]) * 1e3 for a, b in itertools.pairwise(iters))
    return step, wall


def in_process(config: dict[str, Any], data_dir: str, threads: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as out:
        cfg = make_config({**config, "out_dir": out})
        return list(train(cfg, data_dir=data_dir, num_threads=threads))


def worker_mode(a: argparse.Namespace) -> None:
    """The same config in this process and through POST /runs -> Celery worker -> Redis + SQLite."""
    config = {**CONFIG, "max_iters": a.iters, "lr_decay_iters": a.iters, "log_interval": 1}
    threads = {"GPTJOBS_TORCH_THREADS": str(a.threads)}

    with tempfile.TemporaryDirectory(prefix="gptjobs-bench-") as d, Stack(Path(d), env=threads) as stack:
        stack.up(train=1)
        results: dict[str, list[tuple[float, float]]] = {"in-process": [], "worker": []}
        for _ in range(a.rounds):
            results["in-process"].append(summarize(in_process(config, str(stack.root / "datasets"), a.threads), a.skip))
            run = stack.submit(config, base={})
            # Asked once a second: polling harder would take cores from the run it measures.
            status = stack.wait_status(run["id"], FINAL, timeout=3600, every=1.0)["status"]
            assert status == "succeeded", f"{status}; see {stack.logs}"
            results["worker"].append(summarize(stack.events(run["id"], limit=10000), a.skip))
    print(f"{a.iters} iters x {a.rounds} rounds, {a.threads} torch threads; medians per round:")
    for name, rows in results.items():
        steps = ", ".join(f"{s:.2f}" for s, _ in rows)
        walls = ", ".join(f"{w:.2f}" for _, w in rows)
        print(f"  {name:10s} step_ms {steps}   wall ms/iter {walls}")
    ip = statistics.median(s for s, _ in results["in-process"])
    wk = statistics.median(s for s, _ in results["worker"])
    print(f"worker/in-process step_ms: {wk / ip:.3f} (bar: within 3%)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--block", type=int, default=50, help="iterations per turn when interleaving")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--worker", action="store_true", help="compare in-process with the service's worker path")
    p.add_argument("--rounds", type=int, default=2, help="--worker: alternating rounds")
    p.add_argument("--threads", type=int, default=usable_cores(), help="--worker: torch threads on both sides")
    p.add_argument("--skip", type=int, default=20, help="--worker: warm-up iterations left out of the medians")
    a = p.parse_args()
    if a.worker:
        worker_mode(a)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config({**CONFIG, "out_dir": tmp})
        data = prepare(cfg.dataset, cfg.resolved_tokenizer())
        engine = (e["step_ms"] for e in train(cfg) if e["type"] == "iter")
        bare = bare_loop(cfg, data)
        for _ in range(a.warmup):
            next(engine), next(bare)
        eng: list[float] = []
        ref: list[float] = []
        while len(eng) < a.iters:
            eng += [next(engine) for _ in range(a.block)]
            ref += [next(bare) for _ in range(a.block)]
    me, mb = statistics.median(eng[: a.iters]), statistics.median(ref[: a.iters])
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}, iterations: {a.iters} each")
    print(f"engine (gpt.train)   median step {me:7.2f} ms")
    print(f"bare loop            median step {mb:7.2f} ms")
    print(f"ratio engine/bare    {me / mb:.3f}   (bar: <= 1.03)")
    print("nanoGPT train.py     71-75 ms on the reference machine")


if __name__ == "__main__":
    main()

"""Sampling over HTTP: latency of a warm 1-token request, and streamed tokens/s against
gpt.sample in this process on the same checkpoint.

Starts what `gptjobs up` starts (redis-server, the API as `gptjobs serve` runs it, a train
and a sample worker, 1 torch thread each), trains two small runs through the API, then:
- latency: sequential POST /runs/{id}/samples for 1 new token (JSON) on a kept-alive
  connection, after warm-up requests; bar: p50 <= 50 ms with the tiny model.
- throughput: 250 new tokens, streamed (text/plain and server-sent events), timed from
  sending the request to its last byte, against gpt.sample.stream in this process (1
  thread), rounds interleaved; bar: within 15%. Both generate on the same core (the last;
  everything else on the others), so that the figure is the service's overhead rather than
  which process the scheduler favoured; CPU time per token is printed for both as well.

    python bench/sample_latency.py [--requests 200] [--tokens 250] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages and tests.harness

from tests.harness import FINAL, Proc, Stack  # noqa: E402

# The README's tiny run, and nanoGPT's README CPU shape; a few iterations each: the speed
# of generation does not depend on how well the model was trained.
MODELS = {
    "tiny (2x64, block 64)": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64},
    "small (4x128, block 64)": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64},
}
COMMON = {"dataset": "shakespeare_char", "device": "cpu", "compile": False, "dropout": 0.0, "batch_size": 4}
COMMON |= {"max_iters": 10, "lr_decay_iters": 10, "warmup_iters": 0, "eval_interval": 10, "eval_iters": 2}
PROMPT = "ROMEO:"
ALL_CPUS = os.sched_getaffinity(0)
GEN_CPU = {max(ALL_CPUS)}
OTHER_CPUS = (ALL_CPUS - GEN_CPU) or ALL_CPUS


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def latency(http: httpx.Client, run_id: str, n: int) -> None:
    body = {"prompt": PROMPT, "max_new_tokens": 1, "seed": 1}
    for _ in range(20):  # warm: model loaded, connections open
        http.post(f"/runs/{run_id}/samples", json=body).raise_for_status()
    ms = []
    for _ in range(n):
        t0 = time.perf_counter()
        http.post(f"/runs/{run_id}/samples", json=body).raise_for_status()
        ms.append((time.perf_counter() - t0) * 1e3)
    print(
        f"  1 new token, JSON, {n} requests: p50 {pct(ms, 50):.1f} ms, p90 {pct(ms, 90):.1f} ms, "
        f"p99 {pct(ms, 99):.1f} ms, min {min(ms):.1f} ms (bar: p50 <= 50 ms)",
        flush=True,
    )


def throughput(http: httpx.Client, run_id: str, ckpt_path: Path, tokens: int, rounds: int, worker: Proc) -> None:
    import torch

    from gpt import sample

    torch.set_num_threads(1)  # as the worker runs
    m = sample.load(ckpt_path)
    body = {"prompt": PROMPT, "max_new_tokens": tokens, "seed": 1, "stream": True}
    cpu = {"in-process": 0.0, "worker": 0.0}

    def in_process() -> float:
        mine = os.sched_getaffinity(0)
        os.sched_setaffinity(0, GEN_CPU)  # the worker's core
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in sample.stream(m, PROMPT, max_new_tokens=tokens, temperature=0.8, top_k=200, seed=1):
            pass
        rate = tokens / (time.perf_counter() - t0)
        cpu["in-process"] += time.process_time() - c0
        os.sched_setaffinity(0, mine)
        return rate

    def over_http(sse: bool) -> tuple[float, float | None]:
        """tokens/s from sending the request to its last byte, and the worker's own figure."""
        headers = {"Accept": "text/event-stream"} if sse else {}
        c0, t0 = worker.cpu_s(), time.perf_counter()
        with http.stream("POST", f"/runs/{run_id}/samples", json=body, headers=headers) as resp:
            resp.raise_for_status()
            last = ""
            for chunk in resp.iter_text():
                last = chunk
        rate = tokens / (time.perf_counter() - t0)
        cpu["worker"] += (worker.cpu_s() - c0) / 2  # two requests per round
        end = last.rsplit("event: end\ndata: ", 1)
        return rate, json.loads(end[1])["tokens_per_s"] if sse and len(end) == 2 else None

    in_process(), over_http(False), over_http(True)  # warm all three
    cpu.update({k: 0.0 for k in cpu})
    local, plain, sse, on_worker = [], [], [], []
    for _ in range(rounds):  # interleaved: all see the same moments of a shared machine
        local.append(in_process())
        plain.append(over_http(False)[0])
        rate, reported = over_http(True)
        sse.append(rate)
        on_worker.append(reported or 0.0)
    lo = statistics.median(local)
    for name, xs in (("text/plain", plain), ("server-sent events", sse)):
        x = statistics.median(xs)
        print(f"  {tokens} tokens streamed as {name}: {x:.0f} tok/s, {x / lo:.3f} of in-process (bar: >= 0.85)")
    per_token = {k: v / rounds / tokens * 1e3 for k, v in cpu.items()}
    print(
        f"  in-process gpt.sample.stream: {lo:.0f} tok/s; on the worker (its own figure): "
        f"{statistics.median(on_worker):.0f} tok/s; medians of {rounds}\n"
        f"  CPU per token: in-process {per_token['in-process']:.2f} ms, sampling worker (whole process, "
        f"request to answer) {per_token['worker']:.2f} ms",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=250)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    # 1 torch thread each; hundreds of requests a minute by design: lift the per-owner rate limit (120/min).
    env = {"GPTJOBS_TORCH_THREADS": "1", "GPTJOBS_SAMPLE_REQUESTS_PER_MIN": "100000"}
    with tempfile.TemporaryDirectory(prefix="gptjobs-bench-") as d, Stack(Path(d), env=env) as stack:
        stack.up(train=1, sample=1)
        sampler = stack.workers[-1]
        for p in stack.procs:
            os.sched_setaffinity(p.pid, GEN_CPU if p is sampler else OTHER_CPUS)
        os.sched_setaffinity(0, OTHER_CPUS)
        runs = {name: stack.submit({**COMMON, **shape}, base={}, name=name)["id"] for name, shape in MODELS.items()}
        for name, run_id in runs.items():
            st = stack.wait_status(run_id, FINAL, timeout=300)["status"]
            assert st == "succeeded", f"{name}: {st}; see {stack.logs}"
        print(
            f"sample_latency: CPUs {sorted(ALL_CPUS)}; generation (worker and in-process) on {sorted(GEN_CPU)}, "
            f"the rest on {sorted(OTHER_CPUS)}; torch threads 1",
            flush=True,
        )
        stack.http.timeout = httpx.Timeout(60)
        for i, (name, run_id) in enumerate(runs.items()):
            print(name, flush=True)
            if i == 0:
                latency(stack.http, run_id, args.requests)
            throughput(stack.http, run_id, stack.run_dir(run_id) / "ckpt.pt", args.tokens, args.rounds, sampler)


if __name__ == "__main__":
    main()

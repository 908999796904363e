"""Data-parallel throughput: one rank against two, through the service.

    python bench/ddp_throughput.py [--iters 150] [--rounds 6]

nanoGPT's README CPU config (4 layers, 4 heads, 128 wide, block 64, batch 12) with
gradient_accumulation_steps 2, so that both runs train on the same 2 x 12 x 64 tokens an
iteration: one rank does both micro-steps, two ranks one each, then average gradients
(gloo). One training worker owning two CPU ranks (`gptjobs worker --queue train --nproc 2`),
one torch thread per rank; the one-rank run trains in the worker's own process, the two-rank
run in ranks started by torch's elastic launcher. Each round is a one-rank and a two-rank run
back to back, in an order that flips every round (ABBA): this box's speed drifts by ~10%
between runs a minute apart, so each round's ratio compares neighbours.

Prints each round's median tokens/s (from the iter events, past the first 20 iterations)
and its scaling (two ranks over one), the median of the rounds' scalings (bar: >= 1.6x on a
2-core machine), and the events each run wrote per iteration (bar: the same: one stream,
not one per rank).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages and tests.harness

from tests.harness import FINAL, NANOGPT_CPU, Stack  # noqa: E402

WARMUP = 20  # iterations left out: start-up, allocator, the first all-reduces


def one_run(stack: Stack, ranks: int, iters: int) -> tuple[float, float, float]:
    """(median tokens/s, events per iteration, seconds from submit to the first iter event)."""
    config: dict[str, Any] = NANOGPT_CPU | {
        "max_iters": iters,
        "lr_decay_iters": iters,
        "eval_interval": 100_000,  # one evaluation, at the start and the end: out of the window
        "eval_iters": 1,
        "gradient_accumulation_steps": 2,
        "nproc_per_node": ranks,
    }
    t0 = time.time()
    run_id = stack.submit(config, base={})["id"]
    done = stack.wait_status(run_id, FINAL, timeout=1800)
    assert done["status"] == "succeeded", done
    events = stack.events(run_id)
    steps = [e for e in events if e["type"] == "iter"]
    assert [e["iter"] for e in steps] == list(range(iters)), "one iter event per iteration"
    first = steps[0]["ts"] - t0
    return statistics.median(e["tokens_per_s"] for e in steps[WARMUP:]), len(events) / iters, first


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=6)
    a = ap.parse_args()
    results: dict[int, list[tuple[float, float, float]]] = {1: [], 2: []}
    scalings = []
    with tempfile.TemporaryDirectory(prefix="gptjobs-ddp-bench-") as d, Stack(Path(d)) as stack:
        stack.up(train=0)
        stack.start_worker("train", nproc=2)
        for r in range(a.rounds):
            for ranks in (1, 2) if r % 2 == 0 else (2, 1):
                tps, per_iter, first = one_run(stack, ranks, a.iters)
                results[ranks].append((tps, per_iter, first))
                print(
                    f"round {r + 1}, {ranks} rank(s): {tps:,.0f} tokens/s, {per_iter:.3f} events/iter, "
                    f"first step {first:.1f} s after submit",
                    flush=True,
                )
            scalings.append(results[2][-1][0] / results[1][-1][0])
            print(f"round {r + 1}: scaling {scalings[-1]:.2f}x", flush=True)
    one = statistics.median(t for t, _, _ in results[1])
    two = statistics.median(t for t, _, _ in results[2])
    scaling = statistics.median(scalings)
    print(f"\nmedian tokens/s: 1 rank {one:,.0f}, 2 ranks {two:,.0f}")
    each = ", ".join(f"{x:.2f}" for x in scalings)
    print(f"scaling, median of the rounds ({each}): {scaling:.2f}x (bar >= 1.6x)")
    e1 = {round(e, 3) for _, e, _ in results[1]}
    e2 = {round(e, 3) for _, e, _ in results[2]}
    print(f"events per iteration: 1 rank {sorted(e1)}, 2 ranks {sorted(e2)} (bar: the same)")
    return 0 if scaling >= 1.6 and e1 == e2 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Data-parallel throughput: one rank against two, through the service.

    python bench/ddp_throughput.py [--iters 150] [--rounds 6]

nanoGPT's README CPU config (4 layers, 4 heads, 128 wide, block 64, batch 12), one torch
thread per rank, through one training worker owning two CPU ranks (`gptjobs worker --queue
train --nproc 2`): the one-rank runs train in the worker's own process, the two-rank run in
ranks started by torch's elastic launcher (gloo). Three runs a round:

- one rank on the README's config as it is (one micro-step of 12 x 64 tokens an iteration);
- two ranks, each doing exactly that (gradient_accumulation_steps 2, global: one micro-step
  a rank), then averaging gradients: twice the tokens an iteration for the same work a rank;
- one rank with gradient_accumulation_steps 2: the two-rank run's iteration on one rank.

The scaling the bar reads is two ranks over the first (every rank doing the one rank's
work: what a second device adds, the usual measure of data-parallel scaling). Two ranks over
the third is printed too: the same iteration on one rank or two, where the one rank also
updates the weights once for two micro-steps' tokens.

This box's speed drifts by ~10% between runs a minute apart, so each round's ratios compare
neighbours, the order flipping every round (ABC, CBA), and the figures are the medians of the
rounds'. Tokens/s are the iter events' medians past the first 20 iterations. Events per
iteration are printed per kind (bar: the same: one stream, not one per rank).
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


# (ranks, gradient_accumulation_steps) of each kind of run
KINDS = {"1 rank": (1, 1), "2 ranks": (2, 2), "1 rank, 2 micro-steps": (1, 2)}
# what "2 ranks" is compared with, in words; the first is the bar's
BASES = {"1 rank": "one rank doing a rank's work", "1 rank, 2 micro-steps": "one rank doing both micro-steps"}


def one_run(stack: Stack, ranks: int, gas: int, iters: int) -> tuple[float, float, float]:
    """(median tokens/s, events per iteration, seconds from submit to the first iter event)."""
    config: dict[str, Any] = NANOGPT_CPU | {
        "max_iters": iters,
        "lr_decay_iters": iters,
        "eval_interval": 100_000,  # one evaluation, at the start and the end: out of the window
        "eval_iters": 1,
        "gradient_accumulation_steps": gas,
        "nproc_per_node": ranks,
    }
    t0 = time.time()
    run_id = stack.submit(config, base={})["id"]
    # Asked once a second: at the harness's usual 10 a second, this process and the API took
    # ~8% of a core, which a two-rank run on two cores pays for and a one-rank run does not.
    done = stack.wait_status(run_id, FINAL, timeout=1800, every=1.0)
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
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in KINDS}
    scaling: dict[str, list[float]] = {k: [] for k in BASES}
    with tempfile.TemporaryDirectory(prefix="gptjobs-ddp-bench-") as d, Stack(Path(d)) as stack:
        stack.up(train=0)
        stack.start_worker("train", nproc=2)
        for r in range(a.rounds):
            for kind in list(KINDS) if r % 2 == 0 else list(KINDS)[::-1]:
                tps, per_iter, first = one_run(stack, *KINDS[kind], a.iters)
                results[kind].append((tps, per_iter, first))
                print(
                    f"round {r + 1}, {kind}: {tps:,.0f} tokens/s, {per_iter:.3f} events/iter, "
                    f"first step {first:.1f} s after submit",
                    flush=True,
                )
            for base, xs in scaling.items():
                xs.append(results["2 ranks"][-1][0] / results[base][-1][0])
            print(f"round {r + 1}: scaling {' / '.join(f'{xs[-1]:.2f}x' for xs in scaling.values())}", flush=True)
    print(
        "\nmedian tokens/s: "
        + ", ".join(f"{k} {statistics.median(t for t, _, _ in v):,.0f}" for k, v in results.items())
    )
    for base, xs in scaling.items():
        each = ", ".join(f"{x:.2f}" for x in xs)
        print(
            f"scaling, two ranks over {BASES[base]}, median of the rounds ({each}): {statistics.median(xs):.2f}x"
            + (" (bar >= 1.6x)" if base == "1 rank" else "")
        )
    bar = statistics.median(scaling["1 rank"])
    per_iter = {k: sorted({round(e, 3) for _, e, _ in v}) for k, v in results.items()}
    print("events per iteration: " + ", ".join(f"{k} {v}" for k, v in per_iter.items()) + " (bar: the same)")
    same_events = len({tuple(v) for v in per_iter.values()}) == 1
    return 0 if bar >= 1.6 and same_events else 1


if __name__ == "__main__":
    sys.exit(main())

"""Sampling throughput with and without the KV cache.

    python bench/sample_throughput.py [--tokens 250]

The shakespeare_char "baby" shape (6 layers, 6 heads, 384 wide, block 256, 65 tokens),
randomly initialised (speed does not depend on the weights), on the CPU. Prints new
tokens per second for num_samples 1 and 8, each with and without the cache.
"""

from __future__ import annotations

import argparse
import time

import torch

from gpt.model import GPT, GPTConfig


def tokens_per_s(model: GPT, n: int, samples: int, cache: bool, repeats: int) -> float:
    best = 0.0
    for r in range(repeats):
        idx = torch.zeros((samples, 1), dtype=torch.long)  # nanoGPT's default start: "\n"
        gen = torch.Generator().manual_seed(r)
        t0 = time.perf_counter()
        for _ in model.generate_stream(idx, n, temperature=0.8, top_k=200, generator=gen, use_cache=cache):
            pass
        best = max(best, n * samples / (time.perf_counter() - t0))
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=250)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, vocab_size=65, n_layer=6, n_head=6, n_embd=384, dropout=0.0, bias=False))
    model.eval()
    tokens_per_s(model, 10, 1, True, 1)  # warm-up
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}, {a.tokens} new tokens, best of {a.repeats}")
    for samples in (1, 8):
        with_cache = tokens_per_s(model, a.tokens, samples, True, a.repeats)
        without = tokens_per_s(model, a.tokens, samples, False, a.repeats)
        print(
            f"num_samples {samples}: cache {with_cache:8.1f} tok/s   no cache {without:8.1f} tok/s   "
            f"speed-up {with_cache / without:.2f}x"
        )


if __name__ == "__main__":
    main()

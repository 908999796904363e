"""Training throughput: gptjobs' engine against a bare loop of the same model.

    python bench/train_throughput.py [--iters 300]

Runs the nanoGPT README's CPU config (4 layers, 4 heads, 128 wide, block 64, batch 12)
two ways in one process, interleaved in blocks so that both see the same machine load:
the engine (gpt.train.train, events and all) and a bare loop (batch, forward, backward,
clip, step; no events). Prints the median step time of each and their ratio. nanoGPT's
own train.py ran this config at 71-75 ms per iteration on the reference machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator

import torch

from gpt.config import TrainConfig, make_config
from gpt.data import Dataset, prepare
from gpt.model import GPT, GPTConfig
from gpt.train import lr_at, train

CONFIG = dict(
    dataset="shakespeare_char",
    device="cpu",
    compile=False,
    block_size=64,
    batch_size=12,
    n_layer=4,
    n_head=4,
    n_embd=128,
    dropout=0.0,
    max_iters=2000,
    lr_decay_iters=2000,
    eval_iters=1,
    log_interval=1,
    eval_interval=100_000,  # no evaluation inside the measured window
)


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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--block", type=int, default=50, help="iterations per turn when interleaving")
    p.add_argument("--warmup", type=int, default=20)
    a = p.parse_args()
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
    print("nanoGPT train.py     71-75 ms on the reference machine (NOTES.md)")


if __name__ == "__main__":
    main()

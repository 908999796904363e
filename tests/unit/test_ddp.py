"""The engine under DDP: two real processes on gloo (one torch thread each), started by torch's
elastic launcher as torchrun starts them, against one process that draws the same batches."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from gpt import checkpoint as ckpt
from gpt.config import TrainConfig, make_config
from gpt.data import prepare
from gpt.model import GPT, GPTConfig
from gpt.train import ARCH, lr_at
from tests.unit.conftest import TINY

WORLD = 2
# Four micro-steps an iteration, two per rank; evaluation every 4 iterations over 3 batches a
# split (2 on rank 0, 1 on rank 1); a checkpoint at every evaluation.
CONFIG: dict[str, Any] = TINY | {
    "nproc_per_node": WORLD,
    "gradient_accumulation_steps": 4,
    "max_iters": 12,
    "lr_decay_iters": 12,
    "eval_interval": 4,
    "eval_iters": 3,
    "always_save_checkpoint": True,
}


def _rank(config: dict[str, Any], data_dir: str, stop_after: int | None) -> list[dict[str, Any]]:
    """One rank (in its own process): the events it yields; stopped after stop_after iters."""
    from gpt.train import train

    events: list[dict[str, Any]] = []

    def stop() -> bool:
        return stop_after is not None and sum(e["type"] == "iter" for e in events) >= stop_after

    for ev in train(make_config(config), data_dir=data_dir, should_stop=stop, num_threads=1):
        events.append(ev)
    return events


def launch(
    tmp: Path, config: dict[str, Any], data_dir: Path, stop_after: int | None = None, nproc: int = WORLD
) -> list[list[Any]]:
    """Every rank's events, in rank order."""
    spec = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=str(tmp / "logs")),
    )
    out = elastic_launch(spec, _rank)(config, str(data_dir), stop_after)
    return [out[r] for r in range(nproc)]


def iter_losses(events: list[dict[str, Any]]) -> list[float]:
    return [e["loss"] for e in events if e["type"] == "iter"]


def one_process_drawing_every_ranks_batches(cfg: TrainConfig, data_dir: Path) -> list[float]:
    """The same arithmetic in one process: each rank's batches drawn from its own stream in
    the engine's order (seed + rank; init, the first batch, an evaluation's share when due,
    then one batch per micro-step), all of an iteration's micro-batches summed into one
    gradient, on rank 0's initial weights."""
    data = prepare(cfg.dataset, cfg.resolved_tokenizer(), data_dir)
    args = {**{k: getattr(cfg, k) for k in ARCH}, "vocab_size": data.vocab_size, "dropout": cfg.dropout}
    share, cpu = cfg.gradient_accumulation_steps // WORLD, torch.device("cpu")

    def draw(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        return data.batch(split, cfg.batch_size, cfg.block_size, cpu)

    streams = []
    for rank in range(WORLD):
        torch.manual_seed(cfg.seed + rank)
        GPT(GPTConfig(**args))  # its init draws
        seq = [draw()]
        for it in range(cfg.max_iters):
            if it % cfg.eval_interval == 0:
                for split in ("train", "val"):
                    for i in range(-(-cfg.eval_iters // WORLD)):
                        if i * WORLD + rank < cfg.eval_iters:
                            draw(split)
            seq += [draw() for _ in range(share)]
        streams.append(seq)

    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(**args))
    opt = model.configure_optimizer(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), "cpu")
    losses = []
    for it in range(cfg.max_iters):
        for group in opt.param_groups:
            group["lr"] = lr_at(it, cfg)
        total = torch.zeros(())
        for j in range(share):
            for seq in streams:
                x, y = seq[it * share + j]
                _, loss = model(x, y)
                loss = loss / cfg.gradient_accumulation_steps
                loss.backward()
                total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total.item())
    return losses


def test_two_ranks_train_as_one_process_drawing_their_batches_and_resume_exactly(
    tmp_path: Path, data_dir: Path
) -> None:
    straight = launch(tmp_path, CONFIG | {"out_dir": str(tmp_path / "a")}, data_dir)
    events = straight[0]
    assert straight[1] == [], "only rank 0 yields"
    first = events[0]
    assert first["world_size"] == WORLD and first["tokens_per_iter"] == 4 * 4 * 32  # every rank's micro-steps
    assert [e["iter"] for e in events if e["type"] == "iter"] == list(range(12))  # one stream, not one per rank
    assert events[-1]["status"] == "succeeded", events[-1]

    want = one_process_drawing_every_ranks_batches(make_config(CONFIG), data_dir)
    got = iter_losses(events)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-5, (got, want)

    # Stopped once 6 iter events are out (asked at the end of step 6, so 7 iterations ran),
    # then resumed with the same world size: the same losses, because each rank gets back
    # its own RNG and next batch.
    out = tmp_path / "b"
    stopped = launch(tmp_path, CONFIG | {"out_dir": str(out)}, data_dir, stop_after=6)[0]
    assert stopped[-1]["status"] == "cancelled" and stopped[-2]["iter"] == 7, stopped[-2:]
    saved = ckpt.load(out / ckpt.LATEST)
    assert len(saved["resume"]["ranks"]) == WORLD
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in saved["model"])  # nanoGPT loads it
    rest = launch(tmp_path, CONFIG | {"out_dir": str(out), "init_from": "resume"}, data_dir)[0]
    assert rest[0]["from_iter"] == 7
    assert iter_losses(stopped) + iter_losses(rest) == got
    evals = [e["val_loss"] for e in rest if e["type"] == "eval"]
    assert evals == [e["val_loss"] for e in events if e["type"] == "eval"][2:]  # iters 8 and 12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on CI)")
def test_cuda_under_the_launcher_with_nccl_bf16_and_compile(tmp_path: Path, data_dir: Path) -> None:
    config = TINY | {"device": "cuda", "dtype": "bfloat16", "compile": True, "backend": "nccl", "max_iters": 20}
    (events,) = launch(tmp_path, config | {"out_dir": str(tmp_path / "gpu")}, data_dir, nproc=1)
    assert events[-1]["status"] == "succeeded", events[-1]
    first = events[0]
    assert first["world_size"] == 1 and first["device"] not in ("cpu", "cuda"), first  # the GPU's model name
    assert first["dtype"] == "bfloat16" and first["compile"], first
    saved = ckpt.load(tmp_path / "gpu" / ckpt.LATEST)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in saved["model"])  # nanoGPT loads it

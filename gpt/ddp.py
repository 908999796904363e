"""One run over several processes: the few torch.distributed calls the training loop makes.

Knows the launcher's environment (RANK, LOCAL_RANK, WORLD_SIZE, as torchrun and
torch.distributed.launcher set them) and the collectives the loop needs; knows nothing of
models, data or events. A process started without that environment is a group of one
(`SOLO`): every method then hands back what it was given, so the one-process loop does
exactly what it did before there were groups.

nanoGPT's semantics: the launcher decides the world; rank 0 is the one that speaks (events,
checkpoints); gradients are averaged by DistributedDataParallel on the last micro-step only.
Every rank must make the same calls in the same order, so anything that decides the loop's
path (a stop, a NaN, an improved val loss) is either computed from all-reduced numbers or
sent from rank 0 (`decide` between evaluation batches, `reduce_step` in a step).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gpt.config import ConfigError, TrainConfig

CPU_BUCKET_MB = 25  # DDP's default cap, for the first bucket as well (see Group.wrap)


@dataclass(frozen=True)
class Group:
    rank: int = 0
    local_rank: int = 0  # on this machine: the index of its device
    world_size: int = 1
    distributed: bool = False  # started by a launcher: the collectives are real
    device: str = "cpu"  # where the collectives' tensors live (NCCL's are on the GPU)
    owned: bool = False  # this process made the process group, and destroys it at the end

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def join(cls, cfg: TrainConfig, device: str) -> Group:
        """The group this process was launched into (`SOLO` without a launcher), its process
        group initialised with cfg's backend (nccl on CUDA, gloo elsewhere, when cfg leaves
        it out). `device` is what the run resolved: "cuda" becomes this rank's own GPU."""
        if "RANK" not in os.environ:
            return SOLO
        rank, local, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        if world != cfg.world_size():
            raise ConfigError(
                {
                    "nproc_per_node": f"launched as {world} processes, but nproc_per_node x nnodes is "
                    f"{cfg.nproc_per_node} x {cfg.nnodes} = {cfg.world_size()}"
                }
            )
        cuda = device.startswith("cuda")
        backend = cfg.backend or ("nccl" if cuda else "gloo")
        if cuda:
            device = f"cuda:{local}"
            torch.cuda.set_device(device)
        owned = not dist.is_initialized()
        if owned:
            dist.init_process_group(backend=backend)
        return cls(rank, local, world, True, device if cuda else "cpu", owned)

    def leave(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()

    def own_device(self, device: str) -> str:
        """A launched rank trains on its own GPU, cuda:LOCAL_RANK, whichever CUDA device the
        config names (nanoGPT's way: `--device=cuda:0` under torchrun means each rank's own)."""
        return self.device if self.distributed and device.startswith("cuda") else device

    def wrap(self, model: torch.nn.Module) -> DistributedDataParallel | None:
        """The module that averages gradients across ranks (None in a group of one).
        Construction broadcasts rank 0's weights, so every rank starts from the same ones."""
        if not self.distributed:
            return None
        if self.device.startswith("cuda"):
            return DistributedDataParallel(model, device_ids=[self.local_rank])
        # On CPU the gloo threads that reduce a bucket share the cores of the backward still
        # running: DDP's default small first bucket, sent early to overlap, then costs more than
        # it hides (two ranks of one thread on two cores, a 3 MB model in one bucket: ~2 ms off
        # a 56 ms step, 7 pairs of 8). Naming the cap gives every bucket that size, the first too.
        return DistributedDataParallel(model, bucket_cap_mb=CPU_BUCKET_MB)

    def decide(self, ask: Callable[[], bool]) -> Callable[[], bool]:
        """`ask`, asked on rank 0 only, its answer broadcast: every rank stops at the same
        point, so none is left waiting in a collective the others never reach."""
        if not self.distributed:
            return ask

        def decided() -> bool:
            flag = torch.tensor([1.0 if self.main and ask() else 0.0], device=self.device)
            dist.broadcast(flag, src=0)
            return bool(flag.item())

        return decided

    def reduce_step(self, loss_sum: torch.Tensor, stop: bool) -> Callable[[], tuple[float, bool]]:
        """A step's one collective, started now; the call it returns waits for it and gives
        (loss_sum averaged over the ranks, stop as rank 0 said it). One all-reduce of both
        rather than a broadcast of its own: each collective is a point where every rank waits
        for the slowest, and started before the optimizer's update it overlaps that."""
        if not self.distributed:
            return lambda: (loss_sum.item(), stop)
        flag = torch.tensor(1.0 if self.main and stop else 0.0, device=loss_sum.device)
        t = torch.stack([loss_sum.float(), flag])
        work = dist.all_reduce(t, async_op=True)

        def done() -> tuple[float, bool]:
            work.wait()
            total, stops = t.tolist()
            return total / self.world_size, stops > 0

        return done

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over the ranks (in place)."""
        if self.distributed:
            dist.all_reduce(t)
        return t

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's obj, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


SOLO = Group()

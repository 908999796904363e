"""The training loop, as an iterator of events.

`train(cfg)` yields plain dicts (status, iter, eval, checkpoint, warning and sample events,
in the shape the worker ships and the command line prints) and does no I/O beyond its
dataset cache and checkpoint files: it never prints, never logs, never touches a network.
Whoever iterates decides what an event becomes (a terminal line, a Redis stream entry, a
database row).

`train` tells the story the way nanoGPT's train.py does: set up (device, data, model and
optimizer, a resumed state), then loop: evaluate and checkpoint when due, stop if asked,
the learning rate, the micro-steps, the log line. Its warnings' rules and words are in
gpt.readings.

Timing is honest: `step_ms` covers one optimisation step (data, forward, backward,
update) and ends after the device has finished it; evaluation and checkpointing are timed
on their own (`eval_ms`, `ckpt_ms`) and never leak into a step.

Started by a launcher (torchrun, torch.distributed.launcher), every rank runs this same
loop as nanoGPT's does under DDP (gpt.ddp): seed + rank, its share of the micro-steps and
of the evaluation batches, gradients averaged on the last micro-step; rank 0 alone yields
events and writes checkpoints, and its stop decision is every rank's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import torch

from gpt import checkpoint as ckpt
from gpt import ddp, hf, readings
from gpt.config import ARCH, GPT2_VOCAB_SIZE, PRETRAINED, TrainConfig
from gpt.data import prepare
from gpt.flops import flops_per_token, peak_flops
from gpt.model import GPT, GPTConfig
from gpt.store import Store
from gpt.tokenizers import decode

Event = dict[str, Any]
MFU_WARMUP = 5  # iterations left out of the smoothed MFU (allocator and kernel warm-up)
LOW_MFU_AT = 100  # iteration, counted from this process's first, at which a low MFU is worth a warning


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Linear warmup to learning_rate, cosine decay to min_lr at lr_decay_iters, then flat."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def resolve_device(cfg: TrainConfig) -> tuple[str, str, bool]:
    """The concrete device, dtype and compile flag for cfg's 'auto' values on this machine."""
    device = cfg.device
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    dtype = cfg.dtype
    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"
    compile_ = cfg.compile if cfg.compile is not None else device.startswith("cuda")
    return device, dtype, compile_


def train(
    cfg: TrainConfig,
    *,
    should_stop: Callable[[], bool] | None = None,
    data_dir: str | Path | None = None,
    num_threads: int | None = None,
    before_save: Callable[[], None] | None = None,
    out: Store | None = None,
) -> Iterator[Event]:
    """Train per cfg, yielding events; the last one is a final `status` event.

    should_stop is called once per iteration; when it returns True the run writes a
    checkpoint and ends `cancelled`. data_dir holds prepared datasets. num_threads sizes
    torch's CPU thread pool to the cores this job really has. before_save runs before a
    written checkpoint replaces the previous one; an exception from it (or from
    should_stop) leaves the files as they were and ends the iterator with that exception.
    out is the store out_dir names, where the caller has one made already (its options).

    Under a launcher, should_stop and before_save are called on rank 0 only, and only rank
    0 yields: the iterator of every other rank trains to the end and yields nothing.
    """
    if num_threads:
        torch.set_num_threads(num_threads)
    group = ddp.Group.join(cfg, resolve_device(cfg)[0])
    try:
        events = _loop(cfg, group, should_stop or (lambda: False), data_dir, before_save, out)
        if group.main:
            yield from events
        else:
            for _ in events:
                pass
    finally:
        group.leave()


def _loop(
    cfg: TrainConfig,
    group: ddp.Group,
    should_stop: Callable[[], bool],
    data_dir: str | Path | None,
    before_save: Callable[[], None] | None,
    out: Store | None,
) -> Iterator[Event]:
    run = _Run(cfg, data_dir, before_save, group, out)
    yield run.started()
    # Every rank must stop at the same point. Between evaluation batches (rare) rank 0's
    # answer is broadcast; in a step it rides on the step's all-reduce of the loss.
    decided = group.decide(should_stop)
    stopping = decided()
    try:
        while True:
            ended = yield from run.eval_and_checkpoint(decided)
            if ended:
                return
            if stopping:
                yield from run.cancelled()
                return
            lr = lr_at(run.iter_num, run.cfg)
            loss, step_ms, stopping = run.step(lr, should_stop)
            if not math.isfinite(loss):
                yield from run.diverged(loss, lr)
                return
            yield from run.log(loss, lr, step_ms)
            run.iter_num += 1
    except torch.OutOfMemoryError:
        if not group.main:
            raise  # its traceback names this rank; the worker reports the rank that died
        yield run.out_of_memory()


class _Run:
    """A run's device, data, model and optimizer, and where its loop is."""

    def __init__(
        self,
        cfg: TrainConfig,
        data_dir: str | Path | None,
        before_save: Callable[[], None] | None,
        group: ddp.Group = ddp.SOLO,
        out: Store | None = None,
    ):
        self.group = group
        dev, self.dtype, self.compile = resolve_device(cfg)
        dev = group.own_device(dev)
        self.device = torch.device(dev)
        # As events name it: the GPU's model ("NVIDIA H100 80GB HBM3"), else cpu or mps.
        self.device_name = torch.cuda.get_device_name(self.device) if dev.startswith("cuda") else self.device.type
        # One RNG for init, batches and dropout, drawn in nanoGPT's order (init, first batch,
        # eval, then per micro-step: forward, next batch, backward), so that the same command
        # and seed give nanoGPT's own batches and very nearly its numbers. Each rank its own
        # stream (seed + rank), as in nanoGPT; DDP then gives them all rank 0's weights.
        torch.manual_seed(cfg.seed + group.rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        self.data = prepare(cfg.dataset, cfg.resolved_tokenizer(), data_dir)
        # out_dir: a directory, as in nanoGPT, or a run's folder of an object store (a URL).
        self.out, self.before_save = out or ckpt.at(cfg.out_dir), before_save
        if group.main:
            ckpt.remove_partial(self.out)  # a save killed midway; ckpt.pt is still the one before
        saved = None
        if cfg.init_from == "resume" and self.out.exists(ckpt.LATEST):
            saved = ckpt.load_from(self.out, ckpt.LATEST, self.device)
        start = None if saved is not None else _weights(cfg.init_from, self.data.tokenizer.meta())

        # The model and its optimizer. Weights (a resumed run's, a pretrained or a parent's)
        # fix the architecture, as in nanoGPT, whatever cfg says; dropout may change, and
        # starting weights may be cut to a shorter block_size.
        if saved is not None:
            self.model_args, self.gelu = dict(saved["model_args"], dropout=cfg.dropout), saved.get(ckpt.GELU, "exact")
        elif start is not None:
            self.model_args, self.gelu = dict(start.model_args, dropout=cfg.dropout), start.gelu
        else:
            vocab = GPT2_VOCAB_SIZE if self.data.tokenizer.name == "gpt2" else self.data.vocab_size
            self.model_args = {**{k: getattr(cfg, k) for k in ARCH}, "vocab_size": vocab, "dropout": cfg.dropout}
            self.gelu = "exact"
        self.model = GPT(GPTConfig(**self.model_args, gelu=self.gelu))
        if start is not None:
            self.model.load_state_dict(start.state)
            if cfg.block_size < self.model_args["block_size"]:
                self.model.crop_block_size(cfg.block_size)
                self.model_args["block_size"] = cfg.block_size
        self.model.to(self.device)
        self.cfg = cfg = dataclasses.replace(cfg, **{k: self.model_args[k] for k in ARCH})
        self.start = start
        self.optimizer = self.model.configure_optimizer(
            cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), self.device.type
        )
        # Loss scaling only for float16: bfloat16 has float32's range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == "float16")
        self.step_model: torch.nn.Module = self.model
        if self.compile:
            self.step_model = torch.compile(self.model)  # type: ignore[assignment]
        self.ddp = group.wrap(self.step_model)  # the training step's module under a launcher
        self.ctx = _autocast(self.device, self.dtype)

        # Where the loop is; a checkpoint holds all of it.
        self.iter_num, self.best_val_loss = 0, float("inf")
        self.evaluated_at: int | None = None  # the iteration of the last evaluation
        self.evals: list[tuple[int, float, float]] = []  # (iter, train_loss, val_loss)
        self.resumed_from: int | None = None
        self.exact = True  # a resume repeats the uninterrupted run (False: from a checkpoint without our state)
        if saved is None:
            self.batch = self.draw("train")  # drawn one step ahead; the first before the first eval, as in nanoGPT
        else:
            self._restore(saved)

        mc = self.model.config
        flops_per_iter = (
            flops_per_token(self.model.num_params(), mc.n_layer, mc.n_head, mc.n_embd // mc.n_head, mc.block_size)
            * cfg.tokens_per_iter()
        )
        # The group's peak: every rank's device does its share of each iteration's FLOPs.
        one = cfg.peak_flops or peak_flops(self.device_name, self.dtype)
        self.peak = one * group.world_size if one else None
        setup = {"device": self.device_name, "compiled": self.compile, "dtype": self.dtype}
        setup |= {"batch_size": cfg.batch_size, "block_size": cfg.block_size, "n_embd": cfg.n_embd}
        self.watch = _Watch(flops_per_iter, self.peak, self.iter_num, setup)

    # --- the pieces of the loop, in its order ------------------------------------------
    def eval_and_checkpoint(self, should_stop: Callable[[], bool]) -> Generator[Event, None, bool]:
        """nanoGPT's block at the top of each iteration: evaluate every eval_interval and at
        the end, then save when val loss improved (or always_save_checkpoint, or at the end).
        Returns True when the run has ended here (the end, eval_only, or a cancel midway)."""
        cfg = self.cfg
        final = self.iter_num >= cfg.max_iters
        due = self.iter_num % cfg.eval_interval == 0 or final or cfg.eval_only
        if due and self.evaluated_at != self.iter_num:  # after a resume, it may have happened already
            ev = self._evaluate(should_stop)
            if ev is None:
                yield from self.cancelled()
                return True
            self.evaluated_at = self.iter_num
            yield ev
            self.evals.append((ev["iter"], ev["train_loss"], ev["val_loss"]))
            if message := self.watch.overfitting(self.evals, self.best_val_loss):
                yield self._warning("overfitting", message)
            if cfg.sample_prompts and self.group.main:
                yield from self._samples()
            if self.iter_num > 0 and not cfg.eval_only:
                improved = ev["val_loss"] < self.best_val_loss
                if improved:
                    self.best_val_loss = ev["val_loss"]
                if improved or cfg.always_save_checkpoint or final:
                    yield self._checkpoint(ev["val_loss"], best=improved)
            if cfg.eval_only:
                yield self._status("succeeded", f"evaluated at iter {self.iter_num} (eval_only)")
                return True
        if final:
            yield self._status(
                "succeeded", f"trained {cfg.max_iters} iterations; best val loss {self.best_val_loss:.4f}"
            )
        return final

    def step(self, lr: float, should_stop: Callable[[], bool] = lambda: False) -> tuple[float, float, bool]:
        """One optimisation step; returns (mean loss over micro-steps, wall ms, whether to stop
        now: should_stop, asked once on rank 0, its answer every rank's)."""
        cfg, opt = self.cfg, self.optimizer
        model = self.step_model if self.ddp is None else self.ddp
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr
        gas = cfg.gradient_accumulation_steps // self.group.world_size  # this rank's share
        total = None
        x, y = self.batch
        for micro in range(gas):
            if self.ddp is not None:  # average the gradients once, on the last micro-step (nanoGPT's way)
                self.ddp.require_backward_grad_sync = micro == gas - 1
            with self.ctx:
                _, loss = model(x, y)
                loss = loss / gas  # the gradient of the mean over micro-steps
            # The next batch is drawn while the device still computes this one.
            x, y = self.draw("train")
            self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        self.batch = (x, y)
        # Over every rank's micro-batches: the loss one process drawing them all would see.
        # Started now, it travels while the optimizer updates.
        reduced = self.group.reduce_step(total, self.group.main and should_stop())  # type: ignore[arg-type]
        if cfg.grad_clip:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(opt)
        self.scaler.update()
        opt.zero_grad(set_to_none=True)
        lossf, stop = reduced()  # the one host sync of the step
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return lossf, (time.perf_counter() - t0) * 1e3, stop

    def log(self, loss: float, lr: float, step_ms: float) -> Iterator[Event]:
        """The iter event every log_interval, and the low-MFU warning when it is due."""
        cfg = self.cfg
        mfu = self.watch.step(self.iter_num, step_ms)
        if self.iter_num % cfg.log_interval == 0:
            tokens_per_s = cfg.tokens_per_iter() / (step_ms / 1e3)
            yield _event(
                "iter",
                iter=self.iter_num,
                loss=loss,
                lr=lr,
                step_ms=step_ms,
                tokens_per_s=tokens_per_s,
                mfu=mfu,
                mfu_avg=self.watch.mfu_avg,
            )
        if message := self.watch.low_mfu(self.iter_num):
            yield self._warning("low_mfu", message)

    def draw(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.batch(split, self.cfg.batch_size, self.cfg.block_size, self.device)

    # --- how a run ends, other than by finishing ---------------------------------------
    def cancelled(self) -> Iterator[Event]:
        yield self._checkpoint(None, best=False)
        yield self._status("cancelled", f"cancelled at iter {self.iter_num}; checkpoint saved")

    def diverged(self, loss: float, lr: float) -> Iterator[Event]:
        warning, reason = readings.diverged(loss, self.iter_num, lr, self.cfg)
        yield self._warning("nan_loss", warning)
        yield self._status("failed", reason)

    def out_of_memory(self) -> Event:
        return self._status("failed", readings.out_of_memory(self.iter_num, self.device_name, self.cfg))

    # --- evaluation, checkpoints, samples -----------------------------------------------
    @torch.no_grad()
    def _evaluate(self, should_stop: Callable[[], bool]) -> Event | None:
        """Mean train and val loss over eval_iters batches each; None when stopped midway.

        A long evaluation must not hold up a cancel, so should_stop is asked between
        batches. Stopping puts the RNG back as it was before the evaluation: the checkpoint
        then resumes into this same evaluation, batch for batch.

        The ranks share the batches (rank r takes rounds i where i * world + r < eval_iters)
        and sum their losses; each asks should_stop in every round, its share done or not.
        """
        cfg, rank, world = self.cfg, self.group.rank, self.group.world_size
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        rng = torch.get_rng_state()
        self.model.eval()
        out: dict[str, float] = {}
        for split in ("train", "val"):
            total = torch.zeros((), device=self.device)
            for i in range(-(-cfg.eval_iters // world)):
                if should_stop():
                    torch.set_rng_state(rng)  # batches come from the CPU generator only
                    self.model.train()
                    return None
                if i * world + rank >= cfg.eval_iters:
                    continue
                x, y = self.draw(split)
                with self.ctx:
                    _, loss = self.step_model(x, y)
                total += loss.float()
            out[split] = (self.group.sum(total) / cfg.eval_iters).item()
        self.model.train()
        eval_ms = (time.perf_counter() - t0) * 1e3
        return _event("eval", iter=self.iter_num, train_loss=out["train"], val_loss=out["val"], eval_ms=eval_ms)

    def _checkpoint(self, val_loss: float | None, *, best: bool) -> Event:
        """Rank 0 writes it, holding every rank's RNG and next batch (each resumes as it was);
        the other ranks only hand theirs over."""
        t0 = time.perf_counter()
        mine = {
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else [],
            "batch": [t.cpu() for t in self.batch],
        }
        ranks = self.group.gather(mine)
        if not self.group.main:
            return _event("checkpoint", iter=self.iter_num)  # rank 0's says it all; this one goes nowhere
        state: dict[str, Any] = {
            "model": ckpt.model_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "model_args": self.model_args,
            "iter_num": self.iter_num,
            "best_val_loss": self.best_val_loss,
            "val_loss": val_loss,
            "config": self.cfg.to_dict(),
            "tokenizer": self.data.tokenizer.meta(),
            "resume": {
                **mine,  # rank 0's; "ranks" has them all
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "evaluated": self.evaluated_at == self.iter_num,
                "evals": [list(e) for e in self.evals],
                **({"ranks": ranks} if self.group.world_size > 1 else {}),
            },
        }
        if self.gelu != "exact":
            state[ckpt.GELU] = self.gelu
        nbytes = ckpt.save(self.out, state, self.before_save)
        if not self.out.exists(ckpt.MODEL):
            ckpt.write_model_json(self.out, self.model_args, self.data.tokenizer.meta(), self.gelu)
        if best:
            ckpt.mark_best(self.out)
        ckpt_ms = (time.perf_counter() - t0) * 1e3
        path = self.out.where(ckpt.LATEST)
        return _event(
            "checkpoint", iter=self.iter_num, val_loss=val_loss, best=best, ckpt_ms=ckpt_ms, bytes=nbytes, path=path
        )

    def _restore(self, saved: dict[str, Any]) -> None:
        """Pick up where _checkpoint left off: the same weights, moments, RNG, next batch. A
        checkpoint without that state (nanoGPT's own) continues too, from its weights and
        moments, with the RNG reseeded: not the batches an uninterrupted run would draw."""
        self.model.load_state_dict(saved["model"])
        if saved.get("optimizer"):
            self.optimizer.load_state_dict(saved["optimizer"])
        self.iter_num, self.best_val_loss = saved["iter_num"], saved["best_val_loss"]
        self.resumed_from = self.iter_num
        state = saved.get("resume")
        if state is None:
            self.exact = False
            torch.manual_seed(self.cfg.seed + self.group.rank + self.iter_num)
            self.batch = self.draw("train")
            return
        ranks = state.get("ranks") or [state]  # each rank's RNG and next batch
        if len(ranks) == self.group.world_size:
            mine = ranks[self.group.rank]
            torch.set_rng_state(mine["torch_rng"].cpu())
            if mine.get("cuda_rng") and self.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda_rng"][0].cpu(), self.device)
            self.batch = (mine["batch"][0].to(self.device), mine["batch"][1].to(self.device))
        else:  # another world size: the weights and moments carry over, the batches start afresh
            torch.manual_seed(self.cfg.seed + self.group.rank + self.iter_num)
            self.batch = self.draw("train")
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.evaluated_at = self.iter_num if state["evaluated"] else None
        self.evals = [(int(i), t, v) for i, t, v in state.get("evals", [])]

    def _samples(self) -> Iterator[Event]:
        self.model.eval()
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed + self.iter_num)
        for prompt in self.cfg.sample_prompts:
            try:
                ids = self.data.tokenizer.encode(prompt) or [0]
            except ValueError:
                continue  # characters outside a char vocabulary: nothing to condition on
            x = torch.tensor([ids], dtype=torch.long, device=self.device)
            with self.ctx:
                y = self.model.generate(x, self.cfg.sample_tokens, temperature=0.8, top_k=200, generator=gen)
            text = decode(self.data.tokenizer, y[0, len(ids) :].tolist())
            yield _event("sample", iter=self.iter_num, prompt=prompt, text=text)
        self.model.train()

    # --- events -------------------------------------------------------------------------
    def started(self) -> Event:
        where = f"{self.device_name} ({self.dtype}{', compiled' if self.compile else ''})"
        if self.group.world_size > 1:
            where = f"{self.group.world_size} x {where}"
        reason = f"training {self.model.num_params(False) / 1e6:.2f}M parameters on {where}"
        if self.resumed_from is not None and not self.exact:
            reason = (
                f"resumed from the checkpoint at iter {self.resumed_from}, which has no exact-resume state "
                "(nanoGPT's own, or an import): not exact, the RNG is reseeded and the batches differ from an "
                "uninterrupted run's; " + reason
            )
        elif self.resumed_from is not None:
            reason = f"resumed from the checkpoint at iter {self.resumed_from}; " + reason
        elif self.start is not None:
            reason = f"starting from the weights of {_named(self.cfg.init_from)}; " + reason
        elif self.cfg.init_from == "resume":
            reason = f"no checkpoint in {self.cfg.out_dir} to resume from: starting from scratch; " + reason
        ev = self._status("running", reason)
        ev.update(
            device=self.device_name,
            dtype=self.dtype,
            compile=self.compile,
            n_params=self.model.num_params(False),
            tokens_per_iter=self.cfg.tokens_per_iter(),
            peak_flops=self.peak,
            world_size=self.group.world_size,
        )
        if self.resumed_from is not None:
            ev["from_iter"] = self.resumed_from
        return ev

    def _status(self, status: str, reason: str) -> Event:
        return _event("status", status=status, reason=reason, iter=self.iter_num)

    def _warning(self, code: str, message: str) -> Event:
        return _event("warning", code=code, iter=self.iter_num, message=message)


class _Watch:
    """The smoothed MFU, and when a warning is due: each is said once, not at every eval or
    step. Not checkpointed: a resumed run warms up and may warn again."""

    def __init__(self, flops_per_iter: float, peak: float | None, first_iter: int, setup: dict[str, Any]):
        self.flops_per_iter, self.peak, self.first_iter = flops_per_iter, peak, first_iter
        self.setup = setup  # what readings.low_mfu names as likely reasons
        self.mfu_avg: float | None = None
        self.said_overfitting = False

    def step(self, iter_num: int, step_ms: float) -> float | None:
        """This step's MFU (None where the device's peak is unknown), folded into mfu_avg."""
        if not self.peak:
            return None
        mfu = self.flops_per_iter / (step_ms / 1e3) / self.peak
        if iter_num - self.first_iter >= MFU_WARMUP:
            self.mfu_avg = mfu if self.mfu_avg is None else 0.9 * self.mfu_avg + 0.1 * mfu
        return mfu

    def low_mfu(self, iter_num: int) -> str | None:
        """The low-MFU reading, once, LOW_MFU_AT iterations in."""
        if iter_num - self.first_iter != LOW_MFU_AT or self.mfu_avg is None:
            return None
        return readings.low_mfu(self.mfu_avg, **self.setup)

    def overfitting(self, evals: list[tuple[int, float, float]], best_val_loss: float) -> str | None:
        """The overfitting reading, once until val loss sets a new best."""
        message = None if self.said_overfitting else readings.overfitting(evals)
        new_best = evals[-1][2] < best_val_loss
        self.said_overfitting = (self.said_overfitting or message is not None) and not new_best
        return message


def _named(init_from: str) -> str:
    return init_from if init_from in PRETRAINED else Path(init_from).name


def _weights(init_from: str, tokenizer: dict[str, Any]) -> hf.Weights | None:
    """The weights a run starts from: a pretrained GPT-2, or a checkpoint file (a parent
    run's, put there by the worker, or a path on the command line); None from scratch.
    Their tokenizer must be the dataset's: the same ids must mean the same text."""
    if init_from in PRETRAINED:
        start = hf.pretrained(init_from)
    elif init_from not in ("scratch", "resume"):
        saved = ckpt.load(Path(init_from))
        args = {k: v for k, v in saved["model_args"].items() if k != "dropout"}
        start = hf.Weights(
            args, saved["model"], saved.get(ckpt.GELU, "exact"), saved.get("tokenizer") or {"kind": "gpt2"}
        )
    else:
        return None
    theirs, ours = start.tokenizer, tokenizer
    if theirs.get("kind") != ours.get("kind") or theirs.get("chars") != ours.get("chars"):
        what = "a different character vocabulary" if theirs.get("kind") == ours.get("kind") else theirs.get("kind")
        raise hf.WeightsError(
            f"the weights of {_named(init_from)} were trained with {what}, the dataset is tokenized with "
            f"{ours.get('kind')}: the same ids would mean other text"
        )
    return start


def _event(type_: str, **fields: Any) -> Event:
    return {"type": type_, "ts": time.time(), **fields}


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=getattr(torch, dtype))
    if dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

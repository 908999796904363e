"""The training loop, as an iterator of events.

`train(cfg)` yields plain dicts (the event types of DESIGN.md: status, iter, eval,
checkpoint, warning, sample) and does no I/O beyond its dataset cache and checkpoint
files: it never prints, never logs, never touches a network. Whoever iterates decides
what an event becomes (a terminal line, a Redis stream entry, a database row).

Timing is honest: `step_ms` covers one optimisation step (data, forward, backward,
update) and ends after the device has finished it; evaluation and checkpointing are timed
on their own (`eval_ms`, `ckpt_ms`) and never leak into a step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from gpt import checkpoint as ckpt
from gpt import readings
from gpt.config import GPT2_VOCAB_SIZE, TrainConfig
from gpt.data import Dataset, prepare
from gpt.flops import flops_per_token, peak_flops
from gpt.model import GPT, GPTConfig
from gpt.tokenizers import decode

Event = dict[str, Any]
MFU_WARMUP = 5  # iterations left out of the smoothed MFU (allocator and kernel warm-up)
LOW_MFU_AT = 100  # iteration at which a low MFU is worth a warning


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


def device_name(device: torch.device) -> str | None:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def train(
    cfg: TrainConfig,
    *,
    should_stop: Callable[[], bool] | None = None,
    data_dir: str | Path | None = None,
    num_threads: int | None = None,
    before_save: Callable[[], None] | None = None,
) -> Iterator[Event]:
    """Train per cfg, yielding events; the last one is a final `status` event.

    should_stop is called once per iteration; when it returns True the run writes a
    checkpoint and ends `cancelled`. data_dir holds prepared datasets. num_threads sizes
    torch's CPU thread pool to the cores this job really has. before_save runs before a
    written checkpoint replaces the previous one; an exception from it (or from
    should_stop) leaves the files as they were and ends the iterator with that exception.
    """
    if num_threads:
        torch.set_num_threads(num_threads)
    run = _Run(cfg, data_dir)
    run.before_save = before_save
    yield from run.events(should_stop or (lambda: False))


class _Run:
    def __init__(self, cfg: TrainConfig, data_dir: str | Path | None):
        self.cfg = cfg
        self.before_save: Callable[[], None] | None = None
        self.out_dir = Path(cfg.out_dir)
        dev, self.dtype, self.compile = resolve_device(cfg)
        self.device = torch.device(dev)
        # One RNG for init, batches and dropout, drawn in nanoGPT's order (init, first batch,
        # eval, then per micro-step: forward, next batch, backward), so that the same command
        # and seed give nanoGPT's own batches and very nearly its numbers.
        torch.manual_seed(cfg.seed)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        self.data: Dataset = prepare(cfg.dataset, cfg.resolved_tokenizer(), data_dir)

        resume = None
        ckpt.remove_partial(self.out_dir)  # a save killed midway; ckpt.pt is still the one before
        if cfg.init_from == "resume" and (self.out_dir / ckpt.LATEST).exists():
            resume = ckpt.load(self.out_dir / ckpt.LATEST, self.device)
        if resume is not None:
            # The architecture comes from the checkpoint, as in nanoGPT; dropout may change.
            self.model_args = dict(resume["model_args"], dropout=cfg.dropout)
            arch = ("n_layer", "n_head", "n_embd", "block_size", "bias")
            self.cfg = cfg = dataclasses.replace(cfg, **{k: self.model_args[k] for k in arch})
        else:
            vocab = GPT2_VOCAB_SIZE if self.data.tokenizer.name == "gpt2" else self.data.vocab_size
            self.model_args = dict(
                n_layer=cfg.n_layer,
                n_head=cfg.n_head,
                n_embd=cfg.n_embd,
                block_size=cfg.block_size,
                bias=cfg.bias,
                vocab_size=vocab,
                dropout=cfg.dropout,
            )
        self.model = GPT(GPTConfig(**self.model_args)).to(self.device)
        self.optimizer = self.model.configure_optimizer(
            cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), self.device.type
        )
        # Loss scaling only for float16: bfloat16 has float32's range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == "float16")
        self.iter_num, self.best_val_loss, self.evaluated = 0, float("inf"), False
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None  # drawn one step ahead
        if resume is not None:
            self.model.load_state_dict(resume["model"])
            self.optimizer.load_state_dict(resume["optimizer"])
            self.iter_num, self.best_val_loss = resume["iter_num"], resume["best_val_loss"]
            state = resume["resume"]
            torch.set_rng_state(state["torch_rng"].cpu())
            if state.get("cuda_rng") and self.device.type == "cuda":
                torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
            self.batch = (state["batch"][0].to(self.device), state["batch"][1].to(self.device))
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.evaluated = state["evaluated"]  # the eval at iter_num already happened
            self.evals: list[tuple[int, float, float]] = [(int(i), t, v) for i, t, v in state.get("evals", [])]
        else:
            self.evals = []
        self.resumed_from = self.iter_num if resume is not None else None
        self.resume_missing = cfg.init_from == "resume" and resume is None
        del resume

        self.step_model: torch.nn.Module = self.model
        if self.compile:
            self.step_model = torch.compile(self.model)  # type: ignore[assignment]
        if self.device.type == "cuda":
            self.ctx: contextlib.AbstractContextManager[Any] = torch.autocast("cuda", dtype=getattr(torch, self.dtype))
        elif self.dtype == "bfloat16":
            self.ctx = torch.autocast(self.device.type, dtype=torch.bfloat16)
        else:
            self.ctx = contextlib.nullcontext()

        mc = self.model.config
        self.n_params = self.model.num_params()
        self.flops_per_iter = flops_per_token(
            self.n_params, mc.n_layer, mc.n_head, mc.n_embd // mc.n_head, mc.block_size
        ) * (cfg.tokens_per_iter())
        self.device_name = device_name(self.device)
        self.peak = cfg.peak_flops or peak_flops(self.device_name, self.dtype)

    # ----------------------------------------------------------------------------------
    def events(self, should_stop: Callable[[], bool]) -> Iterator[Event]:
        cfg = self.cfg
        yield self._started()
        if self.batch is None:
            self.batch = self._draw("train")  # before the first eval, as nanoGPT does
        mfu_avg: float | None = None
        local_iter, warned_overfit, warned_mfu = 0, False, False
        try:
            while True:
                final = self.iter_num >= cfg.max_iters
                # After a resume, the eval at the checkpoint's iteration already happened.
                did_eval, self.evaluated = self.evaluated, False
                if (self.iter_num % cfg.eval_interval == 0 or final or cfg.eval_only) and not did_eval:
                    ev = self._evaluate(should_stop)
                    if ev is None:
                        yield from self._cancelled(evaluated=False)
                        return
                    did_eval = True
                    yield ev
                    self.evals.append((ev["iter"], ev["train_loss"], ev["val_loss"]))
                    if not warned_overfit and (w := self._overfitting()):
                        warned_overfit = True
                        yield w
                    if ev["val_loss"] < self.best_val_loss:
                        warned_overfit = False  # a new best: watch again from here
                    if cfg.sample_prompts:
                        yield from self._samples()
                    if self.iter_num > 0 and not cfg.eval_only:
                        improved = ev["val_loss"] < self.best_val_loss
                        if improved:
                            self.best_val_loss = ev["val_loss"]
                        if improved or cfg.always_save_checkpoint or final:
                            yield self._checkpoint(ev["val_loss"], best=improved, evaluated=True)
                    if cfg.eval_only:
                        yield self._status("succeeded", f"evaluated at iter {self.iter_num} (eval_only)")
                        return
                if final:
                    yield self._status(
                        "succeeded",
                        f"trained {cfg.max_iters} iterations; best val loss {self.best_val_loss:.4f}",
                    )
                    return
                if should_stop():
                    yield from self._cancelled(evaluated=did_eval)
                    return

                lr = lr_at(self.iter_num, cfg)
                loss, step_ms = self._step(lr)
                if not math.isfinite(loss):
                    yield from self._diverged(loss, lr)
                    return
                mfu = self.flops_per_iter / (step_ms / 1e3) / self.peak if self.peak else None
                if mfu is not None and local_iter >= MFU_WARMUP:
                    mfu_avg = mfu if mfu_avg is None else 0.9 * mfu_avg + 0.1 * mfu
                if self.iter_num % cfg.log_interval == 0:
                    yield {
                        "type": "iter",
                        "ts": time.time(),
                        "iter": self.iter_num,
                        "loss": loss,
                        "lr": lr,
                        "step_ms": step_ms,
                        "tokens_per_s": cfg.tokens_per_iter() / (step_ms / 1e3),
                        "mfu": mfu,
                        "mfu_avg": mfu_avg,
                    }
                if local_iter == LOW_MFU_AT and not warned_mfu and mfu_avg is not None:
                    warned_mfu = True
                    if message := readings.low_mfu(
                        mfu_avg,
                        device=self.device_name or self.device.type,
                        batch_size=cfg.batch_size,
                        block_size=cfg.block_size,
                        n_embd=cfg.n_embd,
                        compiled=self.compile,
                        dtype=self.dtype,
                    ):
                        yield self._warning("low_mfu", message)
                self.iter_num += 1
                local_iter += 1
        except torch.OutOfMemoryError:
            yield self._status(
                "failed", readings.out_of_memory(self.iter_num, self.device_name or self.device.type, cfg)
            )

    def _step(self, lr: float) -> tuple[float, float]:
        """One optimisation step; returns (mean loss over micro-steps, wall ms)."""
        cfg, model, opt = self.cfg, self.step_model, self.optimizer
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr
        gas = cfg.gradient_accumulation_steps
        total = None
        x, y = self.batch or self._draw("train")
        for _ in range(gas):
            with self.ctx:
                _, loss = model(x, y)
                loss = loss / gas  # the gradient of the mean over micro-steps
            # The next batch is drawn while the device still computes this one.
            x, y = self._draw("train")
            self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        self.batch = (x, y)
        if cfg.grad_clip:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(opt)
        self.scaler.update()
        opt.zero_grad(set_to_none=True)
        lossf = total.item()  # type: ignore[union-attr]  # the one host sync of the step
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return lossf, (time.perf_counter() - t0) * 1e3

    def _draw(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.batch(split, self.cfg.batch_size, self.cfg.block_size, self.device)

    def _cancelled(self, *, evaluated: bool) -> Iterator[Event]:
        yield self._checkpoint(None, best=False, evaluated=evaluated)
        yield self._status("cancelled", f"cancelled at iter {self.iter_num}; checkpoint saved")

    @torch.no_grad()
    def _evaluate(self, should_stop: Callable[[], bool]) -> Event | None:
        """Mean train and val loss over eval_iters batches each; None when stopped midway.

        A long evaluation must not hold up a cancel, so should_stop is asked between
        batches. Stopping puts the RNG back as it was before the evaluation: the checkpoint
        then resumes into this same evaluation, batch for batch.
        """
        cfg = self.cfg
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        rng = torch.get_rng_state()
        self.model.eval()
        out: dict[str, float] = {}
        for split in ("train", "val"):
            total = torch.zeros((), device=self.device)
            for _ in range(cfg.eval_iters):
                if should_stop():
                    torch.set_rng_state(rng)  # batches come from the CPU generator only
                    self.model.train()
                    return None
                x, y = self._draw(split)
                with self.ctx:
                    _, loss = self.step_model(x, y)
                total += loss.float()
            out[split] = (total / cfg.eval_iters).item()
        self.model.train()
        eval_ms = (time.perf_counter() - t0) * 1e3
        return {
            "type": "eval",
            "ts": time.time(),
            "iter": self.iter_num,
            "train_loss": out["train"],
            "val_loss": out["val"],
            "eval_ms": eval_ms,
        }

    def _checkpoint(self, val_loss: float | None, *, best: bool, evaluated: bool) -> Event:
        t0 = time.perf_counter()
        state = {
            "model": ckpt.model_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "model_args": self.model_args,
            "iter_num": self.iter_num,
            "best_val_loss": self.best_val_loss,
            "val_loss": val_loss,
            "config": self.cfg.to_dict(),
            "tokenizer": self.data.tokenizer.meta(),
            "resume": {
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                "batch": [t.cpu() for t in self.batch] if self.batch else None,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "evaluated": evaluated,
                "evals": [list(e) for e in self.evals],
            },
        }
        nbytes = ckpt.save(self.out_dir / ckpt.LATEST, state, self.before_save)
        if best:
            ckpt.mark_best(self.out_dir)
        return {
            "type": "checkpoint",
            "ts": time.time(),
            "iter": self.iter_num,
            "val_loss": val_loss,
            "best": best,
            "ckpt_ms": (time.perf_counter() - t0) * 1e3,
            "bytes": nbytes,
            "path": str(self.out_dir / ckpt.LATEST),
        }

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
            yield {"type": "sample", "ts": time.time(), "iter": self.iter_num, "prompt": prompt, "text": text}
        self.model.train()

    def _overfitting(self) -> Event | None:
        message = readings.overfitting(self.evals)
        return None if message is None else self._warning("overfitting", message)

    def _diverged(self, loss: float, lr: float) -> Iterator[Event]:
        warning, reason = readings.diverged(loss, self.iter_num, lr, self.cfg)
        yield self._warning("nan_loss", warning)
        yield self._status("failed", reason)

    def _started(self) -> Event:
        where = f"{self.device_name or self.device.type} ({self.dtype}{', compiled' if self.compile else ''})"
        reason = f"training {self.model.num_params(False) / 1e6:.2f}M parameters on {where}"
        if self.resumed_from is not None:
            reason = f"resumed from the checkpoint at iter {self.resumed_from}; " + reason
        elif self.resume_missing:
            reason = f"no checkpoint in {self.out_dir} to resume from: starting from scratch; " + reason
        ev = self._status("running", reason)
        ev.update(
            device=self.device_name or self.device.type,
            dtype=self.dtype,
            compile=self.compile,
            n_params=self.model.num_params(False),
            tokens_per_iter=self.cfg.tokens_per_iter(),
            peak_flops=self.peak,
        )
        if self.resumed_from is not None:
            ev["from_iter"] = self.resumed_from
        return ev

    def _status(self, status: str, reason: str) -> Event:
        return {"type": "status", "ts": time.time(), "status": status, "reason": reason, "iter": self.iter_num}

    def _warning(self, code: str, message: str) -> Event:
        return {"type": "warning", "ts": time.time(), "code": code, "iter": self.iter_num, "message": message}

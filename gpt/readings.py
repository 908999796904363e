"""Readings of a run: what someone who knows nanoGPT's log says on reading it.

The rules, their thresholds and the sentences they are said in, written once: the training
loop warns with them as it trains (gpt.train), and the API's diagnostics read a stored run
with them. Each reading takes plain numbers and settings and gives a sentence, or None when
there is nothing to say; it knows nothing of tensors, events or where a run is stored.
Standard library and gpt.config only: the API imports this and must never import torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpt.config import TrainConfig

LOW_MFU = 0.10  # a smoothed MFU below this share of the device's peak is worth a look
SMALL_MICRO_BATCH = 16384  # tokens per micro-batch below which the matmuls are too small to fill a GPU
NARROW = 512  # n_embd below which kernel launches outweigh the math
SHORT_WARMUP = 100  # warmup_iters below this is worth lengthening when a run diverged


def overfitting(evals: Sequence[tuple[int, float, float]]) -> str | None:
    """Advice when val loss rose while train loss fell over the last two evals.

    evals holds (iter, train_loss, val_loss), oldest first. Two intervals, not one: a single
    rise in val loss is often noise from eval_iters' sampling. Train loss must fall too: when
    both rise, the run is diverging, not memorising.
    """
    if len(evals) < 3:
        return None
    (_, t0, v0), (_, t1, v1), (_, t2, v2) = evals[-3:]
    if not (v2 > v1 > v0 and t2 < t1 < t0):
        return None
    best = min(evals, key=lambda e: e[2])
    return (
        f"val loss rose {v0:.4f} -> {v2:.4f} over the last two evals while train loss fell "
        f"{t0:.4f} -> {t2:.4f}: the model is overfitting, memorising the training set. The best val "
        f"loss was {best[2]:.4f} at iter {best[0]}. More dropout, a smaller model or more data would "
        "help; training longer will not."
    )


def low_mfu(
    mfu: float, *, device: str, batch_size: int, block_size: int, n_embd: int, compiled: bool, dtype: str | None
) -> str | None:
    """Advice when the MFU is below LOW_MFU, with the likely reasons in the run's setup."""
    if mfu >= LOW_MFU:
        return None
    why = []
    tokens = batch_size * block_size
    if tokens < SMALL_MICRO_BATCH:
        why.append(f"small micro-batches ({batch_size} x {block_size} = {tokens} tokens)")
    if not compiled:
        why.append("torch.compile is off (compile=True)")
    if dtype == "float32":
        why.append("float32 (bfloat16 is several times faster on tensor cores)")
    if n_embd < NARROW:
        why.append(f"a narrow model (n_embd {n_embd}): kernel launches outweigh the math")
    return f"MFU is {mfu:.1%} of {device}'s peak" + (": likely " + "; ".join(why) if why else "")


def diverged(loss: float, iter_num: int, lr: float, cfg: TrainConfig) -> tuple[str, str]:
    """What to say when the loss became NaN or inf: (the warning, the failed run's reason)."""
    advice = [f"lower learning_rate (now {cfg.learning_rate:g})"]
    if not cfg.grad_clip:
        advice.append("set grad_clip (e.g. 1.0)")
    if cfg.warmup_iters < SHORT_WARMUP:
        advice.append(f"a longer warmup_iters (now {cfg.warmup_iters})")
    warning = f"loss became {loss} at iter {iter_num} (lr {lr:.3g}): the run diverged"
    return warning, f"{warning}. Try: {', or '.join(advice)}."


def out_of_memory(iter_num: int, device: str, cfg: TrainConfig) -> str:
    """Why a run that ran out of device memory failed, and what keeps its batch the same size."""
    return (
        f"out of memory at iter {iter_num} on {device}: reduce batch_size ({cfg.batch_size}) and raise "
        f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) to keep tokens per iteration, "
        "or reduce block_size/n_embd"
    )

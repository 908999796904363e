"""gpt.readings: the rules and sentences both the training loop and the API's diagnostics say."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from gpt import config, readings
from gpt.config import TrainConfig
from gpt.readings import LOW_MFU, NARROW, SMALL_MICRO_BATCH, diverged, low_mfu, out_of_memory

FAST = dict(device="NVIDIA H100", batch_size=16, block_size=1024, n_embd=768, compiled=True, dtype="bfloat16")


def test_readings_import_only_the_standard_library_and_config() -> None:
    # The API imports this module, and the API never imports torch (nor numpy, nor pydantic here).
    for module in (readings, config):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        outside = {m for m in names if m.split(".")[0] not in sys.stdlib_module_names} - {"__future__", "gpt.config"}
        assert names and not outside, (module.__name__, outside)


def test_low_mfu_names_the_likely_reasons_at_their_thresholds() -> None:
    assert low_mfu(LOW_MFU, **FAST) is None  # at the threshold: nothing to say
    assert low_mfu(0.05, **FAST) == "MFU is 5.0% of NVIDIA H100's peak"  # low, and no reason we know of
    at_edges = {**FAST, "batch_size": SMALL_MICRO_BATCH // 1024, "n_embd": NARROW}
    assert low_mfu(0.05, **at_edges) == "MFU is 5.0% of NVIDIA H100's peak"
    msg = low_mfu(
        0.031, **{**FAST, "batch_size": 4, "block_size": 64, "n_embd": 128, "compiled": False, "dtype": "float32"}
    )
    assert msg is not None and msg.startswith("MFU is 3.1% of NVIDIA H100's peak: likely ")
    for reason in ("small micro-batches (4 x 64 = 256 tokens)", "torch.compile is off", "float32", "n_embd 128"):
        assert reason in msg


def test_overfitting_needs_val_up_and_train_down_twice() -> None:
    rising = [(0, 3.0, 2.0), (10, 2.0, 2.1), (20, 1.5, 2.2)]
    msg = readings.overfitting(rising)
    assert msg and "overfitting" in msg and "best val loss was 2.0000 at iter 0" in msg
    assert readings.overfitting(rising[1:]) is None  # two evals are one interval
    assert readings.overfitting([(0, 3.0, 2.0), (10, 3.1, 2.1), (20, 3.2, 2.2)]) is None  # both rise: diverging


@pytest.mark.parametrize(
    "grad_clip, warmup_iters, advice",
    [
        (1.0, 2000, ["lower learning_rate (now 0.001)"]),
        (0.0, 2000, ["lower learning_rate", "set grad_clip"]),
        (1.0, 10, ["lower learning_rate", "a longer warmup_iters (now 10)"]),
    ],
)
def test_divergence_advice(grad_clip: float, warmup_iters: int, advice: list[str]) -> None:
    cfg = TrainConfig(learning_rate=1e-3, grad_clip=grad_clip, warmup_iters=warmup_iters)
    warning, reason = diverged(float("nan"), 7, 1e-3, cfg)
    assert warning == "loss became nan at iter 7 (lr 0.001): the run diverged"
    assert reason.startswith(warning + ". Try: ") and all(a in reason for a in advice)
    assert ("grad_clip" in reason) == (not grad_clip) and ("warmup_iters" in reason) == (warmup_iters < 100)


def test_out_of_memory_keeps_the_tokens_per_iteration() -> None:
    msg = out_of_memory(3, "NVIDIA L4", TrainConfig(batch_size=32, gradient_accumulation_steps=4))
    assert msg.startswith("out of memory at iter 3 on NVIDIA L4: reduce batch_size (32)")
    assert "raise gradient_accumulation_steps (4)" in msg

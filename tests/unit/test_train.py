from __future__ import annotations

import itertools
import math
import random
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from gpt import checkpoint as ckpt
from gpt import sample
from gpt.config import make_config
from gpt.data import Dataset
from gpt.flops import flops_per_token
from gpt.readings import overfitting
from gpt.train import LOW_MFU_AT, MFU_WARMUP, lr_at, train
from tests.configs import NANOGPT_CPU


def run(cfg, data_dir: Path, **kw: Any) -> list[dict[str, Any]]:
    return list(train(cfg, data_dir=data_dir, **kw))


def run_until(cfg, data_dir: Path, iters: int) -> list[dict[str, Any]]:
    """Events of a run whose should_stop() turns true once `iters` iter events came out."""
    events: list[dict[str, Any]] = []
    stop = lambda: sum(e["type"] == "iter" for e in events) >= iters  # noqa: E731
    for e in train(cfg, data_dir=data_dir, should_stop=stop):
        events.append(e)
    return events


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def test_lr_schedule() -> None:
    cfg = make_config({"learning_rate": 1e-3, "min_lr": 1e-4, "warmup_iters": 10, "lr_decay_iters": 110})
    assert lr_at(0, cfg) == pytest.approx(1e-3 / 11)
    assert lr_at(9, cfg) == pytest.approx(1e-3 * 10 / 11)
    assert lr_at(10, cfg) == pytest.approx(1e-3)  # warmup done: the peak
    assert lr_at(60, cfg) == pytest.approx((1e-3 + 1e-4) / 2)  # halfway down the cosine
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    assert lr_at(10_000, cfg) == 1e-4
    lrs = [lr_at(i, cfg) for i in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    cfg.decay_lr = False
    assert lr_at(5, cfg) == 1e-3


def test_events_shape_and_loss_falls_within_50_iters(tiny, data_dir: Path) -> None:
    cfg = tiny(max_iters=50, lr_decay_iters=50, eval_interval=25, learning_rate=3e-3)
    events = run(cfg, data_dir)
    assert events[0]["type"] == "status" and events[0]["status"] == "running"
    assert events[-1]["status"] == "succeeded"
    iters = of(events, "iter")
    assert [e["iter"] for e in iters] == list(range(50))
    for e in iters:
        assert {"iter", "loss", "lr", "step_ms", "tokens_per_s", "mfu", "mfu_avg", "ts"} <= set(e)
        assert e["mfu"] is None  # CPU: the peak is unknown, so no guess
    assert [e["iter"] for e in of(events, "eval")] == [0, 25, 50]
    first, last = iters[0]["loss"], sum(e["loss"] for e in iters[-5:]) / 5
    assert first == pytest.approx(math.log(65), abs=0.2)  # uniform over 65 characters at init
    assert last < first - 0.5
    evals = of(events, "eval")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5


def test_mfu_against_hand_count(tiny, data_dir: Path) -> None:
    cfg = tiny(max_iters=8, peak_flops=1e12)
    events = run(cfg, data_dir)
    # wte (tied with lm_head) + one block (4 matrices, 2 LayerNorm gains) + ln_f; no biases; wpe left out
    n = 65 * 32 + (12 * 32 * 32 + 2 * 32) + 32
    per_iter = flops_per_token(n, 1, 2, 16, 32) * 4 * 32  # tokens per iter: batch 4 x block 32
    for e in of(events, "iter"):
        assert e["mfu"] == pytest.approx(per_iter / (e["step_ms"] / 1e3) / 1e12)
    assert of(events, "iter")[-1]["mfu_avg"] is not None  # smoothed, after warm-up


def test_low_mfu_warned_once_with_its_reasons(tiny, data_dir: Path) -> None:
    # A peak no CPU reaches: the MFU is far below the threshold at every step.
    events = run(tiny(max_iters=LOW_MFU_AT + 20, eval_interval=1000, peak_flops=1e18), data_dir)
    iters = of(events, "iter")
    assert all(e["mfu_avg"] is None for e in iters[:MFU_WARMUP]) and iters[MFU_WARMUP]["mfu_avg"] is not None
    warnings = of(events, "warning")
    assert [(w["code"], w["iter"]) for w in warnings] == [("low_mfu", LOW_MFU_AT)]
    assert events.index(warnings[0]) == events.index(iters[LOW_MFU_AT]) + 1  # right after that iteration's line
    assert "of cpu's peak: likely small micro-batches (4 x 32 = 128 tokens)" in warnings[0]["message"]
    assert "a narrow model (n_embd 32)" in warnings[0]["message"]


def test_before_save_refusing_leaves_no_checkpoint(tiny, data_dir: Path, tmp_path: Path) -> None:
    calls: list[int] = []

    def fence() -> None:
        calls.append(1)
        raise RuntimeError("lease lost")

    events: list[dict[str, Any]] = []
    with pytest.raises(RuntimeError, match="lease lost"):
        for e in train(tiny(max_iters=20, out_dir=str(tmp_path / "o")), data_dir=data_dir, before_save=fence):
            events.append(e)
    assert calls == [1] and [e["iter"] for e in of(events, "eval")] == [0, 10]  # the save at iter 10
    assert not list((tmp_path / "o").iterdir())  # neither ckpt.pt nor a temp file


def test_timing_excludes_eval_and_checkpoint(tiny, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake clock that only moves when evaluation or checkpointing "takes" 1000 s: if
    # either leaked into an iteration's time, that iteration would show it. Nothing here
    # depends on how fast or loaded the machine is.
    now = [0.0]

    def clock() -> float:
        now[0] += 1e-3  # every reading costs 1 ms, so a step lasts a few fake ms
        return now[0]

    real_batch, real_save = Dataset.batch, ckpt.save

    def slow_val_batch(self: Dataset, split: str, *a: Any) -> Any:
        if split == "val":  # only evaluation reads the val split
            now[0] += 1000.0
        return real_batch(self, split, *a)

    def slow_save(where: Any, state: dict[str, Any], before_replace: Any = None) -> int:
        now[0] += 1000.0
        return real_save(where, state, before_replace)

    monkeypatch.setattr(time, "perf_counter", clock)
    monkeypatch.setattr(Dataset, "batch", slow_val_batch)
    monkeypatch.setattr(ckpt, "save", slow_save)
    events = run(tiny(max_iters=20, eval_interval=5, always_save_checkpoint=True), data_dir)
    assert len(of(events, "eval")) == 5 and len(of(events, "checkpoint")) == 4
    assert all(e["eval_ms"] >= 2e6 for e in of(events, "eval"))  # eval_iters=2 val batches
    assert all(e["ckpt_ms"] >= 1e6 for e in of(events, "checkpoint"))
    steps = [e["step_ms"] for e in of(events, "iter")]
    assert len(steps) == 20 and max(steps) < 100  # neither leaked into any iteration


def test_exact_resume(tiny, data_dir: Path, tmp_path: Path) -> None:
    straight = run(tiny(max_iters=20, out_dir=str(tmp_path / "a")), data_dir)
    first = run(tiny(max_iters=10, out_dir=str(tmp_path / "b")), data_dir)
    assert of(first, "checkpoint")[-1]["iter"] == 10
    # The architecture comes from the checkpoint, whatever the resuming config says.
    second = run(tiny(max_iters=20, out_dir=str(tmp_path / "b"), init_from="resume", n_embd=64), data_dir)
    assert second[0]["from_iter"] == 10
    assert [e["iter"] for e in of(second, "eval")] == [20]  # the eval at 10 is not repeated
    want = [(e["iter"], e["loss"]) for e in of(straight, "iter")]
    got = [(e["iter"], e["loss"]) for e in of(first, "iter") + of(second, "iter")]
    assert got == want  # bit for bit
    assert of(second, "eval")[-1]["val_loss"] == of(straight, "eval")[-1]["val_loss"]


def test_cancel_writes_checkpoint_then_resumes_exactly(tiny, data_dir: Path, tmp_path: Path) -> None:
    straight = run(tiny(max_iters=12, out_dir=str(tmp_path / "a"), dropout=0.1), data_dir)
    events = run_until(tiny(max_iters=12, out_dir=str(tmp_path / "b"), dropout=0.1), data_dir, 7)
    # should_stop is asked at the end of each step, before its iter event: 7 events are out
    # when step 7 asks, so step 7 is the last and the checkpoint resumes at 8.
    assert events[-1]["status"] == "cancelled" and of(events, "checkpoint")[-1]["iter"] == 8
    rest = run(tiny(max_iters=12, out_dir=str(tmp_path / "b"), dropout=0.1, init_from="resume"), data_dir)
    got = [e["loss"] for e in of(events, "iter") + of(rest, "iter")]
    assert got == [e["loss"] for e in of(straight, "iter")]  # dropout RNG restored too


def test_cancel_during_an_evaluation_stops_it_and_resumes_exactly(tiny, data_dir: Path, tmp_path: Path) -> None:
    straight = run(tiny(max_iters=20, out_dir=str(tmp_path / "a"), eval_iters=50), data_dir)
    # The first should_stop() after iter 9 is asked inside the evaluation at iter 10.
    events = run_until(tiny(max_iters=20, out_dir=str(tmp_path / "b"), eval_iters=50), data_dir, 10)
    assert [e["iter"] for e in of(events, "eval")] == [0]  # the one at iter 10 was cut short
    assert events[-1]["status"] == "cancelled" and of(events, "checkpoint")[-1]["iter"] == 10
    rest = run(tiny(max_iters=20, out_dir=str(tmp_path / "b"), eval_iters=50, init_from="resume"), data_dir)
    assert [e["iter"] for e in of(rest, "eval")] == [10, 20]  # redone on resume
    assert [e["val_loss"] for e in of(rest, "eval")] == [e["val_loss"] for e in of(straight, "eval")[1:]]
    got = [e["loss"] for e in of(events, "iter") + of(rest, "iter")]
    assert got == [e["loss"] for e in of(straight, "iter")]


def test_nan_loss_fails_with_advice(tiny, data_dir: Path) -> None:
    events = run(tiny(max_iters=200, learning_rate=1e6, min_lr=0, warmup_iters=0, grad_clip=0), data_dir)
    final = events[-1]
    assert final["type"] == "status" and final["status"] == "failed"
    assert "diverged" in final["reason"] and "learning_rate" in final["reason"] and "grad_clip" in final["reason"]
    assert of(events, "warning")[-1]["code"] == "nan_loss"
    assert len(of(events, "iter")) < 200  # it stopped instead of printing nan forever


def test_checkpoint_loads_like_nanogpt(tiny, data_dir: Path, tmp_path: Path) -> None:
    cfg = tiny(max_iters=10, out_dir=str(tmp_path / "o"))
    events = run(cfg, data_dir)
    c = of(events, "checkpoint")[-1]
    path = Path(c["path"])
    assert c["bytes"] == path.stat().st_size and (path.parent / "best.pt").exists()
    state = torch.load(path, map_location="cpu", weights_only=True)  # what nanoGPT's sample.py does
    assert {"model", "optimizer", "model_args", "iter_num", "best_val_loss", "config"} <= set(state)
    assert set(state["model_args"]) == {"n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout"}
    assert state["config"]["dataset"] == "shakespeare_char" and state["iter_num"] == 10
    assert not any(k.startswith("_orig_mod.") for k in state["model"])
    assert not list(path.parent.glob(".*tmp"))  # no temp files left behind
    m = sample.load(path)
    a = sample.generate(m, "ROMEO:", max_new_tokens=20, seed=3, num_samples=2)
    assert a == sample.generate(m, "ROMEO:", max_new_tokens=20, seed=3, num_samples=2)
    assert len(a) == 2 and all(len(t) == 20 for t in a)


def test_interrupted_checkpoint_write_keeps_previous(tiny, data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    ckpt.save(tmp_path, {"iter_num": 1})

    class Boom:
        def __reduce__(self) -> Any:
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        ckpt.save(tmp_path, {"iter_num": 2, "x": Boom()})
    assert ckpt.load(path)["iter_num"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints.json", "ckpt.pt"]


def test_gpt2_bpe_dataset_trains(tiny, data_dir: Path) -> None:
    events = run(tiny(dataset="shakespeare", max_iters=3, eval_interval=3), data_dir)
    assert events[-1]["status"] == "succeeded"
    assert of(events, "iter")[0]["loss"] == pytest.approx(math.log(50304), abs=0.3)


def test_overfitting_reading() -> None:
    assert overfitting([(0, 3.0, 3.0), (1, 2.0, 2.1), (2, 1.5, 2.2)]) is None  # one rise: noise
    msg = overfitting([(0, 3.0, 2.0), (1, 2.0, 2.1), (2, 1.5, 2.2)])
    assert msg and "2.0000 -> 2.2000" in msg and "iter 0" in msg
    assert overfitting([(0, 3.0, 2.0), (1, 2.0, 2.1), (2, 2.5, 2.2)]) is None  # train rose too: not memorising


def test_overfitting_warning_in_a_run(tiny, data_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(0)
    text = tmp_path / "small.txt"
    text.write_text("".join(rng.choice("abcdefghij") for _ in range(600)))  # little data, nothing to learn
    cfg = tiny(
        dataset=str(text),
        n_layer=2,
        n_embd=64,
        learning_rate=3e-3,
        max_iters=60,
        lr_decay_iters=100,
        eval_interval=20,
        eval_iters=4,
        block_size=8,
        batch_size=16,
    )
    events = run(cfg, data_dir)
    warnings = of(events, "warning")
    assert [w["code"] for w in warnings] == ["overfitting"], of(events, "eval")


def test_nanogpt_parity_at_step_250(data_dir: Path, tmp_path: Path) -> None:
    # nanoGPT's README CPU command, run with nanoGPT's own train.py on the reference
    # machine, printed "step 250: train loss 2.4293, val loss 2.4447". Same init, same
    # batches in the same order, same update: the same numbers (to rounding, whatever
    # the CPU's kernels).
    cfg = make_config({**NANOGPT_CPU, "log_interval": 250, "max_iters": 250, "out_dir": str(tmp_path)})
    evals = of(run(cfg, data_dir), "eval")
    assert evals[-1]["iter"] == 250
    assert evals[-1]["train_loss"] == pytest.approx(2.4293, abs=0.005)
    assert evals[-1]["val_loss"] == pytest.approx(2.4447, abs=0.005)


def test_auto_device_on_this_machine(tiny) -> None:
    from gpt.train import resolve_device

    cfg = tiny(device="auto", dtype="auto", compile=None)
    device, dtype, compile_ = resolve_device(cfg)
    if torch.cuda.is_available():
        assert device == "cuda" and dtype in ("bfloat16", "float16") and compile_
    else:
        assert (device, compile_) in (("cpu", False), ("mps", False)) and dtype == "float32"


def test_bfloat16_autocast_on_cpu(tiny, data_dir: Path) -> None:
    events = run(tiny(dtype="bfloat16", max_iters=5), data_dir)
    assert events[0]["dtype"] == "bfloat16" and events[-1]["status"] == "succeeded"
    assert all(math.isfinite(e["loss"]) for e in of(events, "iter"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on CI)")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_autocast_compile_and_mfu(tiny, data_dir: Path, dtype: str) -> None:
    events = run(tiny(device="cuda", dtype=dtype, compile=True, max_iters=30), data_dir)
    assert events[-1]["status"] == "succeeded", events[-1]
    first = events[0]
    assert first["peak_flops"] is None or first["peak_flops"] > 1e13  # a known GPU gets its table peak
    if first["peak_flops"]:
        assert of(events, "iter")[-1]["mfu_avg"] is not None

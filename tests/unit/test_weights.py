"""Weights in and out, against transformers itself: a GPT-2 made by transformers (random
weights: nothing can be downloaded here) loads into our model with transformers' logits and
greedy tokens; ours goes back out and loads in transformers with the same logits; nanoGPT's
own checkpoints continue; and what may not start from what is refused, saying why."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from gpt import checkpoint as ckpt
from gpt import hf
from gpt.config import ConfigError, make_config
from gpt.model import GPT, GPTConfig
from gpt.train import train

transformers = pytest.importorskip("transformers")  # a dev dependency: `make test` installs it

SHAPE = {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64, "vocab_size": 50257}


def tiny_gpt2(d: Path, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**SHAPE)).eval()
    model.save_pretrained(d)
    return model


def ours(w: hf.Weights) -> GPT:
    m = GPT(GPTConfig(**w.model_args, gelu=w.gelu)).eval()
    m.load_state_dict(w.state)
    return m


def test_transformers_gpt2_loads_with_its_own_logits_and_greedy_tokens(tmp_path: Path) -> None:
    theirs = tiny_gpt2(tmp_path)
    w = hf.load_dir(tmp_path)
    assert w.gelu == "tanh" and w.model_args == {**{k: SHAPE[k] for k in ("n_layer", "n_head", "n_embd")},
        "block_size": 64, "vocab_size": 50257, "bias": True, "dropout": 0.0}  # fmt: skip
    mine = ours(w)
    x = torch.randint(0, 50257, (3, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (theirs(x).logits - mine(x, targets=x)[0]).abs().max().item() <= 1e-4
    prompt = x[:1, :6]
    want = theirs.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=50256)
    assert mine.generate(prompt, 20, temperature=0).tolist() == want.tolist()


def test_our_weights_go_out_and_load_in_transformers_with_the_same_logits(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(3)
    args = {"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 32, "bias": False, "vocab_size": 50304}
    mine = GPT(GPTConfig(**args)).eval()  # no biases, the padded vocabulary: as we train GPT-2 BPE models
    config, tensors = hf.to_hf(args, mine.state_dict(), "exact", 50257)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 50257, (2, 32))
    with torch.no_grad():
        diff = (theirs(x).logits - mine(x, targets=x)[0][..., :50257]).abs().max().item()
    assert diff <= 1e-4
    again = hf.load_dir(tmp_path)  # and back in: the same model again
    with torch.no_grad():
        assert (ours(again)(x, targets=x)[0] - theirs(x).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
        (lambda d: (d / "config.json").write_text('{"model_type": "llama"}'), "not describe a GPT-2"),
        (lambda d: (d / "model.safetensors").write_bytes(b"not safetensors"), "not readable"),
        (lambda d: _resize(d, "transformer.wte.weight", (50000, 32)), r"transformer.wte.weight is \(50000, 32\)"),
        (lambda d: _resize(d, "transformer.h.1.mlp.c_fc.weight", None), "lack transformer.h.1.mlp.c_fc.weight"),
    ],
)
def test_bad_hugging_face_directories_say_why(tmp_path: Path, spoil: Any, reason: str) -> None:
    tiny_gpt2(tmp_path)
    spoil(tmp_path)
    with pytest.raises(hf.WeightsError, match=reason):
        hf.load_dir(tmp_path)


def _resize(d: Path, name: str, shape: tuple[int, int] | None) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(d / "model.safetensors"))
    if shape is None:
        del tensors[name]
    else:
        tensors[name] = torch.zeros(shape)
    save_file(tensors, str(d / "model.safetensors"))


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The Hub's cache (HF_HOME) holding a tiny GPT-2 as openai-community/gpt2, where
    huggingface_hub's loader looks for it; offline, as this machine is."""
    home = tmp_path / "hf"
    repo, commit = home / "hub" / "models--openai-community--gpt2", "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    tiny_gpt2(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(home / "hub"))
    yield snap


def test_init_from_gpt2_loads_from_the_hub_cache_and_crops_block_size(
    hub_cache: Path, tmp_path: Path, data_dir: Path
) -> None:
    assert hf.cached("gpt2") == hub_cache and hf.cached("gpt2-xl") is None
    cfg = make_config({"dataset": "shakespeare", "init_from": "gpt2", "block_size": 32, "device": "cpu",
                       "compile": False, "max_iters": 2, "eval_iters": 2, "batch_size": 2,
                       "gradient_accumulation_steps": 1, "out_dir": str(tmp_path / "out")})  # fmt: skip
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.bias) == (12, 12, 768, True)  # gpt2's, as the table says
    # The tiny stand-in is not gpt2's shape: the engine takes the weights' own, as nanoGPT does.
    events = list(train(cfg, data_dir=data_dir))
    assert "starting from the weights of gpt2" in events[0]["reason"], events[0]
    assert events[-1]["status"] == "succeeded", events[-1]
    saved = ckpt.load(tmp_path / "out" / ckpt.LATEST)
    assert saved["model_args"]["block_size"] == 32 and saved[ckpt.GELU] == "tanh"
    assert saved["model"]["transformer.wpe.weight"].shape == (32, 32)
    assert ckpt.read_model_json(tmp_path / "out")["model_args"]["vocab_size"] == 50257


def test_init_from_gpt2_takes_its_architecture_and_the_finetune_recipe() -> None:
    cfg = make_config({"dataset": "shakespeare", "init_from": "gpt2-medium", "block_size": 256}, max_params=None)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.bias) == (24, 16, 1024, 256, True)
    assert (cfg.learning_rate, cfg.decay_lr, cfg.max_iters, cfg.always_save_checkpoint) == (3e-5, False, 20, False)
    with pytest.raises(ConfigError) as e:
        make_config({"init_from": "gpt2", "n_layer": 4, "block_size": 2048, "dataset": "shakespeare"})
    assert "is 12 in the weights of gpt2" in e.value.errors["n_layer"]
    assert "at most 1024" in e.value.errors["block_size"]
    with pytest.raises(ConfigError) as e:
        make_config({"init_from": "gpt2", "dataset": "shakespeare_char"})
    assert "tokenized with char, but the weights of gpt2 were trained with gpt2" in e.value.errors["dataset"]
    with pytest.raises(ConfigError) as e:
        make_config({"init_from": "gpt2-xl", "dataset": "shakespeare"}, max_params=200_000_000)
    assert "model too large: 1557" in e.value.errors["n_layer"]
    with pytest.raises(ConfigError) as e:
        make_config({"init_from": "gpt3"})
    assert "must be one of scratch, resume, gpt2" in e.value.errors["init_from"]


def _nanogpt_checkpoint(src: Path, dst: Path, compiled: bool = True) -> None:
    """Our checkpoint as nanoGPT's train.py writes one: its keys only, a compiled model's
    `_orig_mod.` prefix, its config dict (with keys of its own), no exact-resume state."""
    saved = torch.load(src / ckpt.LATEST, weights_only=True)
    prefix = "_orig_mod." if compiled else ""
    nano = {
        "model": {prefix + k: v for k, v in saved["model"].items()},
        "optimizer": saved["optimizer"],
        "model_args": saved["model_args"],
        "iter_num": saved["iter_num"],
        "best_val_loss": saved["best_val_loss"],
        "config": {**saved["config"], "wandb_log": False, "backend": "nccl"},
    }
    dst.mkdir(parents=True)
    torch.save(nano, dst / ckpt.LATEST)


def test_a_nanogpt_checkpoint_continues_under_init_from_resume(tiny, tmp_path: Path, data_dir: Path) -> None:
    first = list(train(tiny(out_dir=str(tmp_path / "a")), data_dir=data_dir))
    assert first[-1]["status"] == "succeeded"
    _nanogpt_checkpoint(tmp_path / "a", tmp_path / "nano")
    more = list(train(tiny(out_dir=str(tmp_path / "nano"), init_from="resume", max_iters=30), data_dir=data_dir))
    assert "not exact" in more[0]["reason"] and more[0]["from_iter"] == 20
    iters = [e["iter"] for e in more if e["type"] == "iter"]
    assert iters == list(range(20, 30)) and more[-1]["status"] == "succeeded"
    evals = [e["val_loss"] for e in first if e["type"] == "eval"]
    assert abs(next(e["val_loss"] for e in more if e["type"] == "eval") - evals[-1]) < 0.5  # the same weights


def test_a_run_starts_from_another_checkpoint_with_the_same_tokenizer_only(
    tiny, tmp_path: Path, data_dir: Path
) -> None:
    list(train(tiny(out_dir=str(tmp_path / "parent")), data_dir=data_dir))
    parent = str(tmp_path / "parent" / ckpt.LATEST)
    child = list(train(tiny(out_dir=str(tmp_path / "child"), init_from=parent, max_iters=4), data_dir=data_dir))
    assert "starting from the weights of ckpt.pt" in child[0]["reason"] and child[-1]["status"] == "succeeded"
    with pytest.raises(hf.WeightsError, match="trained with char, the dataset is tokenized with gpt2"):
        list(train(tiny(out_dir=str(tmp_path / "bpe"), init_from=parent, dataset="shakespeare"), data_dir=data_dir))


def test_gelu_stays_out_of_nanogpts_model_args(tmp_path: Path) -> None:
    ckpt.write_model_json(tmp_path, {"n_layer": 1, "dropout": 0.1}, {"kind": "gpt2"}, "tanh")
    assert ckpt.read_model_json(tmp_path) == {
        "model_args": {"n_layer": 1},
        "tokenizer": {"kind": "gpt2"},
        "gelu": "tanh",
    }
    assert os.listdir(tmp_path) == ["model.json"]


def test_python_m_gpt_train_continues_a_nanogpt_checkpoint(tiny, tmp_path: Path, data_dir: Path) -> None:
    import subprocess
    import sys

    list(train(tiny(out_dir=str(tmp_path / "a")), data_dir=data_dir))
    _nanogpt_checkpoint(tmp_path / "a", tmp_path / "out")
    flags = [f"--{k}={v}" for k, v in {**tiny().to_dict(), "out_dir": str(tmp_path / "out")}.items()
             if k not in ("sample_prompts", "peak_flops", "tokenizer", "compile")]  # fmt: skip
    argv = [sys.executable, "-m", "gpt", "train", *flags, "--compile=False", "--init_from=resume", "--max_iters=24"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from the checkpoint at iter 20, which has no exact-resume state" in out.stdout
    assert "iter 23: loss" in out.stdout and "run succeeded" in out.stdout

"""Weights in and out against the real parts (uvicorn, Redis, a training and a sampling
worker): a Hugging Face GPT-2 made by transformers (random weights: nothing can be
downloaded here) imported and sampled greedily as transformers generates; a nanoGPT
checkpoint imported with its meta.pkl; a run continued from another's checkpoint starting at
its val loss; an export that transformers loads with our logits; every bad file's reason."""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import gptjobs
from gpt import checkpoint as ckpt
from gpt.config import make_config
from gpt.sample import load
from gpt.tokenizers import GPT2Tokenizer
from gpt.train import train
from tests.configs import TINY
from tests.harness import Stack
from tests.harness import gptjobs as gptjobs_cli

transformers = pytest.importorskip("transformers")  # a dev dependency: `make test` installs it


@pytest.fixture(scope="module")
def client(stack: Stack, sample_worker: None) -> Iterator[gptjobs.Client]:
    with gptjobs.Client(stack.url, "") as c:
        yield c


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    d = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(d)
    return model, d


def test_a_hugging_face_gpt2_imports_and_samples_greedily_as_transformers_generates(
    client: gptjobs.Client, hf_model: tuple[Any, Path]
) -> None:
    model, d = hf_model
    run = client.runs.import_weights(d, name="tiny gpt2")  # the directory goes as a tar
    assert run.status == "succeeded" and run.name == "tiny gpt2"
    assert run.reason and "imported from a Hugging Face GPT-2" in run.reason and "at iter 0" in run.reason
    enc = GPT2Tokenizer().enc
    prompt = enc.encode_ordinary("ROMEO:")
    want = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, pad_token_id=50256)
    got = client.runs.sample(run.id, "ROMEO:", max_new_tokens=24, temperature=0)
    assert got.text == enc.decode(want[0, len(prompt) :].tolist())
    (only,) = client.runs.checkpoints(run.id)
    assert only.iter == 0 and only.best and only.latest


def test_the_export_loads_in_transformers_with_the_same_logits(client: gptjobs.Client, tmp_path: Path) -> None:
    config = {**TINY, "dataset": "shakespeare", "max_iters": 10, "lr_decay_iters": 10, "eval_interval": 10}
    run = client.runs.create({**config, "warmup_iters": 0})
    assert client.runs.wait(run.id, timeout=120).status == "succeeded"
    out = client.runs.export(run.id, tmp_path / "hf", "best")
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    theirs = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ours = load(client.runs.download_checkpoint(run.id, "best", tmp_path / "ckpt.pt")).model
    x = torch.randint(0, 50257, (2, 32))
    with torch.no_grad():
        assert (theirs(x).logits - ours(x, targets=x)[0][..., :50257]).abs().max().item() <= 1e-4
    tok = transformers.GPT2TokenizerFast.from_pretrained(out)
    assert tok("Hello world")["input_ids"] == [15496, 995]


def _nanogpt_char_checkpoint(d: Path) -> tuple[Path, Path]:
    """A character-level ckpt.pt as nanoGPT's train.py writes one (a compiled model's keys,
    no tokenizer in it), and its data directory's meta.pkl."""
    cfg = make_config({**TINY, "max_iters": 20, "lr_decay_iters": 20, "warmup_iters": 0, "out_dir": str(d / "ours")})
    list(train(cfg, data_dir=d / "data", num_threads=1))
    saved = torch.load(d / "ours" / ckpt.LATEST, weights_only=True)
    nano = {k: saved[k] for k in ("optimizer", "model_args", "iter_num", "best_val_loss", "config")}
    nano["model"] = {"_orig_mod." + k: v for k, v in saved["model"].items()}
    torch.save(nano, d / "ckpt.pt")
    chars = saved["tokenizer"]["chars"]
    with open(d / "meta.pkl", "wb") as f:
        pickle.dump(
            {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}, f
        )
    return d / "ckpt.pt", d / "meta.pkl"


def test_a_nanogpt_checkpoint_imports_with_its_vocabulary_and_samples(client: gptjobs.Client, tmp_path: Path) -> None:
    path, meta = _nanogpt_char_checkpoint(tmp_path)
    with pytest.raises(gptjobs.ValidationError, match=r"not GPT-2's: send the model's meta\.pkl"):
        client.runs.import_weights(path)
    run = client.runs.import_weights(path, vocab=meta)
    assert "imported from a nanoGPT checkpoint (ckpt.pt)" in (run.reason or "") and "at iter 20" in (run.reason or "")
    text = client.runs.sample(run.id, "ROMEO:", max_new_tokens=40, seed=1).text
    assert len(text) == 40 and set(text) <= set(load(path.parent / "ours" / ckpt.LATEST).tokenizer.chars)  # type: ignore[attr-defined]


def test_a_run_continued_from_another_starts_at_its_val_loss(client: gptjobs.Client, stack: Stack) -> None:
    # Big evaluations (500 batches of 32 windows), so that two of them differ by less than 0.01.
    config = {**TINY, "batch_size": 32, "eval_iters": 500, "warmup_iters": 0}
    parent = client.runs.create({**config, "max_iters": 100, "lr_decay_iters": 100, "eval_interval": 100})
    done = client.runs.wait(parent.id, timeout=300)
    assert done.status == "succeeded", done.reason
    saved_at = next(c for c in client.runs.checkpoints(parent.id) if c.best)
    child = client.runs.create({**config, "init_from": f"run:{parent.id}@best", "max_iters": 5, "lr_decay_iters": 5})
    assert child.raw["parent"] == {"run_id": parent.id, "iter": saved_at.iter}
    assert child.config["init_from"] == f"run:{parent.id}@{saved_at.iter}"
    assert client.runs.wait(child.id, timeout=300).status == "succeeded"
    first = next(iter(client.runs.events(child.id, type="eval").events))
    assert first["iter"] == 0 and abs(first["val_loss"] - saved_at.val_loss) < 0.01, (first, saved_at)  # type: ignore[operator]
    status = next(iter(client.runs.events(child.id, type="status").events))
    assert f"starting from the weights of {ckpt.PARENT}" in status["reason"]
    with pytest.raises(gptjobs.ValidationError) as e:  # a parent of another tokenizer
        client.runs.create({**config, "dataset": "shakespeare", "init_from": f"run:{parent.id}"})
    assert "were trained with char" in e.value.fields["config.dataset"]
    with pytest.raises(gptjobs.ValidationError) as e:
        client.runs.create({**config, "init_from": "run:nosuchrun"})
    assert "no run 'nosuchrun' of yours" in e.value.fields["config.init_from"]


def _tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


class Gadget:
    """Not a tensor: a pickle of it needs this class, which weights_only never looks up."""


def _spoilt(tmp_path: Path, what: str) -> Path:
    path = tmp_path / what
    if what == "noise.pt":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    elif what == "code.pt":
        torch.save({"model": {}, "model_args": {}, "gadget": Gadget()}, path)
    elif what == "shapes.pt":
        ckpt_path, _ = _nanogpt_char_checkpoint(tmp_path)
        saved = torch.load(ckpt_path, weights_only=True)
        saved["model"]["_orig_mod.transformer.wte.weight"] = torch.zeros(10, 32)
        torch.save(saved, path)
    elif what == "link.tar":
        path.write_bytes(_tar({"config.json": b"{}"}, {"model.safetensors": "/etc/passwd"}))
    elif what == "escape.tar":
        path.write_bytes(_tar({"../config.json": b"{}"}))
    elif what == "pickle.tar":
        path.write_bytes(_tar({"config.json": b'{"model_type": "gpt2"}', "pytorch_model.bin": b"\x80\x04"}))
    return path


@pytest.mark.parametrize(
    ("what", "reason"),
    [
        ("noise.pt", "not a PyTorch checkpoint"),
        ("code.pt", "refused: the file holds more than tensors and plain values"),
        ("shapes.pt", r"transformer.wte.weight is \(10, 32\)"),
        ("link.tar", "is a link"),
        ("escape.tar", "leaves its folder"),
        ("pickle.tar", "pytorch_model.bin is a pickle"),
    ],
)
def test_bad_files_are_refused_with_the_reason(client: gptjobs.Client, tmp_path: Path, what: str, reason: str) -> None:
    with pytest.raises(gptjobs.ValidationError, match=reason):
        client.runs.import_weights(_spoilt(tmp_path, what))


def test_the_command_line_imports_and_exports(stack: Stack, client: gptjobs.Client, tmp_path: Path) -> None:
    path, meta = _nanogpt_char_checkpoint(tmp_path)
    out = gptjobs_cli(
        stack.env, "import", str(path), "--vocab", str(meta), "--name", "from the shell", "--server", stack.url
    )
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip()
    assert "imported from a nanoGPT checkpoint" in out.stderr and client.runs.get(run_id).name == "from the shell"
    out = gptjobs_cli(stack.env, "export", run_id, "-o", str(tmp_path / "hf"), "--server", stack.url)
    assert out.returncode == 0, out.stderr
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {
        "config.json",
        "model.safetensors",
        "vocab.json",
        "README.md",
    }
    assert transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").config.vocab_size == 65
    out = gptjobs_cli(
        stack.env, "export", run_id, "--format", "nanogpt", "-o", str(tmp_path / "nano"), "--server", stack.url
    )
    assert out.returncode == 0 and (tmp_path / "nano" / "ckpt.pt").exists(), out.stderr
    bad = gptjobs_cli(stack.env, "import", str(meta), "--server", stack.url)  # not a checkpoint at all
    assert bad.returncode == 2 and "not a PyTorch checkpoint" in bad.stderr, bad.stderr

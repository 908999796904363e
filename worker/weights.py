"""Weights in and out, on the `sample` queue (its workers have torch loaded and answer
requests while someone waits): an uploaded checkpoint made into a run's, and a run's
checkpoint as a Hugging Face GPT-2 directory.

Nothing uploaded is trusted: a checkpoint is read with torch.load(weights_only=True) (plain
tensors and values, no code), its keys and shapes checked against the architecture its
model_args give; a Hugging Face directory only as config.json + model.safetensors (a
pytorch_model.bin is a pickle: refused), from a tar whose members are regular files inside
it. The answer goes back on the request's Redis list, as sampling's does (api/rpc.py).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pickle
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from api.queue import EXPORT_TASK, IMPORT_TASK
from api.settings import get_settings
from gpt import checkpoint as ckpt
from gpt import hf
from worker.app import app, redis_client
from worker.sample import Reply, _error

log = logging.getLogger(__name__)

MAX_VOCAB_BYTES = 16 << 20


class Refused(ValueError):
    """The upload cannot be imported; the message is the 422's detail."""


@app.task(name=IMPORT_TASK)
def import_weights(request_id: str, run_id: str, upload: str, filename: str, vocab: str | None) -> None:
    """Make runs/<run_id>/ from an uploaded nanoGPT ckpt.pt or Hugging Face GPT-2 tar."""
    reply = Reply(redis_client(), request_id)
    reply.send({"t": "accepted"}, now=True)
    out_dir = get_settings().runs_dir() / run_id
    try:
        done = _import(Path(upload), filename, Path(vocab) if vocab else None, out_dir)
        reply.send({"t": "done", **done})
    except (Refused, hf.WeightsError) as e:
        shutil.rmtree(out_dir, ignore_errors=True)
        reply.send(_error(422, str(e), ["body", "file"]))
    except Exception as e:
        log.exception("import into run %s failed", run_id)
        shutil.rmtree(out_dir, ignore_errors=True)
        reply.send(_error(500, f"importing failed on the worker: {type(e).__name__}: {e}"))
    finally:
        Path(upload).unlink(missing_ok=True)
        if vocab:
            Path(vocab).unlink(missing_ok=True)
        reply.flush()


def _import(upload: Path, filename: str, vocab: Path | None, out_dir: Path) -> dict[str, Any]:
    if tarfile.is_tarfile(upload):
        with tempfile.TemporaryDirectory(dir=upload.parent) as d:
            w = hf.load_dir(_extract_hf(upload, Path(d)))
        tokenizer = w.tokenizer if w.tokenizer["kind"] == "gpt2" else _vocabulary(vocab, w.model_args["vocab_size"])
        saved: dict[str, Any] = {"iter_num": 0, "best_val_loss": math.inf, "config": {}}
        source, state, args, gelu = "a Hugging Face GPT-2", w.state, w.model_args, w.gelu
    else:
        saved = _read_checkpoint(upload)
        args = _model_args(saved["model_args"])
        state = saved["model"]
        hf.check_state(state, args)
        tokenizer = saved.get("tokenizer") or (
            _vocabulary(vocab, args["vocab_size"]) if vocab or args["vocab_size"] < 50257 else {"kind": "gpt2"}
        )
        source, gelu = "a nanoGPT checkpoint", saved.get(ckpt.GELU, "exact")
    it = int(saved.get("iter_num") or 0)
    val = saved.get("val_loss", saved.get("best_val_loss"))
    val = float(val) if isinstance(val, int | float) and math.isfinite(val) else None
    best = saved.get("best_val_loss")
    state_out: dict[str, Any] = {
        "model": state,
        "optimizer": saved.get("optimizer") or {},
        "model_args": {**args, "dropout": 0.0},
        "iter_num": it,
        "best_val_loss": float(best) if isinstance(best, int | float) else math.inf,
        "val_loss": val,
        "config": saved.get("config") if isinstance(saved.get("config"), dict) else {},
        "tokenizer": tokenizer,
    }
    if gelu != "exact":
        state_out[ckpt.GELU] = gelu
    nbytes = ckpt.save(out_dir / ckpt.LATEST, state_out)
    ckpt.mark_best(out_dir)
    ckpt.keep(out_dir, it, get_settings().keep_checkpoints)
    ckpt.write_model_json(out_dir, args, tokenizer, gelu)
    n_params = sum(t.numel() for k, t in state.items() if k != "lm_head.weight")  # tied to wte
    return {
        "iter": it,
        "val_loss": val,
        "bytes": nbytes,
        "n_params": n_params,
        "model_args": args,
        "tokenizer": tokenizer["kind"],
        "source": f"{source} ({filename})",
    }


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        saved = ckpt.load(path)
    except pickle.UnpicklingError as e:
        # torch's message is a page of advice; the one line that says what it met is this.
        m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if m:
            raise Refused(
                f"refused: the file holds more than tensors and plain values (it needs the code of {m.group(1)} "
                "to load, which is never run here)"
            ) from None
        raise Refused("not a PyTorch checkpoint (a pickle of something else, or another format)") from None
    except Exception as e:  # not a zip, a truncated file, another format: torch says it many ways
        raise Refused(f"not a PyTorch checkpoint: {type(e).__name__}: {str(e)[:200]}") from None
    if (
        not isinstance(saved, dict)
        or not isinstance(saved.get("model"), dict)
        or not isinstance(saved.get("model_args"), dict)
    ):
        raise Refused("not a nanoGPT checkpoint: it needs a 'model' state dict and 'model_args'")
    return saved


def _model_args(raw: dict[str, Any]) -> dict[str, Any]:
    try:
        args = {k: int(raw[k]) for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")}
    except (KeyError, TypeError, ValueError) as e:
        raise Refused(f"model_args lacks {e}") from None
    if not all(0 < v <= 1 << 20 for v in args.values()) or args["n_embd"] % args["n_head"]:
        raise Refused(f"model_args describe no GPT: {args}")
    return {**args, "bias": bool(raw.get("bias", True))}


def _vocabulary(path: Path | None, vocab_size: int) -> dict[str, Any]:
    """A character-level model's vocabulary: nanoGPT's meta.pkl (read without unpickling
    anything but plain values) or a meta.json ({"chars": "..."}, or our tokenizer meta)."""
    from gpt.prepare import PrepareError, char_tokenizer, read_meta_pkl

    if path is None:
        raise Refused(
            f"a vocabulary of {vocab_size} tokens is not GPT-2's: send the model's meta.pkl "
            "(or a meta.json with its characters) as the `vocab` field"
        )
    if path.stat().st_size > MAX_VOCAB_BYTES:
        raise Refused(f"the vocab file is over {MAX_VOCAB_BYTES} bytes")
    data = path.read_bytes()
    try:
        if data[:1] == b"{":
            chars = json.loads(data)["chars"]
            if not isinstance(chars, str):
                raise Refused("meta.json's 'chars' must be a string of the vocabulary's characters")
        else:
            chars = char_tokenizer(read_meta_pkl(data)).chars
    except PrepareError as e:
        raise Refused(str(e)) from None
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise Refused(f"the vocab file is neither nanoGPT's meta.pkl nor a meta.json with 'chars' ({e})") from None
    if len(chars) != vocab_size:
        raise Refused(f"the vocabulary has {len(chars)} characters, the model {vocab_size} token ids")
    return {"kind": "char", "chars": chars}


def _extract_hf(upload: Path, d: Path) -> Path:
    """config.json and model.safetensors from the tar, each a regular file inside it."""
    from gpt.prepare import PrepareError, member_name

    found: dict[str, Path] = {}
    try:
        with tarfile.open(upload, "r:*") as tar:
            for member in tar:
                try:
                    name = member_name(member)
                except PrepareError as e:
                    raise Refused(str(e)) from None
                if name == "pytorch_model.bin":
                    found["pickle"] = d
                if name not in hf.FILES or name in found:
                    continue
                src = tar.extractfile(member)
                assert src is not None
                with open(d / name, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                found[name] = d / name
    except tarfile.TarError as e:
        raise Refused(f"not a readable tar archive: {e}") from None
    if "model.safetensors" not in found and "pickle" in found:
        raise Refused("pytorch_model.bin is a pickle, which is not loaded here: save the model with safetensors")
    for f in hf.FILES:
        if f not in found:
            raise Refused(
                f"the archive has no {f} (a Hugging Face GPT-2 directory has config.json and model.safetensors)"
            )
    return d


@app.task(name=EXPORT_TASK)
def export_hf(request_id: str, checkpoint: str, out: str) -> None:
    """Write `out` (a tar.gz of a Hugging Face GPT-2 directory) from the checkpoint file."""
    reply = Reply(redis_client(), request_id)
    reply.send({"t": "accepted"}, now=True)
    try:
        nbytes = _export(Path(checkpoint), Path(out))
        reply.send({"t": "done", "bytes": nbytes})
    except FileNotFoundError:
        reply.send(_error(404, "that checkpoint is gone (a newer one replaced it): ask again"))
    except Exception as e:
        log.exception("export of %s failed", checkpoint)
        reply.send(_error(500, f"exporting failed on the worker: {type(e).__name__}: {e}"))
    finally:
        reply.flush()


def _export(path: Path, out: Path) -> int:
    from safetensors.torch import save

    saved = ckpt.load(path)
    args, tokenizer = saved["model_args"], saved.get("tokenizer") or {"kind": "gpt2"}
    bpe = tokenizer["kind"] == "gpt2"
    vocab = 50257 if bpe else args["vocab_size"]
    config, tensors = hf.to_hf(args, saved["model"], saved.get(ckpt.GELU, "exact"), vocab)
    files: dict[str, bytes] = {"config.json": json.dumps(config, indent=2).encode(), "model.safetensors": save(tensors)}
    if bpe:
        for name, src in hf.gpt2_tokenizer_files().items():
            files[name] = src.read_bytes()
        files["tokenizer_config.json"] = json.dumps(
            {"tokenizer_class": "GPT2Tokenizer", "model_max_length": args["block_size"], "bos_token": "<|endoftext|>",
             "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}, indent=2
        ).encode()  # fmt: skip
    else:
        files["vocab.json"] = json.dumps({"chars": tokenizer["chars"]}, ensure_ascii=False).encode()
        files["README.md"] = CHAR_README.encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, out)
    return out.stat().st_size


CHAR_README = """# A character-level GPT-2 (exported by gptjobs)

The model (config.json, model.safetensors) loads with transformers:

    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(".")

Its tokens are characters, not GPT-2's BPE: token id i is the i-th character of
vocab.json's "chars". To encode and decode:

    import json, torch
    chars = json.load(open("vocab.json"))["chars"]
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([[stoi[c] for c in "ROMEO:"]])
    out = model.generate(ids, max_new_tokens=100, do_sample=True, top_k=200)
    print("".join(chars[i] for i in out[0].tolist()))
"""

"""Sampling from a checkpoint: load once, then stream text as tokens are generated."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from gpt import checkpoint as ckpt
from gpt.model import GPT, GPTConfig
from gpt.tokenizers import StreamDecoder, Tokenizer, from_meta


@dataclass
class Loaded:
    model: GPT
    tokenizer: Tokenizer
    iter_num: int
    val_loss: float | None
    device: torch.device


def load(path: str | Path | IO[bytes], device: str = "cpu") -> Loaded:
    """A checkpoint's model in eval mode, with its tokenizer. An open file works too (a
    caller that must know which file it read stats the descriptor it loads from)."""
    state = ckpt.load(Path(path) if isinstance(path, str) else path, device)
    args = dict(state["model_args"], dropout=0.0)
    model = GPT(GPTConfig(**args))
    model.load_state_dict(state["model"])
    model.eval().to(device)
    # A nanoGPT checkpoint has no tokenizer key: it used GPT-2's BPE unless it had a meta.pkl.
    tok = from_meta(state.get("tokenizer") or {"kind": "gpt2"})
    return Loaded(model, tok, state["iter_num"], state.get("val_loss"), torch.device(device))


def stream(
    m: Loaded,
    prompt: str,
    *,
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = 200,
    seed: int | None = None,
    num_samples: int = 1,
    use_cache: bool = True,
) -> Iterator[list[str]]:
    """Yield, per generated token, the new text of each sample (possibly "" while a
    multi-byte character is incomplete). Same seed, same checkpoint -> same text."""
    ids = m.tokenizer.encode(prompt) or [0]  # an empty prompt starts from token 0 ("\n" in char vocabularies)
    x = torch.tensor([ids] * num_samples, dtype=torch.long, device=m.device)
    gen = torch.Generator(device=m.device)
    gen.manual_seed(seed) if seed is not None else gen.seed()
    decoders = [StreamDecoder(m.tokenizer) for _ in range(num_samples)]
    for nxt in m.model.generate_stream(x, max_new_tokens, temperature, top_k, gen, use_cache):
        toks = nxt.tolist()
        yield [d.push([t]) for d, t in zip(decoders, toks, strict=True)]
    tail = [d.flush() for d in decoders]
    if any(tail):
        yield tail


def generate(m: Loaded, prompt: str, **kw: Any) -> list[str]:
    """Whole samples (the generated text only, without the prompt)."""
    n = kw.get("num_samples", 1)
    out = [""] * n
    for pieces in stream(m, prompt, **kw):
        out = [o + p for o, p in zip(out, pieces, strict=True)]
    return out

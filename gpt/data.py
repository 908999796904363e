"""Datasets: a text, tokenized once into uint16 train/val arrays (90/10), then sampled.

The built-in text (tiny Shakespeare) ships inside the package; any UTF-8 text file works
the same way. Prepared arrays are cached under a directory keyed by the text's content
and the tokenizer, written atomically, so concurrent workers can share the cache. A
directory is taken as prepared already: one of gpt.prepare's (with its meta.json), or a
nanoGPT data directory (train.bin, val.bin, and meta.pkl for a character vocabulary).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt.config import BUILTIN_DATASETS
from gpt.tokenizers import ASSETS, CharTokenizer, GPT2Tokenizer, Tokenizer, from_meta

DEFAULT_CACHE = Path(os.path.expanduser("~/.cache/gptjobs"))


def source_path(dataset: str) -> Path:
    if dataset in BUILTIN_DATASETS:
        return ASSETS / f"{BUILTIN_DATASETS[dataset]['source']}.txt"
    return Path(dataset)


@dataclass
class Dataset:
    train: np.memmap
    val: np.memmap
    tokenizer: Tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.n_vocab

    def batch(
        self, split: str, batch_size: int, block_size: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows of block_size tokens (x) and the same shifted by one (y).

        Offsets come from torch's global RNG, as in nanoGPT, so a seed fixes them.
        """
        data = self.train if split == "train" else self.val
        if len(data) <= block_size:
            raise ValueError(f"the {split} split has {len(data)} tokens, fewer than block_size+1 ({block_size + 1})")
        ix = torch.randint(len(data) - block_size, (batch_size,)).numpy()
        # One fancy-indexing gather per batch, instead of a Python loop of slices.
        rows = ix[:, None] + np.arange(block_size + 1)
        xy = torch.from_numpy(data[rows].astype(np.int64))  # (B, T+1)
        x, y = xy[:, :-1], xy[:, 1:]
        if device.type == "cuda":
            # Pinned memory lets the copy overlap with compute.
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.contiguous().to(device), y.contiguous().to(device)


def open_prepared(d: Path) -> Dataset:
    """A directory of train.bin and val.bin, with the tokenizer its meta.json or meta.pkl names
    (neither: GPT-2's, as nanoGPT assumes)."""
    if (d / "meta.json").exists():
        tok = from_meta(json.loads((d / "meta.json").read_text())["tokenizer"])
    elif (d / "meta.pkl").exists():
        from gpt.prepare import char_tokenizer, read_meta_pkl

        tok = char_tokenizer(read_meta_pkl((d / "meta.pkl").read_bytes()))
    else:
        tok = GPT2Tokenizer()
    return Dataset(
        train=np.memmap(d / "train.bin", dtype=np.uint16, mode="r"),
        val=np.memmap(d / "val.bin", dtype=np.uint16, mode="r"),
        tokenizer=tok,
    )


def prepare(dataset: str, tokenizer: str, cache_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Tokenize the dataset's text (once; later calls read the cache) and open it; a prepared
    directory is opened as it is."""
    if dataset not in BUILTIN_DATASETS and Path(dataset).is_dir():
        return open_prepared(Path(dataset))
    src = source_path(dataset)
    raw = src.read_bytes()
    key = hashlib.sha256(raw + tokenizer.encode()).hexdigest()[:16]
    out = Path(cache_dir or DEFAULT_CACHE) / "datasets" / f"{src.stem}-{tokenizer}-{key}"
    meta_path = out / "meta.json"
    if not meta_path.exists():
        text = raw.decode("utf-8")
        tok: Tokenizer = CharTokenizer.from_text(text) if tokenizer == "char" else GPT2Tokenizer()
        if tok.n_vocab > 65535:
            raise ValueError(f"{tok.n_vocab} distinct tokens do not fit in uint16")
        n = len(text)
        out.mkdir(parents=True, exist_ok=True)
        for split, part in (("train", text[: int(n * 0.9)]), ("val", text[int(n * 0.9) :])):
            _atomic_write(out / f"{split}.bin", np.array(tok.encode(part), dtype=np.uint16).tobytes())
        meta: dict[str, Any] = {"tokenizer": tok.meta(), "source": str(src.name)}
        _atomic_write(meta_path, json.dumps(meta).encode())  # last: marks the directory complete
    return open_prepared(out)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise

"""Checkpoints: written atomically, readable by nanoGPT's own sample.py.

Keys nanoGPT reads: model, optimizer, model_args, iter_num, best_val_loss, config. Ours on
top: tokenizer (so sampling needs no dataset directory), val_loss, and `resume` (RNG and
data-sampler state) so that a resumed run repeats an uninterrupted one exactly.
Everything stored is a tensor or a plain value, so `torch.load(weights_only=True)` (the
default since torch 2.6, and what nanoGPT's sample.py calls) loads it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

LATEST = "ckpt.pt"  # the name nanoGPT's sample.py and init_from='resume' look for
BEST = "best.pt"


def save(path: Path, state: dict[str, Any]) -> int:
    """Write state to path atomically (a reader sees the old file or the new, never half).

    Returns the size in bytes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the rename must not land before the bytes do
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path.stat().st_size


def mark_best(out_dir: Path) -> None:
    """Make best.pt the checkpoint now in ckpt.pt (a hard link: no second copy on disk)."""
    tmp = out_dir / f".{BEST}.link"
    tmp.unlink(missing_ok=True)
    try:
        os.link(out_dir / LATEST, tmp)
    except OSError:  # a filesystem without hard links
        import shutil

        shutil.copyfile(out_dir / LATEST, tmp)
    os.replace(tmp, out_dir / BEST)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # torch.compile wraps the module and prefixes every key; store the plain names.
    return {k.removeprefix("_orig_mod."): v for k, v in model.state_dict().items()}

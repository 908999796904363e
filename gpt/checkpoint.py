"""Checkpoints: written atomically, readable by nanoGPT's own sample.py.

Keys nanoGPT reads: model, optimizer, model_args, iter_num, best_val_loss, config. Ours on
top: tokenizer (so sampling needs no dataset directory), val_loss, and `resume` (RNG and
data-sampler state) so that a resumed run repeats an uninterrupted one exactly.
Everything stored is a tensor or a plain value, so `torch.load(weights_only=True)` (the
default since torch 2.6, and what nanoGPT's sample.py calls) loads it.

Files in a run's out_dir: ckpt.pt (the latest), best.pt, and ckpt-<iter>.pt for the
checkpoints kept by iteration (`keep`). All three are hard links to one file where they name
the same checkpoint. The naming helpers import no torch: the API lists and serves these files.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

LATEST = "ckpt.pt"  # the name nanoGPT's sample.py and init_from='resume' look for
PARENT = "parent.pt"  # a run's starting weights from another run's checkpoint (the same file, linked)
BEST = "best.pt"
_BY_ITER = re.compile(r"ckpt-(\d+)\.pt")


def save(path: Path, state: dict[str, Any], before_replace: Callable[[], None] | None = None) -> int:
    """Write state to path atomically (a reader sees the old file or the new, never half).

    before_replace runs once the bytes are on disk, just before they take path's name; if it
    raises, path is left as it was (a worker that lost its run must not overwrite the file
    the run's next attempt resumes from). Returns the size in bytes.
    """
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the rename must not land before the bytes do
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):  # a new attempt's remove_partial got to it first
            os.unlink(tmp)
        raise
    return path.stat().st_size


def remove_partial(out_dir: Path) -> list[Path]:
    """Delete what a save killed midway left (its temp files); returns them. Only for the
    run's one trainer to call, at its start: a save in progress writes one of these."""
    gone = []
    for p in out_dir.glob(f".{LATEST}.*.tmp"):
        p.unlink(missing_ok=True)
        gone.append(p)
    return gone


def _link(src: Path, dst: Path) -> None:
    """Atomically make dst name the file src names (a hard link: no second copy on disk)."""
    tmp = dst.with_name(f".{dst.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def mark_best(out_dir: Path) -> None:
    """Make best.pt the checkpoint now in ckpt.pt."""
    _link(out_dir / LATEST, out_dir / BEST)


def by_iter(out_dir: Path, iter_num: int) -> Path:
    return out_dir / f"ckpt-{iter_num}.pt"


def kept(out_dir: Path) -> dict[int, Path]:
    """The checkpoints kept by iteration, {iter: path}, in iteration order."""
    found = {}
    if out_dir.is_dir():
        for p in out_dir.iterdir():
            if m := _BY_ITER.fullmatch(p.name):
                found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def keep(out_dir: Path, iter_num: int, keep_last: int) -> None:
    """Name the checkpoint now in ckpt.pt by its iteration, then forget the names of all but
    the newest keep_last of them, except the best's: disk use stays bounded however long a
    run trains, and any of the names left can be sampled or downloaded later."""
    _link(out_dir / LATEST, by_iter(out_dir, iter_num))
    best = out_dir / BEST
    for path in list(kept(out_dir).values())[:-keep_last]:
        if best.exists() and os.path.samefile(path, best):
            continue
        path.unlink(missing_ok=True)


def resolve(out_dir: Path, which: str | int) -> Path:
    """The file for "latest", "best" (the latest while no eval has improved yet) or an iter."""
    if isinstance(which, int):
        return by_iter(out_dir, which)
    if which == "best" and (out_dir / BEST).exists():
        return out_dir / BEST
    return out_dir / LATEST


def load(path: Path | IO[bytes], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint, ours or nanoGPT's, as plain tensors and values (weights_only: nothing in
    it is unpickled but those), its model keys without torch.compile's prefix (nanoGPT
    saves a compiled model's state as it is)."""
    import torch

    saved = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(saved, dict) and isinstance(saved.get("model"), dict):
        saved["model"] = {k.removeprefix("_orig_mod."): v for k, v in saved["model"].items()}
    return saved


# Keys beside nanoGPT's that a checkpoint of ours may hold: its tokenizer (so sampling needs no
# dataset), the val loss it was saved at, the GELU its weights were trained with (nanoGPT's
# GPTConfig takes no such argument, so it is not a model_arg), and exact-resume state.
GELU = "gelu"
MODEL = "model.json"  # beside the checkpoints: what the weights are, readable without torch


def write_model_json(out_dir: Path, model_args: dict[str, Any], tokenizer: dict[str, Any], gelu: str) -> None:
    """The architecture, tokenizer and GELU of a run's weights, for whoever must know them
    without loading a checkpoint (the API checks a child run's config against them)."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    body = {"model_args": {k: v for k, v in model_args.items() if k != "dropout"}, "tokenizer": tokenizer, "gelu": gelu}
    tmp = out_dir / f".{MODEL}.tmp"
    tmp.write_text(json.dumps(body))
    os.replace(tmp, out_dir / MODEL)


def read_model_json(out_dir: Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads((out_dir / MODEL).read_text())
    except (OSError, ValueError):
        return None


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # torch.compile wraps the module and prefixes every key; store the plain names.
    return {k.removeprefix("_orig_mod."): v for k, v in model.state_dict().items()}

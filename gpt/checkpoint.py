"""Checkpoints: written atomically, readable by nanoGPT's own sample.py.

Keys nanoGPT reads: model, optimizer, model_args, iter_num, best_val_loss, config. Ours on
top: tokenizer (so sampling needs no dataset directory), val_loss, and `resume` (RNG and
data-sampler state) so that a resumed run repeats an uninterrupted one exactly.
Everything stored is a tensor or a plain value, so `torch.load(weights_only=True)` (the
default since torch 2.6, and what nanoGPT's sample.py calls) loads it.

A run's checkpoints live in its folder of an artifact store (gpt/store.py: a directory, as
nanoGPT's out_dir, or an object store's prefix): ckpt.pt (the latest), best.pt, and
ckpt-<iter>.pt for the checkpoints kept by iteration (`keep`). The names are copies of one
another where they name the same checkpoint (hard links on a disk, server-side copies on a
store); checkpoints.json says which iterations latest and best are, since an object store
cannot tell copies apart by identity. The naming helpers import no torch: the API lists and
serves these objects.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from gpt.store import Store

if TYPE_CHECKING:
    import torch

LATEST = "ckpt.pt"  # the name nanoGPT's sample.py and init_from='resume' look for
PARENT = "parent.pt"  # a run's starting weights from another run's checkpoint (a copy)
BEST = "best.pt"
NAMES = "checkpoints.json"  # {"latest": iter, "best": iter}
_BY_ITER = re.compile(r"ckpt-(\d+)\.pt")

Where = Store | str | os.PathLike[str]  # a run's folder: a store, or a directory or URL naming one


def at(where: Where) -> Store:
    return where if isinstance(where, Store) else Store(where)


def save(
    where: Where, state: dict[str, Any], before_replace: Callable[[], None] | None = None, name: str = LATEST
) -> int:
    """Write state as the checkpoint `name` (ckpt.pt), atomically: a reader sees the old one
    or the new, never half. before_replace runs once the bytes are ready, just before they
    take the name; if it raises, the name keeps what it had (a worker that lost its run must
    not overwrite the checkpoint the run's next attempt resumes from). Returns the size."""
    import torch

    store = at(where)
    with store.staged(name, before_replace) as tmp:
        with open(tmp, "wb") as f:
            torch.save(state, f)
        size = tmp.stat().st_size
    if name == LATEST and isinstance(state.get("iter_num"), int):
        _names(store, latest=state["iter_num"])
    return size


def _names(store: Store, **changes: int | None) -> dict[str, Any]:
    try:
        names = json.loads(store.read_bytes(NAMES))
    except (OSError, ValueError):
        names = {}
    if changes:
        names.update(changes)
        store.put_bytes(json.dumps(names).encode(), NAMES)
    return names


def remove_partial(where: Where) -> list[Path]:
    """Delete what a save killed midway left in a directory (its temp files); returns them.
    Only for the run's one trainer to call, at its start: a save in progress writes one of
    these. (An object store shows nothing of an upload that never completed.)"""
    d = at(where).local_path(LATEST)
    gone = []
    for p in d.parent.glob(f".{LATEST}.*.tmp") if d is not None else ():
        p.unlink(missing_ok=True)
        gone.append(p)
    return gone


def mark_best(where: Where) -> None:
    """Make best.pt the checkpoint now in ckpt.pt."""
    store = at(where)
    store.copy(LATEST, BEST)
    _names(store, best=_names(store).get("latest"))


def by_iter(iter_num: int) -> str:
    return f"ckpt-{iter_num}.pt"


def kept(where: Where) -> dict[int, str]:
    """The checkpoints kept by iteration, {iter: name}, in iteration order."""
    found = {int(m.group(1)): n for n in at(where).list("") if (m := _BY_ITER.fullmatch(n))}
    return dict(sorted(found.items()))


def iter_of(where: Where, name: str) -> int | None:
    """The iteration the checkpoint `name` was saved at; None when it is not there."""
    store = at(where)
    if m := _BY_ITER.fullmatch(name):
        return int(m.group(1)) if store.exists(name) else None
    recorded = _names(store).get({LATEST: "latest", BEST: "best"}.get(name, ""))
    if isinstance(recorded, int):
        return recorded
    info = store.info(name)  # a directory without checkpoints.json: a kept name of the same file
    if info is not None:
        for it, n in kept(store).items():
            if (other := store.info(n)) is not None and other.version == info.version:
                return it
    return None


def keep(where: Where, iter_num: int, keep_last: int) -> None:
    """Name the checkpoint now in ckpt.pt by its iteration, then forget the names of all but
    the newest keep_last of them, except the best's: storage stays bounded however long a
    run trains, and any of the names left can be sampled or downloaded later."""
    store = at(where)
    store.copy(LATEST, by_iter(iter_num))
    best = iter_of(store, BEST) if store.exists(BEST) else None
    for it, name in list(kept(store).items())[:-keep_last]:
        if it != best:
            store.delete(name)


def resolve(where: Where, which: str | int) -> str:
    """The name for "latest", "best" (the latest while no eval has improved yet) or an iter."""
    if isinstance(which, int):
        return by_iter(which)
    if which == "best" and at(where).exists(BEST):
        return BEST
    return LATEST


def load(path: Path | IO[bytes], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint, ours or nanoGPT's, as plain tensors and values (weights_only: nothing in
    it is unpickled but those), its model keys without torch.compile's prefix (nanoGPT
    saves a compiled model's state as it is)."""
    import torch

    saved = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(saved, dict) and isinstance(saved.get("model"), dict):
        saved["model"] = {k.removeprefix("_orig_mod."): v for k, v in saved["model"].items()}
    return saved


def load_from(where: Where, name: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """load() of the checkpoint `name` in a run's folder, read straight from its store."""
    with at(where).open(name) as f:
        return load(f, map_location)


# Keys beside nanoGPT's that a checkpoint of ours may hold: its tokenizer (so sampling needs no
# dataset), the val loss it was saved at, the GELU its weights were trained with (nanoGPT's
# GPTConfig takes no such argument, so it is not a model_arg), and exact-resume state.
GELU = "gelu"
MODEL = "model.json"  # beside the checkpoints: what the weights are, readable without torch


def write_model_json(where: Where, model_args: dict[str, Any], tokenizer: dict[str, Any], gelu: str) -> None:
    """The architecture, tokenizer and GELU of a run's weights, for whoever must know them
    without loading a checkpoint (the API checks a child run's config against them)."""
    body = {"model_args": {k: v for k, v in model_args.items() if k != "dropout"}, "tokenizer": tokenizer, "gelu": gelu}
    at(where).put_bytes(json.dumps(body).encode(), MODEL)


def read_model_json(where: Where) -> dict[str, Any] | None:
    try:
        return json.loads(at(where).read_bytes(MODEL))
    except (OSError, ValueError):
        return None


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # torch.compile wraps the module and prefixes every key; store the plain names.
    return {k.removeprefix("_orig_mod."): v for k, v in model.state_dict().items()}

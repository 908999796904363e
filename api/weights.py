"""Weights as the API sees them, without torch: whether a pretrained GPT-2 can be had, and
another run's checkpoint as a starting point (init_from run:<id>[@best|latest|<iter>]).

The checks here read `model.json` beside a run's checkpoints (what the weights are: written
by the engine with its first checkpoint, and by an import); the weights themselves are only
ever read by workers. Blocking: call from a thread in async code.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from api.db import Database
from api.deps import load_run_or_none
from api.settings import Settings
from gpt import checkpoint as ckpt
from gpt import hf
from gpt.config import Start

RUN_REF = re.compile(r"run:(?P<id>[^@\s]+)(?:@(?P<which>best|latest|\d{1,12}))?")
PROBE_S = 60.0  # how long a "can be downloaded" answer holds before the Hub is asked again

_probes: dict[str, tuple[float, str | None]] = {}


def pretrained_unavailable(name: str) -> str | None:
    """Why a pretrained GPT-2 cannot be had here (None: it is cached, or the Hub answers and
    a worker will download it at the run's start)."""
    if hf.cached(name) is not None:
        return None
    if hf.offline():
        return hf.how_to_get(name)
    at, why = _probes.get(name, (0.0, None))
    if time.monotonic() - at < PROBE_S:
        return why
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        get_hf_file_metadata(hf_hub_url(hf.repo_of(name), "config.json"), timeout=5)
        why = None
    except Exception as e:  # no network, a proxy, the Hub down: the same to a user
        why = f"{hf.how_to_get(name)} (the Hub did not answer: {type(e).__name__})"
    _probes[name] = (time.monotonic(), why)
    return why


@dataclass
class Parent:
    run_id: str
    iter: int
    path: Path  # the checkpoint file, under the parent run's directory


class ParentLookup:
    """init_from run:<id>[@which] for make_config: the caller's own run's checkpoint as a
    gpt.config.Start, or ValueError saying why not. Keeps what it found."""

    def __init__(self, db: Database, settings: Settings, owner: str | None):
        self.db, self.settings, self.owner = db, settings, owner
        self.found: Parent | None = None

    def __call__(self, ref: str) -> Start:
        m = RUN_REF.fullmatch(ref)
        if m is None:
            raise ValueError(f"{ref!r} is not run:<id>, run:<id>@best, run:<id>@latest or run:<id>@<iter>")
        run_id, which = m["id"], m["which"] or "latest"
        run = load_run_or_none(self.db, run_id, self.owner)
        if run is None:
            raise ValueError(f"no run {run_id!r} of yours to start from")
        out_dir = self.settings.runs_dir() / run_id
        path = ckpt.resolve(out_dir, int(which) if which.isdigit() else which)
        model = ckpt.read_model_json(out_dir)
        if not path.exists() or model is None:
            kept = ", ".join(map(str, ckpt.kept(out_dir))) or "none"
            raise ValueError(f"run {run_id} has no checkpoint {which} (kept: {kept}; it is {run.status})")
        it = _iter_of(out_dir, path)
        self.found = Parent(run_id, it, path)
        return Start(model["model_args"], model["tokenizer"], f"run {run_id} at iter {it}")


def _iter_of(out_dir: Path, path: Path) -> int:
    """The iteration a checkpoint file was saved at: the kept name (ckpt-<iter>.pt) that
    names the same file."""
    st = path.stat()
    for it, p in ckpt.kept(out_dir).items():
        try:
            if os.path.samestat(st, p.stat()):
                return it
        except FileNotFoundError:
            continue
    m = re.fullmatch(r"ckpt-(\d+)\.pt", path.name)
    if m:
        return int(m.group(1))
    raise ValueError(f"the checkpoint {path.name} of that run is not one of its kept checkpoints")


def link_parent(settings: Settings, parent: Parent, run_id: str) -> None:
    """The parent's checkpoint, hard-linked into the child's directory: it stays whatever the
    parent's keep_checkpoints prunes before the child starts."""
    d = settings.runs_dir() / run_id
    d.mkdir(parents=True, exist_ok=True)
    try:
        os.link(parent.path, d / ckpt.PARENT)
    except OSError:  # a filesystem without hard links
        import shutil

        shutil.copyfile(parent.path, d / ckpt.PARENT)

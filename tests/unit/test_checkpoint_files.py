"""Checkpoints kept by iteration: hard links to ckpt.pt in a directory, bounded, never the
best; which iterations latest and best are, with checkpoints.json (as an object store needs)
and without it (a directory written by nanoGPT or an older gptjobs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpt import checkpoint as ckpt


def _write(out_dir: Path, iter_num: int, best: bool, keep_last: int, names: bool = False) -> None:
    # What the engine and the worker do at a checkpoint: replace ckpt.pt, maybe mark it best,
    # then name it by its iter.
    tmp = out_dir / ".tmp"
    tmp.write_bytes(f"checkpoint {iter_num}".encode())
    os.replace(tmp, out_dir / ckpt.LATEST)
    if names:  # as ckpt.save records it
        ckpt._names(ckpt.at(out_dir), latest=iter_num)
    if best:
        ckpt.mark_best(out_dir)
    ckpt.keep(out_dir, iter_num, keep_last)


@pytest.mark.parametrize("names", [True, False], ids=["checkpoints.json", "inodes"])
def test_keep_names_checkpoints_by_iter_and_bounds_them(tmp_path: Path, names: bool) -> None:
    for it, best in [(100, True), (200, True), (300, False), (400, False), (500, False)]:
        _write(tmp_path, it, best, keep_last=2, names=names)
    kept = {it: tmp_path / n for it, n in ckpt.kept(tmp_path).items()}
    assert list(kept) == [200, 400, 500]  # the newest two, and the best however old
    assert {it: p.read_bytes() for it, p in kept.items()} == {it: f"checkpoint {it}".encode() for it in kept}
    assert os.path.samefile(kept[200], tmp_path / ckpt.BEST)
    assert os.path.samefile(kept[500], tmp_path / ckpt.LATEST)  # a link, not a copy
    assert ckpt.iter_of(tmp_path, ckpt.BEST) == 200 and ckpt.iter_of(tmp_path, ckpt.LATEST) == 500

    assert ckpt.resolve(tmp_path, "latest") == ckpt.LATEST
    assert ckpt.resolve(tmp_path, "best") == ckpt.BEST
    assert ckpt.resolve(tmp_path, 400) == "ckpt-400.pt"
    assert ckpt.iter_of(tmp_path, ckpt.resolve(tmp_path, 300)) is None


def test_best_falls_back_to_latest_and_an_empty_dir_keeps_nothing(tmp_path: Path) -> None:
    assert ckpt.kept(tmp_path / "missing") == {}
    _write(tmp_path, 7, best=False, keep_last=5)  # e.g. a cancel before the first eval
    assert ckpt.resolve(tmp_path, "best") == ckpt.LATEST
    assert list(ckpt.kept(tmp_path)) == [7]


def test_a_save_refused_before_the_rename_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    import pytest
    import torch

    path = tmp_path / ckpt.LATEST
    ckpt.save(tmp_path, {"iter_num": 1})

    class Fenced(Exception):
        pass

    def refuse() -> None:
        raise Fenced

    with pytest.raises(Fenced):
        ckpt.save(tmp_path, {"iter_num": 2}, before_replace=refuse)
    assert torch.load(path)["iter_num"] == 1 and ckpt.iter_of(tmp_path, ckpt.LATEST) == 1
    assert sorted(os.listdir(tmp_path)) == [ckpt.NAMES, ckpt.LATEST]  # no temp file left behind
    (tmp_path / f".{ckpt.LATEST}.abc123.tmp").write_bytes(b"half a checkpoint")  # a save killed midway
    assert [p.name for p in ckpt.remove_partial(tmp_path)] == [f".{ckpt.LATEST}.abc123.tmp"]
    assert sorted(os.listdir(tmp_path)) == [ckpt.NAMES, ckpt.LATEST]

"""/runs/{id}/checkpoints: the checkpoints a run keeps, and each one's file to download.

The files are nanoGPT's (gpt/checkpoint.py names them): put one in an out_dir as ckpt.pt and
nanoGPT's own sample.py loads it.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import FileResponse
from sqlalchemy import select

from api.db import CURRENT, E
from api.deps import NOT_FOUND, DbDep, Owner, RunId, SettingsDep, load_run
from api.schemas import CheckpointInfo, CheckpointList, Problem
from gpt import checkpoint as ckpt  # its file naming; it imports torch only to read or write one

router = APIRouter(prefix="/runs", tags=["checkpoints"])


def _ident(path: os.PathLike[str] | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


@router.get("/{run_id}/checkpoints", response_model=CheckpointList, responses=NOT_FOUND)
def list_checkpoints(run_id: RunId, db: DbDep, settings: SettingsDep, owner: Owner) -> CheckpointList:
    """The checkpoints kept on disk (the newest GPTJOBS_KEEP_CHECKPOINTS, and the best)."""
    load_run(db, run_id, owner)
    out_dir = settings.runs_dir() / run_id
    with db.session() as s:
        rows = s.execute(
            select(E.iter, E.body).where(E.run_id == run_id, E.type == "checkpoint", CURRENT).order_by(E.seq)
        ).all()
    events = {it: json.loads(body) for it, body in rows}  # a later event for the same iter wins
    best, latest = _ident(out_dir / ckpt.BEST), _ident(out_dir / ckpt.LATEST)
    out = []
    for it, path in ckpt.kept(out_dir).items():
        try:
            st = path.stat()
        except FileNotFoundError:  # pruned just now
            continue
        ev = events.get(it, {})
        ident = (st.st_dev, st.st_ino)
        out.append(
            CheckpointInfo(
                iter=it,
                val_loss=ev.get("val_loss"),
                best=ident == best,
                latest=ident == latest,
                bytes=st.st_size,
                created_at=datetime.fromtimestamp(ev.get("ts", st.st_mtime), UTC),
            )
        )
    return CheckpointList(checkpoints=out)


@router.get(
    "/{run_id}/checkpoints/{which}",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the checkpoint, in nanoGPT's format"},
        404: {"model": Problem, "description": "no such run, or no such checkpoint kept"},
    },
)
def download_checkpoint(
    run_id: RunId,
    which: Annotated[str, Path(pattern=r"^(latest|best|\d{1,12})$", description='an iter, "latest" or "best"')],
    db: DbDep,
    settings: SettingsDep,
    owner: Owner,
) -> FileResponse:
    """One checkpoint file, named ckpt.pt: put it in an out_dir and nanoGPT's sample.py loads it."""
    load_run(db, run_id, owner)
    out_dir = settings.runs_dir() / run_id
    path = ckpt.resolve(out_dir, int(which) if which.isdigit() else which)
    if not path.exists():
        kept = ", ".join(map(str, ckpt.kept(out_dir))) or "none"
        raise HTTPException(404, f"run {run_id} has no checkpoint {which} (kept: {kept})")
    return FileResponse(path, media_type="application/octet-stream", filename="ckpt.pt")

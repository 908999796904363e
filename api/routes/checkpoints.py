"""/runs/{id}/checkpoints: the checkpoints a run keeps, and each one to download, as nanoGPT's
ckpt.pt (gpt/checkpoint.py names the files) or converted to a Hugging Face GPT-2 directory
(by a sampling worker: the API holds no torch; kept beside the run's checkpoints).
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import FileResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.db import CURRENT, Database, E
from api.deps import NOT_FOUND, CeleryDep, DbDep, Owner, RedisDep, RunId, SettingsDep, load_run
from api.queue import EXPORT_TASK, SAMPLE_QUEUE
from api.rpc import Answer, WorkerError
from api.schemas import CheckpointInfo, CheckpointList, Problem
from api.settings import Settings
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


def _checkpoint_file(db: Database, settings: Settings, run_id: str, which: str, owner: str | None) -> FilePath:
    load_run(db, run_id, owner)
    out_dir = settings.runs_dir() / run_id
    path = ckpt.resolve(out_dir, int(which) if which.isdigit() else which)
    if not path.exists():
        kept = ", ".join(map(str, ckpt.kept(out_dir))) or "none"
        raise HTTPException(404, f"run {run_id} has no checkpoint {which} (kept: {kept})")
    return path


def _export_name(settings: Settings, run_id: str, path: FilePath) -> FilePath:
    """Where the Hugging Face export of this very file is kept: named by the file's identity,
    so a newer checkpoint under the same name is exported anew."""
    st = path.stat()
    return settings.runs_dir() / run_id / "export" / f"hf-{st.st_ino}-{st.st_mtime_ns}-{st.st_size}.tar.gz"


@router.get(
    "/{run_id}/checkpoints/{which}",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/octet-stream": {}, "application/gzip": {}},
            "description": "nanoGPT's ckpt.pt, or (format=hf) a tar.gz of a Hugging Face GPT-2 directory",
        },
        404: {"model": Problem, "description": "no such run, or no such checkpoint kept"},
        503: {"model": Problem, "description": "format=hf: no sampling worker took the export in time"},
    },
)
async def download_checkpoint(
    run_id: RunId,
    which: Annotated[str, Path(pattern=r"^(latest|best|\d{1,12})$", description='an iter, "latest" or "best"')],
    db: DbDep,
    settings: SettingsDep,
    r: RedisDep,
    celery: CeleryDep,
    owner: Owner,
    format: Annotated[
        Literal["nanogpt", "hf"],
        Query(
            description="nanogpt: ckpt.pt for nanoGPT's sample.py; hf: a directory for transformers' from_pretrained"
        ),
    ] = "nanogpt",
) -> FileResponse:
    """One checkpoint. As nanoGPT's `ckpt.pt` (put it in an out_dir and nanoGPT's sample.py
    loads it), or as a tar.gz of a Hugging Face GPT-2 directory (config.json,
    model.safetensors, and GPT-2's tokenizer files, or a character vocabulary and a README
    saying how to use it) that `GPT2LMHeadModel.from_pretrained` loads once unpacked."""
    path = await run_in_threadpool(_checkpoint_file, db, settings, run_id, which, owner)
    if format == "nanogpt":
        return FileResponse(path, media_type="application/octet-stream", filename="ckpt.pt")
    out = await run_in_threadpool(_export_name, settings, run_id, path)
    if not out.exists():  # made once per checkpoint file, by a worker (it needs torch)
        request_id = secrets.token_hex(8)
        try:
            celery.send_task(EXPORT_TASK, args=[request_id, str(path.resolve()), str(out)], queue=SAMPLE_QUEUE)
        except Exception as e:
            raise HTTPException(503, f"could not queue the export (is Redis up?): {e}") from None
        try:
            await Answer(r, request_id, settings, answer_timeout_s=settings.weights_timeout_s).get()
        except WorkerError as e:
            raise e.http() from None
    name = f"{run_id}-{which}-hf.tar.gz"
    return FileResponse(out, media_type="application/gzip", filename=name)

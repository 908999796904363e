"""/runs/{id}/checkpoints: the checkpoints a run keeps, and each one to download, as nanoGPT's
ckpt.pt (gpt/checkpoint.py names them) or converted to a Hugging Face GPT-2 directory (by a
sampling worker: the API holds no torch; kept beside the run's checkpoints). Read from the
artifact store: a directory, or an object store streamed through (or presigned).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import select
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from api.db import CURRENT, Database, E
from api.deps import NOT_FOUND, CeleryDep, DbDep, Owner, RedisDep, RunId, SettingsDep, load_run
from api.queue import EXPORT_TASK, SAMPLE_QUEUE
from api.rpc import Answer, WorkerError
from api.schemas import CheckpointInfo, CheckpointList, Problem
from api.settings import Settings
from gpt import checkpoint as ckpt  # its file naming; it imports torch only to read or write one
from gpt.store import Info, Store

router = APIRouter(prefix="/runs", tags=["checkpoints"])


@router.get("/{run_id}/checkpoints", response_model=CheckpointList, responses=NOT_FOUND)
def list_checkpoints(run_id: RunId, db: DbDep, settings: SettingsDep, owner: Owner) -> CheckpointList:
    """The checkpoints kept (the newest GPTJOBS_KEEP_CHECKPOINTS, and the best)."""
    load_run(db, run_id, owner)
    out = settings.run_store(run_id)
    with db.session() as s:
        rows = s.execute(
            select(E.iter, E.body).where(E.run_id == run_id, E.type == "checkpoint", CURRENT).order_by(E.seq)
        ).all()
    events = {it: json.loads(body) for it, body in rows}  # a later event for the same iter wins
    best = ckpt.iter_of(out, ckpt.BEST) if out.exists(ckpt.BEST) else None
    latest = ckpt.iter_of(out, ckpt.LATEST)
    found = []
    for it, name in ckpt.kept(out).items():
        info = out.info(name)
        if info is None:  # pruned just now
            continue
        ev = events.get(it, {})
        found.append(
            CheckpointInfo(
                iter=it,
                val_loss=ev.get("val_loss"),
                best=it == best,
                latest=it == latest,
                bytes=info.size,
                created_at=datetime.fromtimestamp(ev.get("ts", info.mtime), UTC),
            )
        )
    return CheckpointList(checkpoints=found)


def _checkpoint(db: Database, settings: Settings, run_id: str, which: str, owner: str | None) -> tuple[str, Info]:
    load_run(db, run_id, owner)
    out = settings.run_store(run_id)
    name = ckpt.resolve(out, int(which) if which.isdigit() else which)
    info = out.info(name)
    if info is None:
        kept = ", ".join(map(str, ckpt.kept(out))) or "none"
        raise HTTPException(404, f"run {run_id} has no checkpoint {which} (kept: {kept})")
    return name, info


def _serve(store: Store, name: str, media_type: str, filename: str, settings: Settings) -> Response:
    """The object as a download: the file itself from a directory, else streamed from the
    store a block at a time (never the whole object in memory), or a redirect to a presigned
    URL where GPTJOBS_PRESIGN_DOWNLOADS asks for one."""
    if (p := store.local_path(name)) is not None:
        return FileResponse(p, media_type=media_type, filename=filename)
    if settings.presign_downloads and (url := store.presign(name, settings.presign_expires_s)):
        return RedirectResponse(url, status_code=307)
    info = store.info(name)
    if info is None:
        raise HTTPException(404, "that checkpoint is gone (a newer one replaced it): ask again")
    headers = {"content-length": str(info.size), "content-disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(iterate_in_threadpool(store.chunks(name)), media_type=media_type, headers=headers)


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
) -> Response:
    """One checkpoint. As nanoGPT's `ckpt.pt` (put it in an out_dir and nanoGPT's sample.py
    loads it), or as a tar.gz of a Hugging Face GPT-2 directory (config.json,
    model.safetensors, and GPT-2's tokenizer files, or a character vocabulary and a README
    saying how to use it) that `GPT2LMHeadModel.from_pretrained` loads once unpacked."""
    name, info = await run_in_threadpool(_checkpoint, db, settings, run_id, which, owner)
    out = settings.run_store(run_id)
    if format == "nanogpt":
        return await run_in_threadpool(_serve, out, name, "application/octet-stream", "ckpt.pt", settings)
    # Made once per checkpoint content, by a worker (it needs torch); named by its version.
    export = f"export/hf-{hashlib.sha256(info.version.encode()).hexdigest()[:20]}.tar.gz"
    if not await run_in_threadpool(out.exists, export):
        request_id = secrets.token_hex(8)
        try:
            args = [request_id, run_id, name, info.version, export]
            celery.send_task(EXPORT_TASK, args=args, queue=SAMPLE_QUEUE)
        except Exception as e:
            raise HTTPException(503, f"could not queue the export (is Redis up?): {e}") from None
        try:
            await Answer(r, request_id, settings, answer_timeout_s=settings.weights_timeout_s).get()
        except WorkerError as e:
            raise e.http() from None
    return await run_in_threadpool(_serve, out, export, "application/gzip", f"{run_id}-{which}-hf.tar.gz", settings)

"""POST /runs/import: weights trained elsewhere become a run of yours, `succeeded` with one
checkpoint, so that everything a finished run offers works on them: sampling, downloading
(also as a Hugging Face directory), and starting another run from them (init_from run:<id>).

The file is a nanoGPT `ckpt.pt`, or a Hugging Face GPT-2 directory (config.json +
model.safetensors) in a tar. A sampling worker reads and checks it (the API holds no torch)
and answers as it answers a sampling request; a file it refuses is a 422 saying why.
"""

from __future__ import annotations

import math
import secrets
import shutil
import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from api import datasets
from api.db import Database, Run, dumps, event_row, insert_events
from api.deps import CeleryDep, DbDep, Owner, RedisDep, SettingsDep
from api.lifecycle import SUCCEEDED
from api.queue import IMPORT_TASK, SAMPLE_QUEUE
from api.rpc import Answer, WorkerError
from api.schemas import Problem, RunPublic, check_label
from api.settings import Settings
from gpt.config import TrainConfig

router = APIRouter(prefix="/runs", tags=["runs"])


@router.post(
    "/import",
    status_code=201,
    response_model=RunPublic,
    responses={
        413: {"model": Problem, "description": "the file is over GPTJOBS_MAX_UPLOAD_BYTES"},
        422: {"model": Problem, "description": "not a checkpoint, wrong shapes, a pickle with code, a bad tar..."},
        503: {"model": Problem, "description": "no sampling worker took the import in time, or Redis is down"},
    },
)
async def import_run(
    db: DbDep,
    settings: SettingsDep,
    r: RedisDep,
    celery: CeleryDep,
    owner: Owner,
    file: Annotated[UploadFile, File(description="a nanoGPT ckpt.pt, or a tar of a Hugging Face GPT-2 directory")],
    vocab: Annotated[
        UploadFile | None, File(description="a character-level model's meta.pkl (nanoGPT's) or meta.json")
    ] = None,
    name: Annotated[str | None, Form(max_length=200, description="a label for the run")] = None,
) -> RunPublic:
    """Import weights as a finished run (201). `curl -F file=@out/ckpt.pt -F vocab=@data/
    shakespeare_char/meta.pkl localhost:8000/runs/import`."""
    label = check_label(name, ("body", "name"))
    run_id, request_id = secrets.token_hex(8), secrets.token_hex(8)
    upload, vocab_path = await run_in_threadpool(_store, settings, request_id, file, vocab)
    try:
        args = [request_id, run_id, str(upload), file.filename or "upload", vocab_path and str(vocab_path)]
        celery.send_task(IMPORT_TASK, args=args, queue=SAMPLE_QUEUE, expires=settings.sample_pickup_timeout_s)
    except Exception as e:
        await run_in_threadpool(shutil.rmtree, upload.parent, True)
        raise WorkerError(503, f"could not queue the import (is Redis up?): {e}").http() from None
    try:
        done = await Answer(r, request_id, settings, answer_timeout_s=settings.weights_timeout_s).get()
    except WorkerError as e:
        await run_in_threadpool(shutil.rmtree, upload.parent, True)
        raise e.http() from None
    run = await run_in_threadpool(_record, db, settings, owner, run_id, label, done)
    return RunPublic.of(run)


def _store(settings: Settings, request_id: str, file: UploadFile, vocab: UploadFile | None) -> tuple[Any, Any]:
    """The upload (and its vocabulary) on disk where the worker reads them."""
    d = datasets.upload_dir(settings, f"import-{request_id}")
    d.mkdir(parents=True, exist_ok=True)
    datasets.copy_hashing(file.file, d / "weights", settings.max_upload_bytes)
    if vocab is None:
        return d / "weights", None
    datasets.copy_hashing(vocab.file, d / "vocab", settings.max_upload_bytes)
    return d / "weights", d / "vocab"


def _record(
    db: Database, settings: Settings, owner: str | None, run_id: str, name: str | None, done: dict[str, Any]
) -> Run:
    """The run, succeeded at once, with its checkpoint event and the status event saying
    where it came from: its history reads like a run's that trained here."""
    args, now = done["model_args"], time.time()
    config = {**TrainConfig().to_dict(), **{k: args[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "bias")}}
    config |= {"dropout": 0.0, "tokenizer": done["tokenizer"], "dataset": "imported", "out_dir": f"runs/{run_id}"}
    config["max_iters"] = done["iter"]
    val = f", val loss {done['val_loss']:.4f}" if done["val_loss"] is not None else ""
    reason = f"imported from {done['source']}: {done['n_params'] / 1e6:.2f}M parameters, at iter {done['iter']}{val}"
    run = Run(
        id=run_id, name=name, status=SUCCEEDED, reason=reason, config=config, owner=owner,
        created_at=now, started_at=now, finished_at=now,
    )  # fmt: skip
    path = str((settings.runs_dir() / run_id / "ckpt.pt").resolve())
    checkpoint = {"type": "checkpoint", "iter": done["iter"], "val_loss": done["val_loss"], "best": True}
    checkpoint |= {"ckpt_ms": 0.0, "bytes": done["bytes"], "path": path}
    status = {"type": "status", "status": SUCCEEDED, "reason": reason, "iter": done["iter"]}
    events = [
        {"run_id": run_id, "seq": i, "attempt": 0, "ts": now, **ev} for i, ev in enumerate([checkpoint, status], 1)
    ]
    for ev in events:
        for k, v in ev.items():
            if isinstance(v, float) and not math.isfinite(v):
                ev[k] = None
    with db.transaction() as s:
        s.add(run)
        s.flush()
        insert_events(s, [event_row(ev, dumps(ev)) for ev in events])
    return run

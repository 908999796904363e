"""/datasets: a corpus of one's own, uploaded in one request (multipart), listed, read, deleted.

Large files come through /uploads (api/routes/uploads.py) and end here as the same kind of
dataset. A dataset is `preparing` until the prepare worker has made its token arrays; runs
name it in `config.dataset`, by id or by its name. Another owner's dataset is a 404.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated

from celery import Celery
from fastapi import APIRouter, File, Form, Path, Response, UploadFile
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api import datasets
from api.db import D, Database, Dataset, Upload
from api.deps import CeleryDep, DbDep, Owner, SettingsDep
from api.schemas import DatasetList, DatasetPublic, Problem
from api.settings import Settings

router = APIRouter(prefix="/datasets", tags=["datasets"])

DatasetId = Annotated[
    str,
    Path(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f/]+$", description="its id, or your name for it"),
]
NOT_FOUND: dict[int | str, dict] = {404: {"model": Problem, "description": "no dataset with this id"}}


@router.post(
    "",
    status_code=202,
    response_model=DatasetPublic,
    responses={
        409: {"model": Problem, "description": "you already have a dataset of this name"},
        413: {"model": Problem, "description": "over GPTJOBS_MAX_UPLOAD_BYTES or GPTJOBS_MAX_STORED_BYTES"},
        429: {"model": Problem, "description": "over GPTJOBS_MAX_DATASETS"},
        503: {"model": Problem, "description": "the queue (Redis) is unreachable"},
    },
)
async def create_dataset(
    db: DbDep,
    settings: SettingsDep,
    celery: CeleryDep,
    owner: Owner,
    file: Annotated[
        UploadFile, File(description="the corpus: text, JSON Lines, gzip/zstd of either, or a nanoGPT tar")
    ],
    name: Annotated[str, Form(max_length=200, description="your name for it: runs may say config.dataset=<name>")],
    tokenizer: Annotated[str | None, Form(description="char or gpt2 (default); a nanoGPT archive's own")] = None,
    format: Annotated[str | None, Form(description="text, jsonl or nanogpt; default: told from the file")] = None,
    val_fraction: Annotated[float | None, Form(gt=0, lt=1, description="the share held out for val (0.1)")] = None,
    text_field: Annotated[str | None, Form(description="JSON Lines: the field holding each document (text)")] = None,
) -> DatasetPublic:
    """A dataset from one file sent in this request (`curl -F file=@corpus.txt -F name=...`);
    answers 202 while it is prepared. For large files, /uploads resumes after a drop."""
    opts = datasets.Options(name, tokenizer, format, val_fraction, text_field)
    ds = await run_in_threadpool(_store_and_create, db, settings, celery, owner, opts, file)
    return DatasetPublic.of(ds)


def _store_and_create(
    db: Database, settings: Settings, celery: Celery, owner: str | None, opts: datasets.Options, file: UploadFile
) -> Dataset:
    upload_id = secrets.token_hex(8)
    now = time.time()
    with db.transaction() as s:  # the bytes count as an open upload until the dataset is made
        datasets.check_name_free(s, owner, opts.name)  # before the bytes are copied, not after
        datasets.check_room(s, owner, settings, file.size or 0, new_dataset=True, upload_id=upload_id)
        s.add(
            Upload(
                id=upload_id,
                owner=owner,
                filename=file.filename or "upload",
                bytes=file.size or 0,
                part_bytes=settings.upload_part_bytes,
                created_at=now,
                touched_at=now,
            )
        )
    size, sha256 = datasets.UploadBytes(settings, upload_id).put_whole(file.file, settings.max_upload_bytes)
    return datasets.create(
        db, settings, celery, owner, opts, upload_id=upload_id, filename=file.filename, size=size, sha256=sha256
    )


@router.get("", response_model=DatasetList)
def list_datasets(db: DbDep, owner: Owner) -> DatasetList:
    """Your datasets, newest first."""
    with db.session() as s:
        rows = s.execute(select(Dataset).where(datasets.mine(owner)).order_by(D.created_at.desc(), D.id)).scalars()
        return DatasetList(datasets=[DatasetPublic.of(ds) for ds in rows])


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=NOT_FOUND)
def get_dataset(dataset_id: DatasetId, db: DbDep, owner: Owner) -> DatasetPublic:
    """The dataset; while it is `preparing`, `progress` says how far (bytes, tokens, tokens/s, ETA)."""
    return DatasetPublic.of(datasets.load(db, owner, dataset_id))


@router.delete(
    "/{dataset_id}",
    status_code=204,
    responses={**NOT_FOUND, 409: {"model": Problem, "description": "a queued or running run trains on it"}},
)
def delete_dataset(dataset_id: DatasetId, db: DbDep, settings: SettingsDep, owner: Owner) -> Response:
    """Delete it and its files (unless a dataset of the same bytes, yours or anyone's, shares them)."""
    datasets.remove(db, settings, owner, dataset_id)
    return Response(status_code=204)

"""/uploads: a large file in parts, resumable, the way OpenAI's Uploads API works.

    POST /uploads                   declare the file (name, size, sha256 if known)
    PUT  /uploads/{id}/parts/{n}    the raw bytes of part n (1-based), in any order, at once
                                    or not; sending a part again replaces it
    GET  /uploads/{id}              which parts arrived: a client resumes by sending the rest
    POST /uploads/{id}/complete     check the size (and sha256), make the dataset

In a directory the upload is one file, uploads/<id>/data, of the declared size from the
start: part n is written in place at (n - 1) * part_bytes as its body arrives (never held
whole), its sha256 computed on the way, so that complete has nothing to join, only the whole
to hash. On an object store each part is an object of its own (api/datasets.UploadBytes). A part
counts as arrived once all its bytes are written: until then (and while one is being sent
again) it is not listed, so a dropped connection leaves it to be sent again. Every part but
the last is exactly part_bytes long. An upload nobody touched for GPTJOBS_UPLOAD_TTL_S is
removed (api/reaper.py).
"""

from __future__ import annotations

import math
import secrets
import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from sqlalchemy import delete, select, update
from starlette.concurrency import run_in_threadpool

from api import datasets
from api.db import UP, Database, U, Upload, UploadPart
from api.deps import CeleryDep, DbDep, Owner, SettingsDep
from api.limits import invalid
from api.schemas import DatasetPublic, Problem, UploadComplete, UploadCreate, UploadPublic, iso
from api.schemas import UploadPart as PartInfo
from api.settings import Settings

router = APIRouter(prefix="/uploads", tags=["uploads"])

UploadId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[0-9A-Za-z_-]+$", description="the upload's id")]
NOT_FOUND: dict[int | str, dict] = {404: {"model": Problem, "description": "no upload with this id"}}
WRITE_BYTES = 1 << 20  # a part's bytes go to disk in writes of about this size
MAX_PARTS = 100_000


def _load(db: Database, upload_id: str, owner: str | None) -> Upload:
    with db.session() as s:
        up = s.get(Upload, upload_id)
    if up is None or (owner is not None and up.owner != owner):
        raise HTTPException(404, f"upload {upload_id!r} not found")
    return up


def _public(db: Database, settings: Settings, up: Upload) -> UploadPublic:
    with db.session() as s:
        parts = s.execute(select(UP.n, UP.bytes, UP.sha256).where(UP.upload_id == up.id).order_by(UP.n)).all()
    return UploadPublic(
        id=up.id,
        filename=up.filename,
        bytes=up.bytes,
        sha256=up.sha256,
        part_bytes=up.part_bytes,
        parts_expected=math.ceil(up.bytes / up.part_bytes),
        parts=[PartInfo(n=n, bytes=b, sha256=h) for n, b, h in parts],
        received_bytes=sum(b for _, b, _ in parts),
        status=up.status,
        dataset_id=up.dataset_id,
        expires_at=iso(up.touched_at + settings.upload_ttl_s) if up.status == "open" else None,
    )


@router.post(
    "",
    status_code=201,
    response_model=UploadPublic,
    responses={413: {"model": Problem, "description": "over GPTJOBS_MAX_UPLOAD_BYTES or GPTJOBS_MAX_STORED_BYTES"}},
)
def create_upload(body: UploadCreate, db: DbDep, settings: SettingsDep, owner: Owner) -> UploadPublic:
    """Declare a file of `bytes` bytes; send it as parts of at most `part_bytes` each."""
    if math.ceil(body.bytes / settings.upload_part_bytes) > MAX_PARTS:
        raise HTTPException(413, f"{body.bytes} bytes is more than {MAX_PARTS} parts of {settings.upload_part_bytes}")
    now = time.time()
    up = Upload(
        id=secrets.token_hex(8),
        owner=owner,
        filename=body.filename,
        bytes=body.bytes,
        sha256=body.sha256,
        part_bytes=settings.upload_part_bytes,
        created_at=now,
        touched_at=now,
    )
    with db.transaction() as s:
        datasets.check_room(s, owner, settings, body.bytes, new_dataset=False)
        s.add(up)
    datasets.UploadBytes(settings, up.id, body.bytes, up.part_bytes).create()
    return _public(db, settings, up)


@router.get("/{upload_id}", response_model=UploadPublic, responses=NOT_FOUND)
def get_upload(upload_id: UploadId, db: DbDep, settings: SettingsDep, owner: Owner) -> UploadPublic:
    """The upload, with the parts that have arrived (number, bytes, sha256)."""
    return _public(db, settings, _load(db, upload_id, owner))


@router.put(
    "/{upload_id}/parts/{n}",
    response_model=PartInfo,
    responses={
        **NOT_FOUND,
        409: {"model": Problem, "description": "the upload is completed already"},
        413: {"model": Problem, "description": "the part is over part_bytes"},
    },
)
async def put_part(
    upload_id: UploadId,
    n: Annotated[int, Path(ge=1, le=MAX_PARTS, description="the part's number, from 1")],
    request: Request,
    db: DbDep,
    owner: Owner,
    settings: SettingsDep,
) -> PartInfo:
    """Part n's raw bytes (Content-Type application/octet-stream); a resent part replaces the old."""
    up = await run_in_threadpool(_load, db, upload_id, owner)
    if up.status != "open":
        raise HTTPException(409, f"upload {upload_id} is {up.status}; start a new one")
    expected = math.ceil(up.bytes / up.part_bytes)
    if n > expected:
        raise invalid(("path", "n"), f"the upload has {expected} parts of at most {up.part_bytes} bytes", n)
    length = min(up.part_bytes, up.bytes - (n - 1) * up.part_bytes)  # the last part: the rest
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) != length:
        raise _wrong_length(n, length, int(declared), up)
    # Not arrived while it is being written: a drop midway leaves it to be sent again.
    await run_in_threadpool(_forget_part, db, upload_id, n)
    files = datasets.UploadBytes(settings, upload_id, up.bytes, up.part_bytes)
    part = await run_in_threadpool(files.part, n)
    size, buf, whole = 0, bytearray(), False
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > length:
                raise _wrong_length(n, length, size, up)
            buf += chunk
            if len(buf) >= WRITE_BYTES:
                await run_in_threadpool(part.write, bytes(buf))
                buf.clear()
        await run_in_threadpool(part.write, bytes(buf))
        whole = size == length
    finally:
        digest = await run_in_threadpool(part.close, whole)
    if size != length:
        raise _wrong_length(n, length, size, up)
    await run_in_threadpool(_record_part, db, upload_id, n, size, digest)
    return PartInfo(n=n, bytes=size, sha256=digest)


def _wrong_length(n: int, length: int, got: int, up: Upload) -> HTTPException:
    if got > up.part_bytes:
        return HTTPException(413, f"part {n} is over part_bytes ({up.part_bytes} bytes)")
    whole = f"the upload is {up.bytes} bytes in parts of {up.part_bytes}"
    return HTTPException(422, f"part {n} must be {length} bytes ({whole}); got {got}")


def _forget_part(db: Database, upload_id: str, n: int) -> None:
    with db.transaction() as s:
        s.execute(delete(UploadPart).where(UP.upload_id == upload_id, UP.n == n))


def _record_part(db: Database, upload_id: str, n: int, size: int, digest: str) -> None:
    with db.transaction() as s:
        s.execute(delete(UploadPart).where(UP.upload_id == upload_id, UP.n == n))
        s.add(UploadPart(upload_id=upload_id, n=n, bytes=size, sha256=digest))
        s.execute(update(Upload).where(U.id == upload_id).values(touched_at=time.time()))


@router.post(
    "/{upload_id}/complete",
    status_code=202,
    response_model=DatasetPublic,
    responses={
        **NOT_FOUND,
        409: {"model": Problem, "description": "parts are missing, or the dataset's name is taken"},
        503: {"model": Problem, "description": "the queue (Redis) is unreachable"},
    },
)
def complete_upload(
    upload_id: UploadId, body: UploadComplete, db: DbDep, settings: SettingsDep, celery: CeleryDep, owner: Owner
) -> DatasetPublic:
    """Check that parts 1..N have all arrived (each was checked for its length as it came) and
    that the file hashes to the sha256 (given here or at POST /uploads), then make the dataset
    and prepare it (202). Completing again answers with the same dataset."""
    up = _load(db, upload_id, owner)
    if up.status == "completed" and up.dataset_id:
        return DatasetPublic.of(datasets.load(db, owner, up.dataset_id))
    opts = datasets.Options(body.name, body.tokenizer, body.format, body.val_fraction, body.text_field)
    expected_sha = body.sha256 or up.sha256
    if body.sha256 and up.sha256 and body.sha256 != up.sha256:
        raise invalid(
            ("body", "sha256"), f"differs from the sha256 declared at POST /uploads ({up.sha256})", body.sha256
        )
    with db.session() as s:
        datasets.check_name_free(s, owner, opts.name)
        parts = set(s.execute(select(UP.n).where(UP.upload_id == upload_id)).scalars())
    want = math.ceil(up.bytes / up.part_bytes)
    missing = [i for i in range(1, want + 1) if i not in parts]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise HTTPException(409, f"parts missing: {shown} (of {want}); send them, then complete again")
    digest = datasets.UploadBytes(settings, upload_id, up.bytes, up.part_bytes).sha256()
    if expected_sha and digest != expected_sha:
        raise invalid(("body", "sha256"), f"the parts' bytes hash to {digest}, not the sha256 expected", expected_sha)
    ds = datasets.create(
        db, settings, celery, owner, opts, upload_id=upload_id, filename=up.filename, size=up.bytes, sha256=digest
    )
    return DatasetPublic.of(ds)

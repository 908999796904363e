"""Datasets as the API keeps them: made from an upload's bytes, shared when they are the same,
counted against their owner's limits, looked up by a run's `config.dataset`, deleted.

Blocking (database and disk): the routes call these in a thread. Preparing itself is the
prepare worker's (worker/prepare.py); this module only queues it.

Objects, in the artifact store (gpt/store.py: the data directory, or an object store):
    uploads/<upload id>/data       the whole upload, until its dataset is prepared (in a
                                   directory, the parts of a resumable one are written in place)
    uploads/<upload id>/part-<n>   on an object store, each part of a resumable upload
    datasets/<content key>/        a prepared dataset: train.bin, val.bin, meta.json (last)
The content key is a hash of the bytes' sha256 and the options that change the tokens, so
the same bytes prepared the same way are prepared once, and shared by every dataset (of
any owner) made from them; a prepared directory is removed with the last of those.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from celery import Celery
from fastapi import HTTPException
from sqlalchemy import delete, func, select, update
from sqlmodel import Session

from api.db import D, Database, Dataset, R, U, Upload
from api.lifecycle import ACTIVE, FAILED, PREPARING, READY
from api.limits import invalid
from api.queue import PREPARE_QUEUE, PREPARE_TASK
from api.settings import Settings
from gpt.config import BUILTIN_DATASETS, Corpus

COPY_BYTES = 4 << 20
TOKENIZERS = ("char", "gpt2")
FORMATS = ("text", "jsonl", "nanogpt")
ID = re.compile(r"[0-9a-f]{16}")


class Options:
    """How to prepare an upload: what the request said, checked; a bad value is a 422 naming it."""

    def __init__(
        self,
        name: str,
        tokenizer: str | None,
        fmt: str | None,
        val_fraction: float | None,
        text_field: str | None,
        loc: str = "body",
    ):
        self.name = check_name(name, loc)
        if tokenizer is not None and tokenizer not in TOKENIZERS:
            raise _invalid(loc, "tokenizer", f"must be one of {', '.join(TOKENIZERS)}", tokenizer)
        if fmt is not None and fmt not in FORMATS:
            raise _invalid(loc, "format", f"must be one of {', '.join(FORMATS)} (or left out: told from the file)", fmt)
        if val_fraction is not None and not 0.0 < val_fraction < 1.0:
            raise _invalid(loc, "val_fraction", "must be between 0 and 1, both excluded", val_fraction)
        if text_field is not None and not 0 < len(text_field) <= 200:
            raise _invalid(loc, "text_field", "must be 1 to 200 characters", text_field)
        # None: GPT-2's, unless the file is a nanoGPT archive with a meta.pkl (then its characters).
        self.tokenizer, self.format = tokenizer, fmt
        self.val_fraction = 0.1 if val_fraction is None else val_fraction
        self.text_field = text_field or "text"

    def content_key(self, sha256: str) -> str:
        parts = [sha256, self.format or "", self.tokenizer or "", repr(self.val_fraction), self.text_field]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _invalid(loc: str, field: str, msg: str, value: Any) -> Exception:
    return invalid((loc, field), msg, value)


def check_name(name: str, loc: str = "body") -> str:
    name = name.strip()
    if not 0 < len(name) <= 200:
        raise _invalid(loc, "name", "must be 1 to 200 characters", name)
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise _invalid(loc, "name", "must not contain control characters", name)
    if name in BUILTIN_DATASETS:
        raise _invalid(loc, "name", f"{name!r} is a built-in dataset's name; choose another", name)
    if ID.fullmatch(name):
        raise _invalid(loc, "name", "must not look like a dataset id (16 hex digits)", name)
    return name


def mine(owner: str | None) -> Any:
    return D.owner.is_(None) if owner is None else D.owner == owner


# --- storing bytes ---------------------------------------------------------------------------


def copy_hashing(src: IO[bytes], dst: Path, limit: int) -> tuple[int, str]:
    """src's bytes into dst (replaced whole, or not at all); (bytes, sha256). Over limit: 413."""
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}")
    h, n = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            while block := src.read(COPY_BYTES):
                n += len(block)
                if n > limit:
                    raise HTTPException(413, f"the file is over {limit} bytes (GPTJOBS_MAX_UPLOAD_BYTES)")
                h.update(block)
                out.write(block)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return n, h.hexdigest()


class UploadBytes:
    """Where an upload's bytes go and come back from. In a directory: one file of the declared
    size from the start, each part written in place at its offset (nothing to join at the
    end). On an object store, which cannot write into an object: one object per part, read
    back in order as one stream."""

    def __init__(self, settings: Settings, upload_id: str, size: int = 0, part_bytes: int = 1):
        self.store, self.prefix = settings.store(), f"uploads/{upload_id}"
        self.size, self.part_bytes = size, part_bytes
        self.file = self.store.local_path(f"{self.prefix}/data")

    def create(self) -> None:
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.file, "wb") as f:
                f.truncate(self.size)  # sparse: the parts fill it in, each at its place

    def part(self, n: int) -> PartWriter:
        if self.file is not None:
            return PartWriter(self.file, (n - 1) * self.part_bytes)
        return PartWriter(None, 0, lambda tmp: self.store.put_file(tmp, f"{self.prefix}/part-{n}"))

    def put_whole(self, src: IO[bytes], limit: int) -> tuple[int, str]:
        """The whole upload from src (one request); (bytes, sha256). Over limit: 413."""
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            return copy_hashing(src, self.file, limit)
        with self.store.staged(f"{self.prefix}/data") as tmp:
            return copy_hashing(src, tmp, limit)

    def chunks(self) -> Iterator[bytes]:
        """The upload's bytes, in order."""
        if self.store.exists(f"{self.prefix}/data"):
            yield from self.store.chunks(f"{self.prefix}/data", COPY_BYTES)
            return
        for n in range(1, math.ceil(self.size / self.part_bytes) + 1):
            yield from self.store.chunks(f"{self.prefix}/part-{n}", COPY_BYTES)

    def sha256(self) -> str:
        h = hashlib.sha256()
        for block in self.chunks():
            h.update(block)
        return h.hexdigest()

    def local(self, scratch: Path) -> Path:
        """The upload as one local file: itself in a directory, else joined into scratch."""
        if self.file is not None:
            return self.file
        scratch.parent.mkdir(parents=True, exist_ok=True)
        with open(scratch, "wb") as out:
            for block in self.chunks():
                out.write(block)
        return scratch

    def remove(self) -> None:
        self.store.delete_tree(self.prefix)


class PartWriter:
    """A part's bytes, hashed on the way: written in place into the upload's file, or into a
    temp file that `publish` stores once the part is whole."""

    def __init__(self, path: Path | None, offset: int, publish: Callable[[Path], object] | None = None):
        if path is not None:
            self.f: IO[bytes] = open(path, "r+b")  # noqa: SIM115 (closed in close())
            self.f.seek(offset)
            self.tmp: Path | None = None
        else:
            fd, name = tempfile.mkstemp(prefix="gptjobs-part-")
            self.f, self.tmp = os.fdopen(fd, "wb"), Path(name)
        self.publish = publish
        self.h = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.h.update(data)
        self.f.write(data)

    def close(self, complete: bool = True) -> str:
        """The part's sha256; a complete part not written in place is stored now."""
        self.f.close()
        try:
            if complete and self.tmp is not None and self.publish is not None:
                self.publish(self.tmp)
        finally:
            if self.tmp is not None:
                self.tmp.unlink(missing_ok=True)
        return self.h.hexdigest()


def prepared(content_key: str) -> str:
    """The prepared dataset's folder in the store (complete once its meta.json is there)."""
    return f"datasets/{content_key}"


# --- limits ----------------------------------------------------------------------------------


def check_name_free(s: Session, owner: str | None, name: str) -> None:
    if s.execute(select(D.id).where(mine(owner), D.name == name)).first() is not None:
        raise HTTPException(409, f"you already have a dataset named {name!r}")


def check_room(
    s: Session, owner: str | None, settings: Settings, new_bytes: int, new_dataset: bool, upload_id: str | None = None
) -> None:
    """An owner's stored bytes (their datasets, and their uploads still open but `upload_id`,
    whose bytes these are) and their number of datasets stay under the server's limits."""
    if new_bytes > settings.max_upload_bytes:
        raise HTTPException(
            413,
            f"{new_bytes} bytes is over the limit of {settings.max_upload_bytes} per upload (GPTJOBS_MAX_UPLOAD_BYTES)",
        )
    who = "open-mode caller" if owner is None else f"owner {owner!r}"
    if new_dataset:
        n = s.execute(select(func.count()).where(mine(owner))).scalar_one()
        if n >= settings.max_datasets:
            raise HTTPException(
                429, f"limit reached: {n} datasets for {who}, at most {settings.max_datasets} (GPTJOBS_MAX_DATASETS)"
            )
    stored = s.execute(select(func.coalesce(func.sum(D.bytes), 0)).where(mine(owner), D.status != FAILED)).scalar_one()
    owner_uploads = U.owner.is_(None) if owner is None else U.owner == owner
    pending = s.execute(
        select(func.coalesce(func.sum(U.bytes), 0)).where(owner_uploads, U.status == "open", U.id != (upload_id or ""))
    ).scalar_one()
    if stored + pending + new_bytes > settings.max_stored_bytes:
        raise HTTPException(
            413,
            f"limit reached: {who} stores {stored + pending} bytes; {new_bytes} more is over "
            f"{settings.max_stored_bytes} (GPTJOBS_MAX_STORED_BYTES): delete a dataset first",
        )


# --- making one ------------------------------------------------------------------------------


def create(
    db: Database,
    settings: Settings,
    celery: Celery,
    owner: str | None,
    opts: Options,
    *,
    upload_id: str,
    filename: str | None,
    size: int,
    sha256: str,
) -> Dataset:
    """A dataset from the bytes at uploads/<upload_id>/data: `ready` at once when the same
    bytes were prepared the same way before (for anyone), else `preparing`, queued."""
    key = opts.content_key(sha256)
    now = time.time()
    ds = Dataset(
        id=secrets.token_hex(8),
        owner=owner,
        name=opts.name,
        status=PREPARING,
        format=opts.format,
        tokenizer=opts.tokenizer,
        val_fraction=opts.val_fraction,
        text_field=opts.text_field,
        filename=filename,
        bytes=size,
        sha256=sha256,
        content_key=key,
        upload_id=upload_id,
        created_at=now,
    )
    with db.transaction() as s:
        check_name_free(s, owner, opts.name)
        check_room(s, owner, settings, size, new_dataset=True, upload_id=upload_id)
        done = s.execute(select(Dataset).where(D.content_key == key, D.status == READY).limit(1)).scalar()
        if done is not None and settings.store().exists(f"{prepared(key)}/meta.json"):
            for field in ("format", "tokenizer", "train_tokens", "val_tokens", "vocab_size", "documents", "preview"):
                setattr(ds, field, getattr(done, field))
            ds.status, ds.finished_at, ds.upload_id = READY, now, None
        s.add(ds)
        s.execute(update(Upload).where(U.id == upload_id).values(status="completed", dataset_id=ds.id))
    if ds.status == READY:
        UploadBytes(settings, upload_id).remove()  # prepared already
        return ds
    try:
        celery.send_task(PREPARE_TASK, args=[ds.id, 0], queue=PREPARE_QUEUE)
    except Exception as e:  # the dataset stays `preparing`: the reaper sends it again
        raise HTTPException(503, f"could not queue the preparation (is Redis up?): {e}") from None
    return ds


# --- finding one -----------------------------------------------------------------------------


def find(s: Session, owner: str | None, ref: str) -> Dataset | None:
    """The owner's dataset with this id, or else with this name."""
    by_id = s.execute(select(Dataset).where(mine(owner), D.id == ref)).scalar()
    return by_id or s.execute(select(Dataset).where(mine(owner), D.name == ref)).scalar()


def load(db: Database, owner: str | None, ref: str) -> Dataset:
    """The owner's dataset by id or name; another owner's is the same 404 as none."""
    with db.session() as s:
        ds = find(s, owner, ref)
    if ds is None:
        raise HTTPException(404, f"dataset {ref!r} not found")
    return ds


def not_ready(ds: Dataset) -> str:
    """Why a run cannot train on it yet (or at all)."""
    if ds.status == FAILED:
        return f"dataset {ds.name!r} failed to prepare: {ds.reason}"
    p = ds.progress or {}
    done = p.get("bytes_done") or 0
    where = f"{done / ds.bytes:.0%} of its {ds.bytes} bytes, {p.get('tokens') or 0} tokens so far" if ds.bytes else ""
    return f"dataset {ds.name!r} is still preparing ({where}); try again when it is ready".replace(" ()", "")


# --- removing one ----------------------------------------------------------------------------


def remove(db: Database, settings: Settings, owner: str | None, ref: str) -> None:
    """409 while a queued or running run trains on it; else the row, and its files unless
    another dataset (of any owner) shares them."""
    with db.transaction() as s:
        ds = find(s, owner, ref)
        if ds is None:
            raise HTTPException(404, f"dataset {ref!r} not found")
        users = s.execute(select(R.id).where(R.dataset_id == ds.id, R.status.in_(sorted(ACTIVE))).limit(5)).scalars()
        if busy := list(users):
            raise HTTPException(409, f"dataset {ds.name!r} is in use by runs {', '.join(busy)} (queued or running)")
        s.execute(delete(Dataset).where(D.id == ds.id))
        shared = s.execute(select(D.id).where(D.content_key == ds.content_key).limit(1)).first() is not None
    if ds.upload_id:
        UploadBytes(settings, ds.upload_id).remove()
    if not shared:
        settings.store().delete_tree(prepared(ds.content_key))


# --- what a run records ------------------------------------------------------------------------


class Lookup:
    """config.dataset, when it is not built in, as the caller's own dataset (by id or name):
    a gpt.config.Corpus for make_config, or ValueError saying why it cannot be trained on.
    Keeps what it found, for the run to record."""

    def __init__(self, db: Database, owner: str | None):
        self.db, self.owner = db, owner
        self.found: Dataset | None = None

    def __call__(self, ref: str) -> Corpus:
        with self.db.session() as s:
            ds = find(s, self.owner, ref)
        if ds is None:
            known = ", ".join(BUILTIN_DATASETS)
            raise ValueError(f"unknown dataset {ref!r}: not one of yours (by id or name), nor built in ({known})")
        if ds.status != READY:
            raise ValueError(not_ready(ds))
        self.found = ds
        assert ds.tokenizer and ds.vocab_size is not None  # set when it became ready
        return Corpus(ds.tokenizer, ds.vocab_size, ds.train_tokens or 0, ds.val_tokens or 0)


def meta(settings: Settings, ds: Dataset) -> dict[str, Any]:
    return json.loads(settings.store().read_bytes(f"{prepared(ds.content_key)}/meta.json"))


def waiting_uploads(s: Session, older_than: float) -> list[str]:
    """Open uploads untouched since older_than (abandoned: GPTJOBS_UPLOAD_TTL_S)."""
    return list(s.execute(select(U.id).where(U.status == "open", U.touched_at < older_than)).scalars())


def expire_uploads(db: Database, settings: Settings) -> list[str]:
    """Remove abandoned uploads, their parts and their rows; returns their ids."""
    with db.transaction() as s:
        gone = waiting_uploads(s, time.time() - settings.upload_ttl_s)
        if gone:
            s.execute(delete(Upload).where(U.id.in_(gone)))
    for upload_id in gone:
        UploadBytes(settings, upload_id).remove()
    return gone

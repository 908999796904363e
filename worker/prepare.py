"""The prepare task, on the `prepare` queue, so that no training run or sampling request ever
waits behind a 10 GB tokenization: a dataset's upload becomes its token arrays.

One attempt at a time holds the dataset (the claim bumps `attempt`; a lease in Redis says
the worker is alive, as a run's does, and the API's reaper sends the task again when it
lapses). The upload is read from the artifact store (joined into one local file first when
that is an object store); everything is written into a local temp directory and put in
place, meta.json last, only while the database still says this attempt owns the dataset, so
a worker killed midway leaves nothing that anything reads: the next attempt starts over.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from typing import Any

from sqlalchemy import update

from api import datasets
from api.db import D, Database, Dataset, Upload
from api.lifecycle import DATASETS, FAILED, PREPARING, READY, claim_preparation
from api.queue import PREPARE_TASK
from api.settings import get_settings, usable_cores
from worker.app import app, database, redis_client
from worker.lease import Lease, LeaseLost

log = logging.getLogger(__name__)

PROGRESS_WRITE_S = 1.0  # the dataset row's progress is written at most this often


def _mine(ds: Any, attempt: int) -> list[Any]:
    return [D.id == ds.id, D.status == PREPARING, D.attempt == attempt]


@app.task(name=PREPARE_TASK)
def prepare(dataset_id: str, sent_for: int) -> None:
    """Prepare the dataset, if it is still `preparing` at attempt `sent_for` (else another
    delivery or attempt has it, and this one does nothing)."""
    from gpt.prepare import PrepareError, Progress, detect_format
    from gpt.prepare import prepare as run_prepare

    settings, db = get_settings(), database()
    with db.transaction() as s:
        ds = s.get(Dataset, dataset_id) if claim_preparation(s, dataset_id, sent_for) else None
    if ds is None:
        log.info("dataset %s: not waiting at attempt %d any more, skipping this delivery", dataset_id, sent_for)
        return
    attempt = ds.attempt
    lease = Lease.for_dataset(redis_client(), dataset_id, attempt, settings.lease_ttl_s)
    lease.acquire()
    store, target = settings.store(), datasets.prepared(ds.content_key)
    scratch = settings.cache() / "prepare"
    work = scratch / f".{dataset_id}.{attempt}.tmp"
    upload = datasets.UploadBytes(settings, ds.upload_id or "", ds.bytes or 0, _part_bytes(db, ds.upload_id))
    joined = scratch / f".{dataset_id}.{attempt}.upload"
    ended = False
    try:
        if not store.exists(f"{target}/meta.json"):
            for lost in scratch.glob(f".{dataset_id}.*"):  # what lost attempts left
                shutil.rmtree(lost, ignore_errors=True) if lost.is_dir() else lost.unlink(missing_ok=True)
            work.mkdir(parents=True)
            src = upload.local(joined)
            fmt = ds.format or detect_format(src, ds.filename)
            written = [0.0]

            def progress(p: Progress) -> None:
                lease.check()  # raises LeaseLost: this attempt stops, writing nothing more
                now = time.monotonic()
                if now - written[0] >= PROGRESS_WRITE_S:
                    written[0] = now
                    with db.transaction() as s:
                        s.execute(update(Dataset).where(*_mine(ds, attempt)).values(progress=asdict(p)))

            log.info("dataset %s: attempt %d preparing %s (%s, %s)", dataset_id, attempt, src, fmt, ds.tokenizer)
            t0 = time.perf_counter()
            done = run_prepare(
                src,
                work,
                fmt=fmt,
                tokenizer=ds.tokenizer,
                val_fraction=ds.val_fraction,
                text_field=ds.text_field,
                max_bytes=settings.max_upload_bytes,
                workers=settings.prepare_workers or usable_cores(),
                progress=progress,
            )
            log.info(
                "dataset %s: %d tokens in %.1f s",
                dataset_id,
                done.train_tokens + done.val_tokens,
                time.perf_counter() - t0,
            )
            lease.check()
            # Only a complete folder takes the name (meta.json says so); another dataset of the
            # same bytes may have got there first, with the same files.
            store.put_folder(work, target, last="meta.json")
        _finish(db, ds, attempt, json.loads(store.read_bytes(f"{target}/meta.json")))
        ended = True
    except PrepareError as e:
        log.info("dataset %s: cannot be prepared: %s", dataset_id, e)
        with db.transaction() as s:
            ended = DATASETS.move(s, dataset_id, FAILED, where=[D.attempt == attempt], reason=str(e))
    except LeaseLost as e:
        log.warning("dataset %s: %s; stopping", dataset_id, e)
    except Exception as e:  # ours, not the input's: say so rather than retry it forever
        log.exception("dataset %s: preparing failed", dataset_id)
        with db.transaction() as s:
            reason = f"preparing failed on the worker: {type(e).__name__}: {e}"
            ended = DATASETS.move(s, dataset_id, FAILED, where=[D.attempt == attempt], reason=reason)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        joined.unlink(missing_ok=True)
        lease.close(release=True)
    if ended and ds.upload_id:  # the bytes are tokens now (or refused): the upload goes
        upload.remove()


def _part_bytes(db: Database, upload_id: str | None) -> int:
    with db.session() as s:
        up = s.get(Upload, upload_id) if upload_id else None
    return up.part_bytes if up is not None else 1


def _finish(db: Database, ds: Dataset, attempt: int, meta: dict[str, Any]) -> None:
    values = {k: meta[k] for k in ("format", "train_tokens", "val_tokens", "vocab_size", "documents", "preview")}
    values["tokenizer"] = meta["tokenizer"]["kind"]
    tokens = meta["train_tokens"] + meta["val_tokens"]
    took = time.time() - (ds.started_at or time.time())
    values["progress"] = {"phase": "done", "bytes_done": ds.bytes, "tokens": tokens, "eta_s": 0.0}
    values["progress"]["tokens_per_s"] = tokens / took if took > 0 else 0.0
    with db.transaction() as s:
        if not DATASETS.move(s, ds.id, READY, where=[D.attempt == attempt], upload_id=None, **values):
            raise LeaseLost(f"dataset {ds.id} is no longer attempt {attempt}'s")

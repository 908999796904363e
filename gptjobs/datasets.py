"""`client.datasets`: your own corpora. `upload` sends a file of any size as parts, in
parallel, and resumes after an interruption by sending only the parts the server lacks;
`create` sends a small one in one request; `wait` follows the preparing to its end.

Knows the /datasets and /uploads endpoints and the local bookkeeping that makes an upload
resumable: a small JSON file per (server, file) under the state directory, naming the upload
that file is going into, removed once the upload is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptjobs.errors import NotFound, Timeout
from gptjobs.transport import STREAMING, Transport
from gptjobs.types import Dataset, Upload

READ_BYTES = 1 << 20
STATE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gptjobs" / "uploads"


@dataclass
class UploadProgress:
    """How far an upload is: bytes the server has (parts sent before a resume included)."""

    bytes_done: int
    bytes_total: int
    bytes_sent: int  # by this call
    elapsed_s: float  # of this call
    resumed: bool  # parts were there already from an earlier, interrupted call


Progress = Callable[[UploadProgress], None]
Numbers = list[int]  # (Datasets.list hides the builtin inside the class)


def _options(
    tokenizer: str | None, format: str | None, val_fraction: float | None, text_field: str | None
) -> dict[str, Any]:
    given = {"tokenizer": tokenizer, "format": format, "val_fraction": val_fraction, "text_field": text_field}
    return {k: v for k, v in given.items() if v is not None}


class Datasets:
    def __init__(self, transport: Transport, state_dir: Path | None = None):
        self._t = transport
        self.state_dir = state_dir or STATE_DIR

    # --- read and delete ------------------------------------------------------------------

    def get(self, dataset_id: str) -> Dataset:
        return Dataset.from_json(self._t.json("GET", f"/datasets/{dataset_id}"))

    def list(self) -> list[Dataset]:
        """Your datasets, newest first."""
        return [Dataset.from_json(d) for d in self._t.json("GET", "/datasets")["datasets"]]

    def delete(self, dataset_id: str) -> None:
        """Delete it (a Conflict while a queued or running run trains on it)."""
        self._t.request("DELETE", f"/datasets/{dataset_id}")

    def wait(
        self,
        dataset_id: str,
        timeout: float | None = None,
        poll_s: float = 1.0,
        progress: Callable[[Dataset], None] | None = None,
    ) -> Dataset:
        """Until it is ready or failed (returned either way: look at .status and .reason)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (ds := self.get(dataset_id)).ended:
            if progress:
                progress(ds)
            if deadline is not None and time.monotonic() > deadline:
                raise Timeout(f"dataset {dataset_id} is still {ds.status} after {timeout:g} s")
            time.sleep(poll_s)
        return ds

    # --- send one ---------------------------------------------------------------------------

    def create(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        tokenizer: str | None = None,
        format: str | None = None,
        val_fraction: float | None = None,
        text_field: str | None = None,
    ) -> Dataset:
        """A dataset from a small file, sent in one multipart request (no resume)."""
        p = Path(path)
        fields = {"name": name, **_options(tokenizer, format, val_fraction, text_field)}
        with open(p, "rb") as f:
            data = self._t.json(
                "POST",
                "/datasets",
                data={k: str(v) for k, v in fields.items()},
                files={"file": (p.name, f)},
                timeout=STREAMING,
            )
        return Dataset.from_json(data)

    def upload(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        tokenizer: str | None = None,
        format: str | None = None,
        val_fraction: float | None = None,
        text_field: str | None = None,
        parallel: int = 4,
        progress: Progress | None = None,
    ) -> Dataset:
        """A dataset from a file of any size: its parts are sent `parallel` at a time, and a
        call after an interrupted one (Ctrl-C, a dropped connection) sends only what the
        server lacks. Returns the dataset, `preparing` (see `wait`)."""
        p = Path(path).resolve()
        size = p.stat().st_size
        state = self._state_file(p)
        upload = self._resume(state)
        if upload is None:
            upload = Upload.from_json(self._t.json("POST", "/uploads", json={"filename": p.name, "bytes": size}))
            state.parent.mkdir(parents=True, exist_ok=True)
            state.write_text(json.dumps({"upload_id": upload.id}))
        # The whole file's sha256, which complete checks, is read beside the parts being sent
        # (a daemon thread: an interrupted upload does not wait for it).
        whole = _Background(_sha256, p)
        have = {part.n: part for part in upload.parts}
        if have:  # sent before: keep only what matches this file now, byte for byte
            sums = _part_sums(p, upload.part_bytes, set(have))
            have = {n: part for n, part in have.items() if sums.get(n) == part.sha256}
        todo = [n for n in range(1, upload.parts_expected + 1) if n not in have]
        self._send(p, upload, todo, sum(part.bytes for part in have.values()), bool(have), parallel, progress)
        body = {"name": name, "sha256": whole.get(), **_options(tokenizer, format, val_fraction, text_field)}
        ds = Dataset.from_json(self._t.json("POST", f"/uploads/{upload.id}/complete", json=body, timeout=STREAMING))
        state.unlink(missing_ok=True)
        return ds

    def _state_file(self, path: Path) -> Path:
        st = path.stat()
        key = f"{self._t.server}\n{path}\n{st.st_size}\n{st.st_mtime_ns}"
        return self.state_dir / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def _resume(self, state: Path) -> Upload | None:
        """The upload an interrupted call left, if the server still has it open."""
        try:
            upload_id = json.loads(state.read_text())["upload_id"]
        except (OSError, ValueError, KeyError):
            return None
        try:
            upload = Upload.from_json(self._t.json("GET", f"/uploads/{upload_id}"))
        except NotFound:  # expired, or another server's
            return None
        return upload if upload.status == "open" else None

    def _send(
        self,
        path: Path,
        upload: Upload,
        todo: Numbers,
        done: int,
        resumed: bool,
        parallel: int,
        progress: Progress | None,
    ) -> None:
        lock = threading.Lock()
        t0 = time.monotonic()
        sent = 0

        def report(n: int) -> None:
            nonlocal sent
            with lock:
                sent += n
                if progress:
                    progress(UploadProgress(done + sent, upload.bytes, sent, time.monotonic() - t0, resumed))

        def send(n: int) -> None:
            offset = (n - 1) * upload.part_bytes
            length = min(upload.part_bytes, upload.bytes - offset)
            headers = {"Content-Length": str(length), "Content-Type": "application/octet-stream"}
            self._t.request(
                "PUT", f"/uploads/{upload.id}/parts/{n}", content=_slice(path, offset, length, report), headers=headers,
                timeout=STREAMING,
            )  # fmt: skip

        report(0)
        pool = ThreadPoolExecutor(max(1, parallel))
        try:
            for future in [pool.submit(send, n) for n in todo]:
                future.result()
        finally:  # a failure or a Ctrl-C: the parts in flight end, the others are not sent
            pool.shutdown(wait=True, cancel_futures=True)


class _Background:
    def __init__(self, fn: Callable[[Path], str], arg: Path):
        self.result: str | BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn, arg), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[Path], str], arg: Path) -> None:
        try:
            self.result = fn(arg)
        except BaseException as e:
            self.result = e

    def get(self) -> str:
        self.thread.join()
        if isinstance(self.result, BaseException):
            raise self.result
        assert self.result is not None
        return self.result


def _slice(path: Path, offset: int, length: int, report: Callable[[int], None]) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left > 0:
            block = f.read(min(READ_BYTES, left))
            if not block:
                raise OSError(f"{path} is shorter than when the upload started")
            left -= len(block)
            yield block
            report(len(block))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * READ_BYTES):
            h.update(block)
    return h.hexdigest()


def _part_sums(path: Path, part_bytes: int, parts: set[int]) -> dict[int, str]:
    """The sha256 of each of `parts` of the local file, to compare with what the server has."""
    out = {}
    with open(path, "rb") as f:
        for n in sorted(parts):
            f.seek((n - 1) * part_bytes)
            h, left = hashlib.sha256(), part_bytes
            while left > 0 and (block := f.read(min(4 * READ_BYTES, left))):
                h.update(block)
                left -= len(block)
            out[n] = h.hexdigest()
    return out

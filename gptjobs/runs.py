"""`client.runs`: everything under /runs. A run is created, followed, sampled and its
checkpoints taken away; each method is one endpoint (stream and wait: the WebSocket).

Knows the endpoints' paths, parameters and bodies; how a request fails is transport.py's,
how a stream resumes stream.py's and how a sample streams sampling.py's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from gptjobs.errors import GptjobsError
from gptjobs.sampling import SampleStream
from gptjobs.stream import EventStream
from gptjobs.transport import STREAMING, Transport
from gptjobs.types import Checkpoint, Event, EventPage, Run, RunPage, SampleResult

Which = Literal["latest", "best"] | int  # a checkpoint: the newest, the lowest val loss, or an iter
Names = str | list[str] | tuple[str, ...]  # "running,queued", or the names one by one
Checkpoints = list[Checkpoint]  # (Runs.list hides the builtin inside the class)


def _csv(value: Names | None) -> str | None:
    return value if value is None or isinstance(value, str) else ",".join(value)


class Runs:
    def __init__(self, transport: Transport):
        self._t = transport

    # --- create, read, cancel ---------------------------------------------------------------

    def create(
        self,
        config: dict[str, Any],
        name: str | None = None,
        max_restarts: int | None = None,
        idempotency_key: str | None = None,
    ) -> Run:
        """Queue a training run. `config` takes nanoGPT's train.py keys; the rest take the
        dataset recipe's values, then train.py's defaults (the returned run has them all).
        A bad value is a ValidationError naming the field. With `idempotency_key`, a retry of
        the same request returns the same run instead of a second one."""
        body: dict[str, Any] = {"config": config}
        if name is not None:
            body["name"] = name
        if max_restarts is not None:
            body["max_restarts"] = max_restarts
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Run.from_json(self._t.json("POST", "/runs", json=body, headers=headers))

    def get(self, run_id: str) -> Run:
        """The run with its whole `progress` and `diagnostics`."""
        return Run.from_json(self._t.json("GET", f"/runs/{run_id}"))

    def list(self, status: Names | None = None, limit: int = 50, cursor: str | None = None) -> RunPage:
        """One page of runs, newest first (`limit` at most 200); `status` filters
        ("running,queued" or a list). Pass the page's `next_cursor` as `cursor` for the next."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = _csv(status)
        if cursor:
            params["cursor"] = cursor
        page = self._t.json("GET", "/runs", params=params)
        return RunPage([Run.from_json(r) for r in page["runs"]], page["next_cursor"])

    def list_all(self, status: Names | None = None, page_size: int = 200) -> Iterator[Run]:
        """Every run, newest first, a page at a time as the iteration goes."""
        cursor = None
        while True:
            page = self.list(status, page_size, cursor)
            yield from page.runs
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def cancel(self, run_id: str) -> Run:
        """Cancel a run. A queued one ends `cancelled` at once; a running one is asked to stop
        and comes back still `running`: it writes a checkpoint first, then ends `cancelled`
        (wait() for that). An ended run is a Conflict."""
        return Run.from_json(self._t.json("POST", f"/runs/{run_id}/cancel"))

    # --- events -----------------------------------------------------------------------------

    def events(
        self,
        run_id: str,
        after: int = 0,
        type: Names | None = None,
        limit: int | None = None,
        max_points: int | None = None,
    ) -> EventPage:
        """One page of the run's history: events with seq above `after`, in order, of the given
        types ("eval,checkpoint" or a list); `limit` per page (server default 1000). With
        `max_points`, iter events are thinned to about that many, in one page, for a chart."""
        params: dict[str, Any] = {"after": after}
        for k, v in (("type", _csv(type)), ("limit", limit), ("max_points", max_points)):
            if v is not None:
                params[k] = v
        page = self._t.json("GET", f"/runs/{run_id}/events", params=params)
        return EventPage(page["events"], page["next_after"], page["has_more"])

    def events_all(
        self, run_id: str, after: int = 0, type: Names | None = None, limit: int | None = None
    ) -> Iterator[Event]:
        """The whole history after `after`, page by page; ends where the history ends now
        (stream() goes on with what comes live)."""
        while True:
            page = self.events(run_id, after, type, limit)
            yield from page.events
            after = page.next_after
            if not page.has_more:
                return

    def stream(self, run_id: str, after: int = 0, *, notify: Callable[[str], None] | None = None) -> EventStream:
        """Every event after seq `after` as it happens, ending after the final status event.
        A lost connection is resumed from the last seq yielded: no event twice, none missed.
        `notify` gets a line when the connection is lost and when it is back."""
        return EventStream(self._t, run_id, after, notify=notify)

    def wait(self, run_id: str, timeout: float | None = None) -> Run:
        """Block until the run has ended, then return it; Timeout after `timeout` seconds
        (the run goes on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        run = self.get(run_id)
        if not run.ended:
            with EventStream(self._t, run_id, run.progress.last_seq or 0, deadline=deadline) as events:
                for _ in events:
                    pass
            run = self.get(run_id)
        return run

    def log(self, run_id: str, follow: bool = False, after: int = 0) -> Iterator[str]:
        """The run as nanoGPT's log lines, in chunks of text as they arrive; with `follow`,
        until the run ends."""
        params: dict[str, Any] = {"follow": "true"} if follow else {}
        if after:
            params["after"] = after
        with self._t.stream("GET", f"/runs/{run_id}/log", params=params) as resp:
            yield from resp.iter_text()

    # --- sampling ---------------------------------------------------------------------------

    def sample(
        self,
        run_id: str,
        prompt: str = "\n",
        *,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int | None = 200,
        seed: int | None = None,
        num_samples: int = 1,
        checkpoint: Which = "latest",
    ) -> SampleResult:
        """Text the model writes after `prompt`, from one of the run's checkpoints (also while
        it trains). The defaults are the server's; temperature 0 is greedy, top_k None samples
        among all tokens, and the same seed, checkpoint and request write the same text (the
        result says which seed was used). No checkpoint yet is a Conflict, a character outside
        the run's vocabulary a ValidationError."""
        body = {
            "prompt": prompt,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_k": top_k,
            "seed": seed,
            "num_samples": num_samples,
            "checkpoint": checkpoint,
        }
        # No read timeout: the answer comes whole, once written (the server's own deadlines end a stall).
        resp = self._t.json("POST", f"/runs/{run_id}/samples", json=body, timeout=STREAMING)
        return SampleResult.from_json(resp)

    def sample_stream(
        self,
        run_id: str,
        prompt: str = "\n",
        *,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int | None = 200,
        seed: int | None = None,
        num_samples: int = 1,
        checkpoint: Which = "latest",
    ) -> SampleStream:
        """As sample(), but iterate the result for the text as it is generated (the first
        sample's; `texts` has all of them, `result` the whole answer at the end)."""
        body = {
            "prompt": prompt,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_k": top_k,
            "seed": seed,
            "num_samples": num_samples,
            "checkpoint": checkpoint,
            "stream": True,
        }
        return SampleStream(self._t, f"/runs/{run_id}/samples", body)

    # --- checkpoints ------------------------------------------------------------------------

    def checkpoints(self, run_id: str) -> Checkpoints:
        """The checkpoints the run keeps, oldest first (which is best, which latest)."""
        return [Checkpoint.from_json(c) for c in self._t.json("GET", f"/runs/{run_id}/checkpoints")["checkpoints"]]

    def download_checkpoint(self, run_id: str, which: Which, path: str | os.PathLike[str]) -> Path:
        """One checkpoint, in nanoGPT's format, streamed to `path` (into `path/ckpt.pt` when it
        is a directory, so that nanoGPT's sample.py --out_dir=path loads it). The file appears
        whole or not at all; returns where it went."""
        dest = Path(path)
        if dest.is_dir():
            dest = dest / "ckpt.pt"
        return self._fetch(f"/runs/{run_id}/checkpoints/{which}", {}, dest)

    def export(self, run_id: str, path: str | os.PathLike[str], which: Which = "best") -> Path:
        """A checkpoint as a Hugging Face GPT-2 directory, unpacked into `path` (config.json,
        model.safetensors, and GPT-2's tokenizer files, or a character model's vocab.json and
        README.md): `transformers.GPT2LMHeadModel.from_pretrained(path)` loads it."""
        import tarfile

        dest = Path(path)
        dest.mkdir(parents=True, exist_ok=True)
        archive = self._fetch(f"/runs/{run_id}/checkpoints/{which}", {"format": "hf"}, dest / ".export.tar.gz")
        try:
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():  # the server's own archive: plain files, no folders
                    if not member.isfile() or Path(member.name).name != member.name:
                        raise GptjobsError(f"unexpected member {member.name!r} in the export")
                    src = tar.extractfile(member)
                    assert src is not None
                    (dest / member.name).write_bytes(src.read())
        finally:
            archive.unlink(missing_ok=True)
        return dest

    def import_weights(
        self, path: str | os.PathLike[str], vocab: str | os.PathLike[str] | None = None, name: str | None = None
    ) -> Run:
        """Weights trained elsewhere as a run of yours, `succeeded` with one checkpoint: a
        nanoGPT ckpt.pt (with `vocab`, its meta.pkl, for a character-level model), or a
        Hugging Face GPT-2 directory (config.json + model.safetensors; a directory is sent
        as a tar, a .tar as it is). Sample it, export it, or start a run from it with
        init_from "run:<id>". A file the server refuses is a ValidationError saying why."""
        import tarfile
        import tempfile

        p = Path(path)
        data: dict[str, str] = {"name": name} if name else {}
        with tempfile.TemporaryDirectory() as d:
            if p.is_dir():
                tarred = Path(d) / f"{p.name}.tar"
                with tarfile.open(tarred, "w") as tar:
                    for member in ("config.json", "model.safetensors"):
                        tar.add(p / member, arcname=member)
                p = tarred
            with open(p, "rb") as f:
                files: dict[str, Any] = {"file": (p.name, f)}
                if vocab is not None:
                    files["vocab"] = (Path(vocab).name, open(vocab, "rb"))  # noqa: SIM115 (closed below)
                try:
                    return Run.from_json(
                        self._t.json("POST", "/runs/import", data=data, files=files, timeout=STREAMING)
                    )
                finally:
                    if vocab is not None:
                        files["vocab"][1].close()

    def _fetch(self, url: str, params: dict[str, str], dest: Path) -> Path:
        """A download streamed to dest, which appears whole or not at all."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        try:
            with (
                self._t.stream("GET", url, params=params, timeout=STREAMING) as resp,
                open(part, "wb") as f,
            ):
                for chunk in resp.iter_bytes(1 << 20):
                    f.write(chunk)
            os.replace(part, dest)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return dest

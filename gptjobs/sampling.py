"""A sample as it is written: POST /runs/{id}/samples with `"stream": true`, read as server-sent events.

The server sends `start` once a worker has loaded the checkpoint and checked the prompt (so a
404, 409 or 422 is still an HTTP status), then one message per piece of new text for each
sample (`{"samples": [{"text": ...}, ...]}`, never half a character), then `end` with the
whole answer, or `error` if the worker stopped after the text began.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable, Iterator
from types import TracebackType
from typing import Any

from gptjobs.errors import Unreachable, api_error
from gptjobs.transport import Transport
from gptjobs.types import SampleResult


def sse_events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """Server-sent events as (event, data); a blank line ends each, and `event` defaults to message."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):  # a comment (a keep-alive)
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:  # the last one, if the stream ended without its blank line
        yield event, "\n".join(data)


class SampleStream:
    """Iterate for the first sample's text, piece by piece, as it is generated.

    Made once the worker has started, so `checkpoint_iter`, `seed` and `num_samples` are set
    and a refused request has raised already. `texts` holds every sample's text so far;
    `result` the whole answer (a SampleResult) once the iteration ends. Use it in a `with`
    block, or call close(), to stop early: the worker stops generating too."""

    def __init__(self, transport: Transport, path: str, body: dict[str, Any]):
        self.checkpoint_iter = 0
        self.seed = 0
        self.num_samples = 0
        self.texts: list[str] = []
        self.result: SampleResult | None = None
        self._pieces = self._read(transport, path, body)
        next(self._pieces)  # up to `start`

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()

    def __enter__(self) -> SampleStream:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _read(self, t: Transport, path: str, body: dict[str, Any]) -> Generator[str, None, None]:
        # Server-sent events, not plain text: an error after the start is still an error.
        with t.stream("POST", path, json=body, headers={"Accept": "text/event-stream"}) as resp:
            for event, data in sse_events(resp.iter_lines()):
                msg = json.loads(data)
                if event == "start":
                    self.checkpoint_iter, self.seed, self.num_samples = (
                        msg["checkpoint_iter"],
                        msg["seed"],
                        msg["num_samples"],
                    )
                    self.texts = [""] * self.num_samples
                    yield ""  # started: the constructor returns
                elif event == "message":
                    pieces = [s["text"] for s in msg["samples"]]
                    for i, piece in enumerate(pieces):
                        self.texts[i] += piece
                    if pieces[0]:
                        yield pieces[0]
                elif event == "end":
                    self.result = SampleResult.from_json(msg)
                    return
                elif event == "error":
                    status, detail = msg.get("status"), msg.get("detail")
                    code = status if isinstance(status, int) else 500
                    raise api_error(code, detail, f"sampling stopped: {status}: {detail}")
        raise Unreachable(f"{t.server} ended the sample stream before its end")

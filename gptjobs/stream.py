"""A run's events from the WebSocket `/runs/{id}/stream?after=SEQ`, resumed across lost connections.

The server sends every event after `after` (history, then live), then the final status event,
then a normal close. When a connection drops, this reconnects with backoff from the last seq
it yielded and drops any seq it has already yielded, so the caller sees each event once and
in order, with no gap. It gives up after RECONNECT_GIVE_UP_S without an event.

Knows the socket's protocol (its close codes) and nothing of what events mean beyond `seq`
and the final status.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Generator, Iterator
from types import TracebackType
from typing import Any

from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from gptjobs.errors import APIError, GptjobsError, Timeout, Unreachable, api_error
from gptjobs.transport import Transport
from gptjobs.types import TERMINAL, Event

RECONNECT_GIVE_UP_S = 120.0  # stop reconnecting after this long without an event
log = logging.getLogger("gptjobs")


def backoff(failures: int) -> float:
    """Seconds before reconnect number `failures`: 0.25, 0.5, 1, ... up to 8."""
    return min(8.0, 0.25 * 2 ** (failures - 1))


def _refused(code: int, reason: str) -> APIError:
    """The socket's application close codes (4401, 4403, 4404) as the HTTP errors they stand for."""
    status = code - 4000 if 4400 <= code < 4600 else code
    return api_error(status, reason or None, f"{reason or 'refused'} ({code})")


class EventStream:
    """Iterate for the events (dicts, in seq order); it ends after the run's final status event.

    `raw` is the server's text of the event just yielded, `last_seq` its seq, and `final` the
    final status event once it came (for a run that had ended before `after`, one made from the
    run itself, whose seq is `after`). `notify` gets a line each time the connection is lost
    and found again (default: the `gptjobs` logger). Use it in a `with` block, or call close(),
    to leave early."""

    def __init__(
        self,
        transport: Transport,
        run_id: str,
        after: int = 0,
        *,
        notify: Callable[[str], None] | None = None,
        deadline: float | None = None,
    ):
        self._t, self.run_id = transport, run_id
        self.last_seq = after
        self.raw = ""
        self.final: Event | None = None
        self._notify = notify
        self._deadline = deadline  # time.monotonic() past which Timeout is raised
        self._events = self._follow()

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def close(self) -> None:
        self._events.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _note(self, msg: str, lost: bool) -> None:
        if self._notify is not None:
            self._notify(msg)
        else:
            log.log(logging.WARNING if lost else logging.INFO, msg)

    def _left(self) -> float | None:
        """Seconds to the deadline, if there is one; Timeout once it has passed."""
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._timeout()
        return left

    def _timeout(self) -> Timeout:
        return Timeout(f"run {self.run_id} had not ended when the wait ran out (last seq {self.last_seq})")

    def _follow(self) -> Generator[Event, None, None]:
        failures, lost_at = 0, 0.0
        while True:
            try:
                url = self._t.ws_url(f"/runs/{self.run_id}/stream?after={self.last_seq}")
                open_timeout = min(10.0, self._left() or 10.0)
                with connect(
                    url,
                    additional_headers=self._t.headers,
                    compression=None,
                    close_timeout=1,
                    open_timeout=open_timeout,
                ) as ws:
                    if failures:
                        self._note(f"reconnected; continuing after seq {self.last_seq}", lost=False)
                    for ev in self._events_of(ws):
                        failures = 0
                        if ev["type"] == "status" and ev.get("status") in TERMINAL:
                            self.final = ev
                        yield ev
                        if self.final is not None:
                            return
                # Closed normally before a final status: the run ended at or before `after`, or the
                # server is going away.
                run = self._t.json("GET", f"/runs/{self.run_id}")
                if run["status"] in TERMINAL:
                    self.final = {
                        "type": "status",
                        "seq": self.last_seq,
                        "status": run["status"],
                        "reason": run["reason"],
                    }
                    return
                why = f"the server closed the stream ({ws.close_code} {ws.close_reason or ''})".rstrip()
            except GptjobsError:
                raise
            except ConnectionClosed as e:
                if e.rcvd is not None and e.rcvd.code >= 4000:  # the application's answer, e.g. 4404
                    raise _refused(e.rcvd.code, e.rcvd.reason) from None
                why = "connection lost"
            except InvalidStatus as e:
                status = e.response.status_code
                if 400 <= status < 500:
                    message = f"the server refused the stream: {status} {e.response.reason_phrase}"
                    raise api_error(status, e.response.reason_phrase, message) from None
                why = f"the server answered {status}"
            except (OSError, WebSocketException) as e:  # refused, reset, timed out, a broken handshake
                why = f"cannot connect ({e})"
            failures += 1
            if failures == 1:
                lost_at = time.monotonic()
            elif time.monotonic() - lost_at > RECONNECT_GIVE_UP_S:
                raise Unreachable(
                    f"{why}; gave up after {RECONNECT_GIVE_UP_S:.0f} s without an event (last seq {self.last_seq})"
                )
            delay = backoff(failures)
            self._note(f"{why}; reconnecting in {delay:.2g} s (after seq {self.last_seq})", lost=True)
            left = self._left()
            time.sleep(delay if left is None else min(delay, left))

    def _events_of(self, ws: ClientConnection) -> Iterator[Event]:
        """The new events on one connection, until it closes normally."""
        while True:
            try:
                raw = ws.recv(timeout=self._left())
            except ConnectionClosedOK:
                return
            except TimeoutError:  # recv's only timeout is the deadline's
                raise self._timeout() from None
            ev: dict[str, Any] = json.loads(raw)
            if ev["seq"] <= self.last_seq:
                continue
            self.last_seq, self.raw = ev["seq"], str(raw)
            yield ev

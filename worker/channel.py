"""Rank 0's line to the worker holding its run: events one way; stops and fence answers back.

The worker holding a run (its claim, its lease, its EventSink) is not a rank: torch's
elastic launcher starts the ranks as processes of their own, possibly on other machines.
Global rank 0 connects here (TCP, with the run's secret key: multiprocessing's HMAC
handshake) and sends what `gpt.train` yields. Messages, pickled tuples:

    rank 0 -> worker   ("iter", ev)     an iter event; no answer (a step never waits on it)
                       ("event", ev)    any other event; answered ("ok",) once it is stored
                       ("fence",)       may a checkpoint take its name? ("ok",) or ("refused", why)
    worker -> rank 0   ("stop",)        at any time: stop at the next step (a cancel, a shutdown)

An event other than an iter is answered only once the worker has handled it, so rank 0
waits there as `gpt.train`'s caller would: the checkpoint named in a checkpoint event is
still ckpt.pt when the worker names it by its iter. Knows no Redis, database or torch.
"""

from __future__ import annotations

import select
import socket
from multiprocessing.connection import Client, Connection, answer_challenge, deliver_challenge
from typing import Any


class Refused(Exception):
    """The worker does not own the run any more: write nothing, stop."""


class RankLine:
    """Rank 0's end: its should_stop, before_save and a sink for its events."""

    def __init__(self, address: tuple[str, int], key: bytes):
        self.conn = Client(address, authkey=key)
        self.stopping = False

    def should_stop(self) -> bool:
        while self.conn.poll():  # EOFError when the worker is gone: this rank stops with it
            self._take(self.conn.recv())
        return self.stopping

    def fence(self) -> None:
        self.conn.send(("fence",))
        self._answer()

    def emit(self, ev: dict[str, Any]) -> None:
        if ev["type"] == "iter":
            self.conn.send(("iter", ev))
        else:
            self.conn.send(("event", ev))
            self._answer()

    def _answer(self) -> None:
        while True:
            msg = self.conn.recv()
            if msg[0] == "ok":
                return
            if msg[0] == "refused":
                raise Refused(msg[1])
            self._take(msg)

    def _take(self, msg: tuple[Any, ...]) -> None:
        if msg[0] == "stop":
            self.stopping = True

    def close(self) -> None:
        self.conn.close()


class WorkerEnd:
    """The worker's end: a listening socket that one authenticated rank 0 connects to."""

    def __init__(self, host: str, key: bytes):
        self.key = key
        self.sock = socket.create_server((host, 0))
        self.address: tuple[str, int] = (host, self.sock.getsockname()[1])
        self.conn: Connection | None = None

    def accept(self, timeout: float) -> Connection | None:
        """The connection once rank 0 has made it (None until then, after waiting timeout s)."""
        if self.conn is None and select.select([self.sock], [], [], timeout)[0]:
            s, _ = self.sock.accept()
            s.setblocking(True)
            conn = Connection(s.detach())
            try:  # as multiprocessing's Listener does, on a socket we can wait on with a timeout
                deliver_challenge(conn, self.key)
                answer_challenge(conn, self.key)
            except Exception:  # a stranger (AuthenticationError), or a rank that died mid-handshake
                conn.close()
                return None
            self.conn = conn
        return self.conn

    def close(self) -> None:
        self.sock.close()
        if self.conn is not None:
            self.conn.close()

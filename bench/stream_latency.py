"""Latency from the worker's XADD to receipt by WebSocket clients, on loopback.

Starts a redis-server and the API (uvicorn, its own process), creates a run, connects N
WebSocket clients to /runs/{id}/stream, then a separate emitter process pushes iter events
through the worker's own EventSink (XADD + batched SQLite writes) at a fixed rate. Each
event's `ts` is stamped just before it is handed to the sink; each client records
arrival time minus ts. Bar: p99 <= 20 ms at 100 clients, 200 events/s.

The clients run in this process, on the same cores as the API: they are a minimal
WebSocket client on one epoll loop, so that they take as little CPU from the API as they
can. Each checks that it got every event, seqs contiguous, then a normal close. The CPU
each delivery cost the API and the clients (from /proc) is printed too: contention does
not inflate it, though on a busy machine events batch up and it comes out lower.

    python bench/stream_latency.py [--clients 1 100] [--rate 200] [--seconds 5]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages and tests.harness

from tests.harness import Proc, Stack  # noqa: E402

DEFAULT_WS = "api.ws:StreamProtocol"  # what `gptjobs serve` runs


def emit(run_id: str, rate: float, seconds: float) -> None:
    """The emitter process: what a worker does with each event, at `rate` events/s."""
    import redis

    from api.db import Database
    from api.settings import get_settings
    from worker.lease import Lease
    from worker.sink import EventSink

    s = get_settings()
    r = redis.Redis.from_url(s.redis_url)
    lease = Lease(r, run_id, 1, s.lease_ttl_s)  # the sink's writes are fenced by it, as in a worker
    lease.acquire()
    sink = EventSink(Database(s.db_url), r, s, run_id, lease)
    n = int(rate * seconds)
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sink.should_stop()
        sink.emit({"type": "iter", "ts": time.time(), "iter": i, "loss": 1.0, "lr": 1e-3, "step_ms": 5.0})
    sink.emit({"type": "status", "ts": time.time(), "status": "succeeded", "reason": "benchmark done"})
    sink.close()


_decode = json.JSONDecoder().raw_decode  # json.loads less its per-call checks, which cost the clients ~2 us


class Client:
    """One WebSocket connection, its frames parsed here: the clients share the machine with
    the API, so they must not spend its CPU. A plain epoll loop (`clients()`) costs them about
    two thirds of what asyncio's transports and protocols do, and the websockets library
    costs more than either. Checks each message's seq follows the one before."""

    def __init__(self, url: urllib.parse.SplitResult, latencies: list[float]) -> None:
        self.sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.sock.setblocking(False)
        self.latencies = latencies
        self.buf = bytearray()
        self.upgraded = self.closed = False
        self.fragments: list[bytes] = []
        self.last_seq: int | None = None
        self.received = 0
        self.close_code: int | None = None
        self.error: str | None = None

    def readable(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as e:
            data, self.error = b"", self.error or str(e)
        if not data:
            self.close()
            return
        now = time.time()
        buf = self.buf
        buf += data
        pos = 0
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.error = f"handshake refused: {bytes(buf[:end])!r}"
                self.close()
                return
            self.upgraded, pos = True, end + 4
        n = len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b1 & 0x80:
                self.error = "the server masked a frame"
                self.close()
                return
            length, start = b1 & 0x7F, pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length, start = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            if n - start < length:
                break
            payload = bytes(buf[start : start + length])
            pos = start + length
            opcode = b0 & 0x0F
            if opcode in (0, 1, 2):  # continuation, text, binary
                self.fragments.append(payload)
                if b0 & 0x80:  # FIN
                    self.message(now, b"".join(self.fragments))
                    self.fragments = []
            elif opcode == 8:  # close: echo it, as the protocol asks, and hang up
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.send(0x8, payload[:2])
                self.close()
                return
            elif opcode == 9:  # ping
                self.send(0xA, payload)
        del buf[:pos]

    def send(self, opcode: int, payload: bytes) -> None:
        # Client frames must be masked; an all-zero mask leaves the payload as it is.
        assert len(payload) < 126
        with contextlib.suppress(OSError):
            self.sock.send(bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)

    def message(self, now: float, msg: bytes) -> None:
        ev = _decode(msg.decode())[0]
        if self.last_seq is not None and ev["seq"] != self.last_seq + 1 and self.error is None:
            self.error = f"seq {ev['seq']} after {self.last_seq}"
        self.last_seq = ev["seq"]
        self.received += 1
        if ev["type"] == "iter":
            self.latencies.append((now - ev["ts"]) * 1000)

    def close(self) -> None:
        self.closed = True  # clients() unregisters the socket, then closes it


def clients(ws_url: str, n: int, events: int, start_emitter: Callable[[], subprocess.Popen[bytes]]) -> list[float]:
    """Latencies in ms of `events` iter events (plus the final status) to each of n clients."""
    latencies: list[float] = []
    url = urllib.parse.urlsplit(ws_url)
    conns = {c.sock.fileno(): c for c in (Client(url, latencies) for _ in range(n))}
    ep = select.epoll()
    for fd in conns:
        ep.register(fd, select.EPOLLIN)

    def poll(timeout: float) -> None:
        for fd, _ in ep.poll(timeout):
            c = conns[fd]
            c.readable()
            if c.closed:
                ep.unregister(fd)
                c.sock.close()

    deadline = time.monotonic() + 10
    while not all(c.upgraded or c.closed for c in conns.values()) and time.monotonic() < deadline:
        poll(0.1)
    time.sleep(0.5)  # every subscription is in place before the first event
    emitter = start_emitter()
    while not all(c.closed for c in conns.values()):
        poll(1.0)
    emitter.wait()
    ep.close()
    for c in conns.values():
        if c.error or c.close_code != 1000 or c.received != events + 1:
            raise RuntimeError(f"a client got {c.received}/{events + 1} events, close {c.close_code}, {c.error}")
    return latencies


def run_case(stack: Stack, api: Proc, n_clients: int, rate: float, seconds: float) -> str:
    """One case: n_clients follow a run that gets `rate` events a second; its result line."""
    from api.db import Database, Run

    db = Database(stack.database_url)
    run_id = f"bench{n_clients}x{int(time.time())}"
    with db.transaction() as s:
        s.add(Run(id=run_id, status="running", config={}, attempt=1, created_at=time.time()))
    db.dispose()

    def start_emitter() -> subprocess.Popen[bytes]:
        argv = [sys.executable, __file__, "--emit", run_id, "--rate", str(rate), "--seconds", str(seconds)]
        return subprocess.Popen(argv, env=stack.env)

    ws_url = f"{stack.ws}/runs/{run_id}/stream"
    api_cpu, own_cpu = api.cpu_s(), time.process_time()
    lat = clients(ws_url, n_clients, int(rate * seconds), start_emitter)
    api_cpu, own_cpu = api.cpu_s() - api_cpu, time.process_time() - own_cpu
    lat.sort()
    expected = int(rate * seconds) * n_clients
    q = statistics.quantiles(lat, n=100)
    return (
        f"{n_clients:4d} clients, {rate:.0f} events/s: {len(lat)}/{expected} received; "
        f"p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms, max {lat[-1]:.2f} ms; CPU per delivery: "
        f"API {api_cpu / len(lat) * 1e6:.0f} us, clients {own_cpu / len(lat) * 1e6:.0f} us"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 100])
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--ws", default=DEFAULT_WS, help="uvicorn's WebSocket implementation")
    ap.add_argument("--emit", metavar="RUN_ID", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.emit:
        emit(args.emit, args.rate, args.seconds)
        return

    with tempfile.TemporaryDirectory(prefix="gptjobs-bench-") as d, Stack(Path(d)) as stack:
        stack.start_redis()
        stack.migrate()
        api_argv = None  # `gptjobs serve`: api.ws's protocol, no per-message deflate
        if args.ws != DEFAULT_WS:
            api_argv = [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(stack.api_port)]
            api_argv += ["--log-level", "warning", "--ws", args.ws, "--ws-per-message-deflate", "false"]
        if os.environ.get("BENCH_PROFILE"):  # development aid: run the API under a profiler script
            api_argv = [sys.executable, os.environ["BENCH_PROFILE"], str(stack.api_port), args.ws, "9"]
        api = stack.start_api(argv=api_argv)
        for n in args.clients:
            print(run_case(stack, api, n, args.rate, args.seconds), flush=True)


if __name__ == "__main__":
    main()

"""`gptjobs submit|list|show|watch|log|cancel|sample` against the real stack: the bar in a
pseudo-terminal, the exit codes, a connection cut mid-stream, and errors as one line."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from typing import Any

import pytest

from tests.harness import ROOT, TINY, Stack, free_port, stop

GPTJOBS = [sys.executable, "-m", "api.cli"]
BAR = re.compile(r"\] (?:\w+  )?(\d+)/(\d+)  loss (\d+\.\d{4})  val (\S+)  step (\S+)ms  mfu (\S+)  eta (\S+)")


def _flags(**config: Any) -> list[str]:
    """TINY and the test's keys as nanoGPT command-line options (no warmup: the runs are short)."""
    return [f"--{k}={v}" for k, v in {**TINY, "warmup_iters": 0, **config}.items()]


def _env(stack: Stack) -> dict[str, str]:
    return {**stack.env, "GPTJOBS_SERVER": stack.url}


def gptjobs(stack: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GPTJOBS, *args], cwd=ROOT, env=_env(stack), capture_output=True, text=True, timeout=timeout)


def submit(stack: Stack, *args: str, **config: Any) -> str:
    out = gptjobs(stack, "submit", *_flags(**config), *args)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{16}", run_id), out.stdout
    return run_id


def one_clear_line(out: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptjobs: "), out.stderr
    return lines[0]


def _foreground() -> None:
    """In the child: SIGINT as a terminal's foreground job gets it. A test run started in the
    background (`make test &`, a CI runner's job) has SIGINT ignored, and an ignored signal
    stays ignored across exec: Python would then install no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Terminal:
    """A command in a pseudo-terminal 120 columns wide; everything it writes, as text."""

    def __init__(self, stack: Stack, *args: str):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        self.p = subprocess.Popen(
            [*GPTJOBS, *args],
            cwd=ROOT,
            env=_env(stack),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=_foreground,
        )
        os.close(slave)
        self.master, self.buf = master, b""

    @property
    def text(self) -> str:
        return self.buf.decode(errors="replace")

    def _read(self, wait: float) -> bool:
        if select.select([self.master], [], [], wait)[0]:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the command exited and the terminal closed
                data = b""
            self.buf += data
            return bool(data)
        return True

    def until(self, check: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check(self.text):
            assert time.monotonic() < deadline, f"timed out; the terminal shows:\n{self.text[-2000:]}"
            assert self._read(0.2), f"the command ended early:\n{self.text[-2000:]}"

    def finish(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while self._read(0.2):
            if time.monotonic() > deadline:
                self.p.kill()
                raise AssertionError(f"still running; the terminal shows:\n{self.text[-2000:]}")
        os.close(self.master)
        return self.p.wait(10)


def screen(text: str) -> list[str]:
    """The lines left on the terminal: each line as its last redraw left it."""
    text = text.replace("\r\n", "\n").replace("\x1b[K", "")
    return [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]


def bars(text: str) -> list[tuple[int, int, float]]:
    """(done, max_iters, loss) of every bar drawn."""
    return [(int(m[1]), int(m[2]), float(m[3])) for m in BAR.finditer(text)]


def test_submit_then_watch_draws_a_live_bar(stack: Stack) -> None:
    flags = _flags(max_iters=200, lr_decay_iters=200, eval_interval=100)
    t = Terminal(stack, "submit", *flags, "--name", "cli tiny", "--watch")  # watching from the queue on
    assert t.finish() == 0, t.text
    run_id = screen(t.text)[0]
    run = stack.run(run_id)
    assert run["name"] == "cli tiny" and run["status"] == "succeeded"
    assert {k: run["config"][k] for k in ("n_layer", "compile", "dataset", "max_iters")} == {
        "n_layer": 1,
        "compile": False,  # "--compile=False" went as the literal, not the string
        "dataset": "shakespeare_char",
        "max_iters": 200,
    }

    drawn = bars(t.text)
    assert drawn and drawn[-1][:2] == (200, 200), t.text[-2000:]
    assert len({done for done, _, _ in drawn}) >= 3, t.text  # redrawn as it went, not once at the end
    assert all(0 < loss < 10 for _, _, loss in drawn)
    assert "mfu n/a" in t.text and "\r" in t.text
    lines = screen(t.text)
    assert any(line.startswith("step 100: train loss") for line in lines)  # printed above the bar
    assert [line for line in lines if line][-1].startswith("run succeeded: trained 200 iterations")


def test_ctrl_c_leaves_the_run_and_a_cancelled_run_exits_3(stack: Stack) -> None:
    run_id = submit(stack, max_iters=100_000, lr_decay_iters=100_000, eval_interval=100_000)
    try:
        _ctrl_c_then_cancel(stack, run_id)
    finally:  # never leave a long run in front of the other tests' runs
        stack.http.post(f"/runs/{run_id}/cancel")


def _ctrl_c_then_cancel(stack: Stack, run_id: str) -> None:
    t = Terminal(stack, "watch", run_id)
    t.until(lambda text: len({d for d, _, _ in bars(text)}) >= 3, 90)  # training, on the bar
    t.p.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert t.finish(30) == 130
    assert f"interrupted (the run goes on: `gptjobs cancel {run_id}` stops it)" in t.text
    assert stack.run(run_id)["status"] == "running"

    watcher = subprocess.Popen(
        [*GPTJOBS, "watch", run_id],
        cwd=ROOT,
        env=_env(stack),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        cancel = gptjobs(stack, "cancel", run_id)
        assert cancel.returncode == 0 and "is stopping" in cancel.stdout, cancel.stderr
        out, err = watcher.communicate(timeout=90)
    finally:
        stop(watcher)
    assert watcher.returncode == 3, (out[-1000:], err)
    assert out.splitlines()[-1].startswith("run cancelled"), out[-1000:]
    assert "iter 0: loss" in out and "\r" not in out  # not a terminal: nanoGPT's lines, no bar

    again = gptjobs(stack, "cancel", run_id)
    assert again.returncode == 4
    assert one_clear_line(again) == "gptjobs: 409 Conflict: run already ended: cancelled"


def test_a_diverging_run_exits_1(stack: Stack) -> None:
    flags = _flags(max_iters=200, learning_rate=1e6, min_lr=0, warmup_iters=0, grad_clip=0)
    out = gptjobs(stack, "submit", *flags, "--watch")
    assert out.returncode == 1, (out.stdout[-1000:], out.stderr)
    first, *rest = out.stdout.splitlines()
    assert stack.run(first)["status"] == "failed"
    assert any(line.startswith("warning [nan_loss]") for line in rest), out.stdout
    assert rest[-1].startswith("run failed: ") and "learning_rate" in rest[-1]


class CuttingProxy:
    """TCP between the client and the API that drops the first `cuts` WebSocket connections
    once `after_bytes` have gone to the client (mid-frame, most likely). Keeps each request
    the client sent, to check its headers, and takes the Authorization header out on the way:
    the session's server has no keys, and would refuse one it does not know."""

    def __init__(self, target_port: int, cuts: int, after_bytes: int):
        self.target, self.cuts_left, self.after = target_port, cuts, after_bytes
        self.cuts, self.requests = 0, []  # type: ignore[var-annotated]
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target))
        first = client.recv(65536)
        with self.lock:
            self.requests.append(first)
            cut = b"/stream" in first.split(b"\r\n", 1)[0] and self.cuts_left > 0
            self.cuts_left -= cut
        upstream.sendall(re.sub(rb"\r\nAuthorization: [^\r]*", b"", first))
        threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
        self._pump(upstream, client, self.after if cut else None)

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(1024):
                dst.sendall(data)
                sent += len(data)
                if limit is not None and sent >= limit:
                    with self.lock:
                        self.cuts += 1
                    break
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.server.close()


def test_watch_survives_dropped_connections(stack: Stack) -> None:
    run_id = submit(stack, max_iters=150, lr_decay_iters=150, eval_interval=50)
    proxy = CuttingProxy(int(stack.url.rsplit(":", 1)[1]), cuts=3, after_bytes=3000)
    try:
        server = f"http://127.0.0.1:{proxy.port}"
        out = gptjobs(stack, "watch", run_id, "--json", "--server", server, "--key", "s3cret")
    finally:
        proxy.close()
    assert out.returncode == 0, (out.stdout[-1000:], out.stderr)
    assert proxy.cuts == 3
    assert out.stderr.count("connection lost; reconnecting in") == 3, out.stderr
    assert out.stderr.count("reconnected; continuing after seq") == 3, out.stderr

    seqs = [json.loads(line)["seq"] for line in out.stdout.splitlines()]
    assert seqs == list(range(1, len(seqs) + 1))  # every event, each once, in order
    assert seqs == [e["seq"] for e in stack.events(run_id)]
    assert json.loads(out.stdout.splitlines()[-1])["status"] == "succeeded"

    # The key went on the HTTP request and on every WebSocket handshake.
    streams = [r for r in proxy.requests if b"/stream" in r.split(b"\r\n", 1)[0]]
    assert len(streams) == 4
    assert all(b"\r\nAuthorization: Bearer s3cret\r\n" in r for r in proxy.requests), proxy.requests[0]


@pytest.fixture(scope="module")
def finished(stack: Stack) -> str:
    run_id = submit(stack, max_iters=40, lr_decay_iters=40, eval_interval=20)
    assert stack.wait_status(run_id, {"succeeded", "failed"})["status"] == "succeeded", stack.log_tail("train")
    return run_id


def test_list_show_log(stack: Stack, finished: str) -> None:
    out = gptjobs(stack, "list")
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "ITER", "LOSS", "BEST", "VAL", "AGE"]
    row = next(r.split() for r in rows if r.startswith(finished))
    assert row[2:4] == ["succeeded", "40/40"] and re.fullmatch(r"\d\.\d{4}", row[4]), row
    out = gptjobs(stack, "list", "--status", "running,queued")
    assert out.returncode == 0 and finished not in out.stdout

    out = gptjobs(stack, "show", finished)
    assert out.returncode == 0, out.stderr
    # Nothing after --after: the socket closes at once, and the run's own status decides.
    late = gptjobs(stack, "watch", finished, "--after", "1000000")
    assert late.returncode == 0, late.stderr
    assert re.search(r"^status +succeeded  \(attempt 1, restarts 0/default\)$", out.stdout, re.M), out.stdout
    assert re.search(r"^iter +40/40  \(100%\)$", out.stdout, re.M) and "mfu        n/a" in out.stdout
    assert re.search(r"^val loss +best \d\.\d{4}, last \d\.\d{4}$", out.stdout, re.M)
    assert re.search(r"^reading +MFU is n/a: the peak FLOP/s of cpu is not known", out.stdout, re.M), out.stdout
    raw = gptjobs(stack, "show", finished, "--json")
    assert json.loads(raw.stdout) == {**stack.run(finished), "created_at": json.loads(raw.stdout)["created_at"]}

    log = gptjobs(stack, "log", finished)
    assert log.returncode == 0 and log.stdout.startswith("run running")
    assert "iter 0: loss " in log.stdout and "step 20: train loss " in log.stdout
    followed = gptjobs(stack, "log", finished, "-f")  # an ended run: the whole log, then it returns
    assert followed.returncode == 0 and followed.stdout == log.stdout


def test_errors_are_one_line(stack: Stack) -> None:
    out = gptjobs(stack, "show", "nosuchrun")
    assert out.returncode == 4 and one_clear_line(out) == "gptjobs: 404 Not Found: run 'nosuchrun' not found"
    out = gptjobs(stack, "watch", "nosuchrun")
    assert out.returncode == 4 and "404" in one_clear_line(out)

    out = gptjobs(stack, "list", "--server", f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 4 and "cannot reach the server" in one_clear_line(out)

    out = gptjobs(stack, "submit", *_flags(n_embd=100, n_head=6))  # the 422, field by field
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "config.n_embd: must be divisible by n_head (100 is not a multiple of 6)" in out.stderr
    out = gptjobs(stack, "list", "--status", "bogus")
    assert out.returncode == 2 and "status: unknown status ['bogus']" in out.stderr
    out = gptjobs(stack, "submit", "--n_layers=2")  # a misspelt option: argparse says so
    assert out.returncode == 2 and "unrecognized arguments: --n_layers=2" in out.stderr


def test_sample_prints_the_streamed_text(stack: Stack, sample_worker: None, finished: str) -> None:
    args = ["sample", finished, "ROMEO:", "--max-new-tokens", "30", "--seed", "7", "--num-samples", "2"]
    out = gptjobs(stack, *args, "--checkpoint", "best")
    assert out.returncode == 0, out.stderr
    want = stack.http.post(
        f"/runs/{finished}/samples",
        json={"prompt": "ROMEO:", "max_new_tokens": 30, "seed": 7, "num_samples": 2, "checkpoint": "best"},
    ).json()
    a, b = (s["text"] for s in want["samples"])
    assert out.stdout == f"ROMEO:{a}\n---------------\nROMEO:{b}\n"
    assert "(checkpoint iter 40, seed 7," in out.stderr

    out = gptjobs(stack, "sample", finished, "--checkpoint", "12345")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "\n  checkpoint: no checkpoint at iter 12345 is kept (kept: 20, 40)" in out.stderr

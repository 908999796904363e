"""The client without the service: how `submit` reads its options and config files, what the
watch bar does with a resumed run, and the library's own logic (the server's errors, typed
values, a stream resumed across cut connections, a streamed sample) against a WebSocket and
HTTP server on loopback that plays the API. Against the real service:
tests/integration/test_client_cli.py and tests/integration/test_client_lib.py."""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.server import serve

import gptjobs
from api import client
from api.client import Bar, ClientError, add_client_commands, config_from_args
from gptjobs import Run
from gptjobs import stream as stream_module
from gptjobs.errors import from_response
from gptjobs.sampling import sse_events
from tests.harness import ROOT, free_port


def _parse(*argv: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gptjobs")
    add_client_commands(ap.add_subparsers(dest="command", required=True))
    return ap.parse_args(argv)


def test_training_options_are_nanogpt_literals_and_never_the_client_flags() -> None:
    args = _parse(
        "submit", "--key=abc", "--n_layer=2", "--compile=False", "--learning_rate=1e6", "--sample_prompts=['a', 'b']",
        "--dataset=shakespeare_char", "--tokenizer=None", "--out_dir=123", "--name", "n", "--max-restarts", "2",
    )  # fmt: skip
    assert (args.key, args.name, args.max_restarts) == ("abc", "n", 2)  # --key is the API key, not a config key
    assert config_from_args(args) == {
        "n_layer": 2,
        "compile": False,
        "learning_rate": 1e6,
        "sample_prompts": ["a", "b"],
        "dataset": "shakespeare_char",
        "tokenizer": None,
        "out_dir": "123",  # a text option stays text
    }


def test_a_config_key_named_like_a_client_flag_is_config_dot_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "FIELDS", {**client.FIELDS, "name": client.FIELDS["dataset"]})
    args = _parse("submit", "--name=label", "--config.name=value")
    assert args.name == "label" and config_from_args(args)["name"] == "value"


def test_config_files_then_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    py = tmp_path / "train_tiny.py"  # as nanoGPT's config/ files are written, expressions and all
    py.write_text(
        "import time\nout_dir = 'out-tiny'\nwandb_log = False\nwandb_run_name = 'r' + str(time.time())\n"
        "gradient_accumulation_steps = 5 * 8\nn_layer = 6  # overridden below\n"
    )
    js = tmp_path / "more.json"
    js.write_text(json.dumps({"n_head": 2, "n_embd": 64}))
    args = _parse("submit", str(py), str(js), "--n_layer=2")
    assert config_from_args(args) == {
        "out_dir": "out-tiny",
        "gradient_accumulation_steps": 40,
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 64,
    }
    assert "ignoring nanoGPT options this service does not use: wandb_log, wandb_run_name" in capsys.readouterr().err

    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ClientError, match="expected a JSON object") as e:
        config_from_args(_parse("submit", str(bad)))
    assert e.value.code == 2
    with pytest.raises(ClientError, match="cannot read config file"):
        config_from_args(_parse("submit", str(tmp_path / "missing.py")))


def _ev(seq: int, type_: str, **fields: Any) -> dict[str, Any]:
    return {"seq": seq, "type": type_, "ts": 1000.0 + seq, **fields}


def test_the_bar_goes_back_on_a_resume_and_ends_with_the_status_line() -> None:
    out = io.StringIO()
    bar = Bar(Run(id="r", status="queued", config={"max_iters": 100}), out)
    bar.event(_ev(1, "status", status="running", iter=0), "")
    for i in range(60):
        bar.event(_ev(2 + i, "iter", iter=i, loss=3.0, step_ms=10.0, mfu=None), "")
    assert bar.done == 60 and "60/100" in bar.text() and "mfu n/a" in bar.text()
    bar.event(_ev(62, "status", status="recovering", iter=60, reason="worker lost"), "")
    bar.event(_ev(63, "status", status="running", iter=40, from_iter=40), "")
    assert bar.done == 40 and "running" not in bar.text() and bar.text().startswith("40/100")
    assert all(i < 40 for _, i in bar.recent)  # the ETA forgets the redone iterations
    bar.event(_ev(64, "eval", iter=100, train_loss=2.0, val_loss=2.5, eval_ms=5.0), "")
    bar.event(_ev(65, "status", status="succeeded", iter=100, reason="trained 100 iterations"), "")
    bar.note("late note")
    bar.close()
    screen = out.getvalue()
    assert "run running (resuming from iter 40)" in screen and "step 100: train loss 2.0000, val loss 2.5000" in screen
    last_bar, status = screen.rstrip("\n").split("\n")[-2:]
    assert "100/100" in last_bar.rsplit("\r", 1)[-1] and "val 2.5000" in last_bar
    assert status == "run succeeded: trained 100 iterations"  # the last line, with no bar after it


# --- the library (gptjobs), without the service ------------------------------------------------


def _answer(status: int, body: Any = None, text: str | None = None, **headers: str) -> httpx.Response:
    content = text if text is not None else json.dumps(body)
    return httpx.Response(status, content=content, headers=headers, request=httpx.Request("GET", "http://x/runs"))


def test_the_servers_answers_become_one_error_hierarchy() -> None:
    loc = {"type": "value_error", "loc": ["body", "config", "n_embd"], "msg": "must be divisible by n_head"}
    e = from_response(_answer(422, {"detail": [loc, {"loc": ["query", "status"], "msg": "unknown status"}]}))
    assert type(e) is gptjobs.ValidationError and e.status == 422
    assert e.fields == {"config.n_embd": "must be divisible by n_head", "status": "unknown status"}
    assert str(e) == (
        "the server refused the request (422):\n  config.n_embd: must be divisible by n_head\n  status: unknown status"
    )
    assert e.errors[0] == loc

    e = from_response(_answer(404, {"detail": "run 'nosuchrun' not found"}))
    assert type(e) is gptjobs.NotFound and (e.status, e.detail) == (404, "run 'nosuchrun' not found")
    assert str(e) == "404 Not Found: run 'nosuchrun' not found"
    for status, cls in ((401, gptjobs.Unauthorized), (403, gptjobs.Forbidden), (409, gptjobs.Conflict)):
        assert type(from_response(_answer(status, {"detail": "no"}))) is cls
    e = from_response(_answer(429, {"detail": "limit reached"}, **{"Retry-After": "17"}))
    assert isinstance(e, gptjobs.RateLimited) and e.retry_after == 17.0
    e = from_response(_answer(503, text="<html><body>\n  Bad   gateway\n</body></html>"))
    assert (
        type(e) is gptjobs.ServerError and str(e) == "503 Service Unavailable: <html><body> Bad gateway </body></html>"
    )
    e = from_response(_answer(422, {"detail": "not a list"}))  # no fields to name: refused, not bad input
    assert type(e) is gptjobs.APIError and client.exit_code(e) == 4
    assert client.exit_code(gptjobs.ValidationError("x", 422, [])) == 2
    assert all(issubclass(c, gptjobs.GptjobsError) for c in (gptjobs.APIError, gptjobs.Unreachable, gptjobs.Timeout))


def test_no_server_is_unreachable() -> None:
    with gptjobs.Client(f"127.0.0.1:{free_port()}", key="k") as c:
        assert c.server.startswith("http://127.0.0.1:")
        with pytest.raises(gptjobs.Unreachable, match=r"cannot reach the server at http://127\.0\.0\.1:"):
            c.runs.list()


def test_server_and_key_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPTJOBS_SERVER", raising=False)
    monkeypatch.setenv("GPTJOBS_KEY", "gj_env")
    c = gptjobs.Client()
    assert c.server == "http://127.0.0.1:8000" and c._transport.headers == {"Authorization": "Bearer gj_env"}
    monkeypatch.setenv("GPTJOBS_SERVER", "https://train.example/")
    c = gptjobs.Client(key="")
    assert c.server == "https://train.example" and c._transport.headers == {}
    assert c._transport.ws_url("/runs/r/stream") == "wss://train.example/runs/r/stream"


def test_typed_values_keep_the_json_they_came_from() -> None:
    data = {
        "id": "r1", "name": None, "status": "succeeded", "reason": "trained 40 iterations", "config": {"max_iters": 40},
        "attempt": 1, "restarts": 0, "max_restarts": None, "created_at": "2026-01-02T03:04:05.5Z",
        "started_at": None, "finished_at": "2026-01-02T03:05:00Z", "sweep": "s1",
        "progress": {"iter": 39, "loss": 2.5, "warnings": [{"code": "low_mfu", "message": "m", "iter": 3}], "new": 1},
        "diagnostics": {"summary": ["fine"], "device": "cpu", "later": True},
    }  # fmt: skip
    run = Run.from_json(data)
    assert run.ended and run.raw["sweep"] == "s1" and run.progress.raw["new"] == 1  # fields no type names yet
    assert run.created_at == datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=UTC) and run.started_at is None
    assert run.progress.iter == 39 and run.progress.warnings == [gptjobs.RunWarning("low_mfu", "m", 3)]
    assert run.diagnostics is not None and run.diagnostics.summary == ["fine"] and run.diagnostics.device == "cpu"
    glance = Run.from_json({"id": "r2", "status": "queued", "progress": {"iter": None, "best_val_loss": None}})
    assert not glance.ended and glance.diagnostics is None and glance.progress.last_seq is None
    result = gptjobs.SampleResult.from_json(
        {
            "samples": [{"text": "a"}, {"text": "b"}],
            "checkpoint_iter": 40,
            "new_tokens": 2,
            "tokens_per_s": None,
            "seed": 7,
        }
    )
    assert (result.text, result.texts, result.seed) == ("a", ["a", "b"], 7)


def test_sampling_defaults_are_the_servers() -> None:
    from api.schemas import SampleRequest  # the test may read the server's code; the library may not

    server = SampleRequest()
    for method in (gptjobs.Runs.sample, gptjobs.Runs.sample_stream):
        defaults = {
            k: p.default for k, p in inspect.signature(method).parameters.items() if k not in ("self", "run_id")
        }
        assert defaults == {k: getattr(server, k) for k in defaults}, method


def test_server_sent_events() -> None:
    lines = [
        "event: start",
        'data: {"a": 1}',
        "",
        ": keep-alive",
        "",
        "data: x",
        "data: y",
        "",
        "event: end",
        "data: z",
    ]
    assert list(sse_events(lines)) == [("start", '{"a": 1}'), ("message", "x\ny"), ("end", "z")]


def test_the_library_needs_httpx_and_websockets_only() -> None:
    code = (
        "import sys, gptjobs\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'numpy', 'fastapi', 'sqlalchemy', 'sqlmodel', 'pydantic', 'celery', 'redis', 'api', 'worker', 'gpt'))\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    allowed = set(sys.stdlib_module_names) | {"httpx", "websockets", "gptjobs", "__future__"}
    files = list((ROOT / "gptjobs").glob("*.py"))
    assert files
    imported: dict[str, set[str]] = {}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                imported.setdefault(f.name, set()).update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.setdefault(f.name, set()).add(node.module.split(".")[0])
    assert not {name: roots - allowed for name, roots in imported.items() if roots - allowed}


class FakeServer:
    """A real WebSocket and HTTP server on loopback (the `websockets` package), standing in for
    the API: `events` is the run's history, `script` decides per connection what the socket
    does, `http` answers plain requests by path."""

    def __init__(self, events: list[dict[str, Any]], script: Any = None) -> None:
        self.events, self.script = events, script or (lambda n, after, ws: self.send_after(ws, after))
        self.http: dict[str, tuple[int, str]] = {}
        self.afters: list[int] = []
        self.server = serve(self._ws, "127.0.0.1", 0, process_request=self._http, compression=None)
        self.url = f"http://127.0.0.1:{self.server.socket.getsockname()[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _http(self, connection: Any, request: Any) -> Any:
        if "upgrade" in request.headers.get("Connection", "").lower():
            return None  # a WebSocket: go on with the handshake
        status, body = self.http.get(request.path, (404, '{"detail": "not here"}'))
        return connection.respond(status, body)

    def _ws(self, ws: Any) -> None:
        after = int(ws.request.path.split("after=")[1])
        self.afters.append(after)
        self.script(len(self.afters), after, ws)

    def send_after(self, ws: Any, after: int, count: int | None = None, replay: int = 0) -> None:
        """Events after `after` (and `replay` before it again, as a resync might), `count` of them."""
        todo = [e for e in self.events if e["seq"] > after - replay]
        for e in todo[:count]:
            ws.send(json.dumps(e))  # spaced JSON: `raw` must be exactly this text

    def close(self) -> None:
        self.server.shutdown()


def _history(n: int) -> list[dict[str, Any]]:
    evs = [{"run_id": "r", "seq": i, "type": "iter", "ts": 1.0 * i, "iter": i - 1} for i in range(1, n)]
    return [*evs, {"run_id": "r", "seq": n, "type": "status", "status": "succeeded", "reason": "done"}]


def test_stream_resumes_from_the_last_seq_without_duplicates_or_gaps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_module, "backoff", lambda failures: 0.01)

    def script(n: int, after: int, ws: Any) -> None:
        if n <= 3:  # cut three times, mid-history and with a resent seq or two each time
            fake.send_after(ws, after, count=7, replay=2 * (n > 1))
            ws.close_socket()  # no close frame: the connection is just gone
        else:
            fake.send_after(ws, after, replay=2)
            ws.close(1000, "run ended")

    fake = FakeServer(_history(30), script)
    notes: list[str] = []
    try:
        with gptjobs.Client(fake.url) as c, c.runs.stream("r", notify=notes.append) as events:
            got = [(ev["seq"], events.raw) for ev in events]
    finally:
        fake.close()
    assert [seq for seq, _ in got] == list(range(1, 31))
    assert [raw for _, raw in got] == [json.dumps(e) for e in fake.events]
    assert fake.afters == [0, 7, 12, 17]  # each reconnect from the last seq yielded
    assert sum("connection lost; reconnecting in" in n for n in notes) == 3
    assert [n for n in notes if n.startswith("reconnected")] == [
        f"reconnected; continuing after seq {s}" for s in (7, 12, 17)
    ]
    assert events.final is not None and events.final["status"] == "succeeded"


def test_stream_endings_and_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    def script(n: int, after: int, ws: Any) -> None:
        if ws.request.path.startswith("/runs/gone/"):
            ws.close(4404, "run not found")
        elif ws.request.path.startswith("/runs/quiet/"):
            ws.recv()  # until the client leaves
        else:
            fake.send_after(ws, after)
            ws.close(1000)

    fake = FakeServer(_history(5), script)
    fake.http["/runs/r"] = (200, json.dumps({"id": "r", "status": "succeeded", "reason": "done"}))
    fake.http["/runs/quiet"] = (200, json.dumps({"id": "quiet", "status": "running", "progress": {"last_seq": 3}}))
    try:
        with gptjobs.Client(fake.url) as c:
            whole = c.runs.stream("r")
            last = next(ev for ev in whole if ev["type"] == "status")  # leaving at the final event
            whole.close()
            assert whole.final == last and last["seq"] == 5
            late = c.runs.stream("r", after=99)  # nothing after 99: the run's row says it ended
            assert list(late) == [] and late.final == {
                "type": "status",
                "seq": 99,
                "status": "succeeded",
                "reason": "done",
            }
            with pytest.raises(gptjobs.NotFound, match=r"^run not found \(4404\)$") as e:
                list(c.runs.stream("gone"))
            assert e.value.status == 404
            t0 = time.monotonic()
            with pytest.raises(gptjobs.Timeout, match="had not ended"):
                c.runs.wait("quiet", timeout=0.5)
            assert time.monotonic() - t0 < 5 and fake.afters[-1] == 3  # followed from the run's newest seq
    finally:
        fake.close()

    monkeypatch.setattr(stream_module, "RECONNECT_GIVE_UP_S", 0.3)
    monkeypatch.setattr(stream_module, "backoff", lambda failures: 0.1)
    c = gptjobs.Client(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(gptjobs.Unreachable, match=r"cannot connect .*; gave up after 0 s without an event"):
        list(c.runs.stream("r", after=3))


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@contextmanager
def http_server(routes: dict[str, tuple[int, str]]) -> Iterator[str]:
    """A real HTTP server on loopback (the standard library's) answering each path from `routes`,
    a body at a time in small writes, as a streamed answer arrives."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, body = routes[self.path]
            self.send_response(status)
            self.send_header("Content-Type", "text/event-stream" if status == 200 else "application/json")
            self.end_headers()
            for line in body.splitlines(keepends=True):
                self.wfile.write(line.encode())
                self.wfile.flush()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_streamed_sample() -> None:
    start = {"checkpoint_iter": 40, "seed": 7, "num_samples": 2}
    end = {
        "samples": [{"text": "ab"}, {"text": "xyz"}],
        "checkpoint_iter": 40,
        "new_tokens": 5,
        "tokens_per_s": 9.0,
        "seed": 7,
    }
    pieces = (("a", "x"), ("", "y"), ("b", "z"))
    routes = {
        "/runs/r/samples": (
            200,
            _sse("start", start)
            + "".join(_sse("message", {"samples": [{"text": a}, {"text": b}]}) for a, b in pieces)
            + _sse("end", end),
        ),
        "/runs/broken/samples": (
            200,
            _sse("start", {**start, "num_samples": 1})
            + _sse("error", {"status": 504, "detail": "the worker went quiet"}),
        ),
        "/runs/early/samples": (409, json.dumps({"detail": "run early has no checkpoint yet"})),
    }
    with http_server(routes) as url, gptjobs.Client(url) as c:
        s = c.runs.sample_stream("r", "ROMEO:", num_samples=2, seed=7)
        assert (s.checkpoint_iter, s.seed, s.num_samples) == (40, 7, 2)
        assert list(s) == ["a", "b"]  # the first sample's pieces; an empty one is no news
        assert s.texts == ["ab", "xyz"] and s.result is not None and s.result.texts == ["ab", "xyz"]
        broken = c.runs.sample_stream("broken")
        with pytest.raises(gptjobs.ServerError, match=r"^sampling stopped: 504: the worker went quiet$"):
            list(broken)
        with pytest.raises(gptjobs.Conflict, match="has no checkpoint yet"):
            c.runs.sample_stream("early")  # refused before any text: raised by the call itself


def test_a_sweep_file_is_json_or_yaml_and_a_bad_one_says_why(tmp_path: Path) -> None:
    from api.cli_sweeps import load_spec

    spec = {"config": {"n_layer": 2}, "parameters": {"learning_rate": {"min": 1e-4, "max": 1e-2, "log": True}}}
    (tmp_path / "s.json").write_text(json.dumps(spec))
    (tmp_path / "s.yaml").write_text(
        "config: {n_layer: 2}\nparameters:\n  learning_rate: {min: 1.0e-4, max: 1.0e-2, log: true}\n"
    )
    assert load_spec(str(tmp_path / "s.json")) == load_spec(str(tmp_path / "s.yaml")) == spec
    (tmp_path / "bad.yaml").write_text("config: [unclosed\n")
    (tmp_path / "list.json").write_text("[1, 2]")
    for name, why in [
        ("bad.yaml", "not valid YAML"),
        ("list.json", "expected a mapping"),
        ("none.json", "cannot read"),
    ]:
        with pytest.raises(ClientError, match=why) as e:
            load_spec(str(tmp_path / name))
        assert e.value.code == 2


def test_the_sweep_table_stars_the_best_run_and_counts_iterations_done() -> None:
    from api.cli_sweeps import table

    run = {"trial": 0, "name": None, "reason": None, "max_iters": 300}
    sweep = gptjobs.Sweep.from_json(
        {
            "id": "w1",
            "status": "running",
            "method": "grid",
            "parameters": {"learning_rate": {"values": [1e-3, 1e-2]}},
            "max_runs": 2,
            "left": 0,
            "best": {"run": "a", "params": {"learning_rate": 1e-3}, "val_loss": 2.5, "status": "succeeded"},
            "runs": [
                run
                | {
                    "id": "a",
                    "status": "succeeded",
                    "params": {"learning_rate": 1e-3},
                    "best_val_loss": 2.5,
                    "iter": 299,
                },
                run
                | {
                    "id": "b",
                    "trial": 1,
                    "status": "running",
                    "params": {"learning_rate": 1e-2},
                    "best_val_loss": 3.0,
                    "iter": 99,
                },
            ],
        }
    )
    lines = table(sweep)
    assert lines[0] == "sweep w1: running  grid, 2/2 runs started, 0 left  best val loss 2.5000 (run a)"
    assert lines[1].split() == ["#", "RUN", "STATUS", "LEARNING_RATE", "ITER", "BEST", "VAL"]
    assert lines[2].split() == ["0", "a", "succeeded", "0.001", "300/300", "2.5000", "*"]
    assert lines[3].split() == ["1", "b", "running", "0.01", "100/300", "3.0000"]

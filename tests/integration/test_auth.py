"""API keys, owners and quotas against the real server (`gptjobs serve` on loopback, a real
redis-server, SQLite). No worker: every answer here comes before a run reaches one."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from api.cli import gptjobs_argv, serve_argv
from api.migrate import upgrade
from tests.harness import ROOT, TINY, Stack, free_port, gptjobs, service_env, stop


@dataclass
class Server:
    url: str
    env: dict[str, str]
    keys: dict[str, str]
    log: Path

    def client(self, who: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def _new_keys(env: dict[str, str], names: list[str]) -> dict[str, str]:
    """`gptjobs keys create --name NAME` for each name, side by side; the keys they print."""
    procs = {
        name: subprocess.Popen(
            gptjobs_argv("keys", "create", "--name", name),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    }
    keys = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        keys[name] = out.strip().splitlines()[-1]
    return keys


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    limits = {"GPTJOBS_MAX_ACTIVE_RUNS": "2", "GPTJOBS_MAX_ITERS": "10000"}
    with Stack(tmp_path_factory.mktemp("auth"), env=limits) as stack:
        stack.start_redis()
        stack.migrate()
        keys = _new_keys(stack.env, ["alice", "bob", "carol", "erin"])
        stack.start_api()
        yield Server(stack.url, stack.env, keys, stack.logs / "api.log")


def _ws_close_code(url: str, headers: dict[str, str] | None = None) -> int | None:
    with connect(url, additional_headers=headers or {}, open_timeout=10) as ws:
        try:
            ws.recv(timeout=10)
        except ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else None
    return None


def test_an_owner_cannot_reach_another_owners_run(server: Server) -> None:
    with server.client("alice") as alice, server.client("bob") as bob:
        resp = alice.post("/runs", json={"config": TINY})
        assert resp.status_code == 201, resp.text
        run_id = resp.json()["id"]
        assert alice.get(f"/runs/{run_id}").status_code == 200
        for method, path, body in [
            ("GET", f"/runs/{run_id}", None),
            ("GET", f"/runs/{run_id}/events", None),
            ("GET", f"/runs/{run_id}/log", None),
            ("GET", f"/runs/{run_id}/checkpoints", None),
            ("GET", f"/runs/{run_id}/checkpoints/latest", None),
            ("POST", f"/runs/{run_id}/samples", {"prompt": "a", "max_new_tokens": 1}),
            ("POST", f"/runs/{run_id}/cancel", None),
        ]:
            resp = bob.request(method, path, json=body)
            assert resp.status_code == 404, (method, path, resp.status_code, resp.text)
            assert resp.json()["detail"] == f"run {run_id!r} not found"  # the same as an id that never existed
        assert run_id not in {r["id"] for r in bob.get("/runs").json()["runs"]}
        assert run_id in {r["id"] for r in alice.get("/runs").json()["runs"]}
        ws = server.url.replace("http", "ws") + f"/runs/{run_id}/stream"
        assert _ws_close_code(ws, {"Authorization": f"Bearer {server.keys['bob']}"}) == 4404
        assert _ws_close_code(ws + f"?token={server.keys['bob']}") == 4404
        assert _ws_close_code(ws) == 4401
        assert _ws_close_code(ws + "?token=gj_wrong") == 4401
        # Nor start from it: init_from run:<id> names the caller's own runs only.
        child = {"config": {**TINY, "init_from": f"run:{run_id}"}}
        refused = bob.post("/runs", json=child)
        assert refused.status_code == 422 and f"no run {run_id!r} of yours" in refused.text
        own = alice.post("/runs", json=child)  # hers, but queued: no checkpoint to start from yet
        assert own.status_code == 422 and f"run {run_id} has no checkpoint latest" in own.text
        assert alice.post(f"/runs/{run_id}/cancel").status_code == 200  # the owner still can
    # The key a browser puts in the socket's URL stays out of the server's log.
    logged = server.log.read_text()
    assert "token=***" in logged and server.keys["bob"] not in logged


def test_idempotency_keys_are_each_owners_own(server: Server) -> None:
    with server.client("alice") as alice, server.client("bob") as bob:
        headers = {"Idempotency-Key": "nightly-1"}
        first = alice.post("/runs", json={"config": TINY}, headers=headers)
        assert first.status_code == 201, first.text
        again = alice.post("/runs", json={"config": TINY}, headers=headers)
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        # Another owner's use of the same key is a new run of theirs, not a 409 telling them it exists.
        theirs = bob.post("/runs", json={"config": {**TINY, "n_layer": 2}}, headers=headers)
        assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
        assert alice.post(f"/runs/{first.json()['id']}/cancel").status_code == 200  # room under the quota
        assert bob.post(f"/runs/{theirs.json()['id']}/cancel").status_code == 200


def test_no_key_or_a_wrong_one_is_401(server: Server) -> None:
    for path in ("/runs", "/metrics"):  # metrics name running runs: a key too
        for headers in ({}, {"Authorization": "Bearer gj_nonsense"}, {"Authorization": "Basic dXNlcjpwdw=="}):
            resp = httpx.get(server.url + path, headers=headers)
            assert resp.status_code == 401, resp.text
            assert resp.headers["www-authenticate"] == "Bearer"
            assert "key" in resp.json()["detail"].lower()
    assert httpx.get(server.url + "/healthz").status_code == 200  # health stays open
    with server.client("alice") as alice:
        assert alice.get("/metrics").status_code == 200


def test_a_revoked_key_stops_at_once(server: Server) -> None:
    with server.client("carol") as carol:
        assert carol.get("/runs").status_code == 200
        listed = gptjobs(server.env, "keys", "list").stdout
        key_id = next(line.split()[0] for line in listed.splitlines() if " carol " in line)
        out = gptjobs(server.env, "keys", "revoke", key_id)
        assert out.returncode == 0 and "revoked 1 key" in out.stdout, out
        resp = carol.get("/runs")
        assert resp.status_code == 401 and "revoked" in resp.json()["detail"]
        assert "revoked" in next(
            line for line in gptjobs(server.env, "keys", "list").stdout.splitlines() if key_id in line
        )


def test_a_socket_ends_when_its_key_is_revoked(server: Server) -> None:
    with server.client("erin") as erin:
        run_id = erin.post("/runs", json={"config": TINY}).json()["id"]  # queued: no worker, the socket waits
    url = server.url.replace("http", "ws") + f"/runs/{run_id}/stream"
    with connect(url, additional_headers={"Authorization": f"Bearer {server.keys['erin']}"}, open_timeout=10) as ws:
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1)  # open, and nothing to send yet
        assert gptjobs(server.env, "keys", "revoke", "--name", "erin").returncode == 0
        t0 = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=15)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert time.monotonic() - t0 < 8


def test_quotas_name_the_limit(server: Server) -> None:
    with server.client("bob") as bob:
        too_long = bob.post("/runs", json={"config": {**TINY, "max_iters": 20000}})
        assert too_long.status_code == 422
        err = too_long.json()["detail"][0]
        assert (
            err["loc"] == ["body", "config", "max_iters"]
            and "10000" in err["msg"]
            and "GPTJOBS_MAX_ITERS" in err["msg"]
        )
        ids = []
        for _ in range(2):
            resp = bob.post("/runs", json={"config": TINY})
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["id"])
        third = bob.post("/runs", json={"config": TINY})
        assert third.status_code == 429, third.text
        assert "at most 2" in third.json()["detail"] and "GPTJOBS_MAX_ACTIVE_RUNS" in third.json()["detail"]
        with server.client("alice") as alice:  # a limit per owner: alice's count is her own
            resp = alice.post("/runs", json={"config": TINY})
            assert resp.status_code == 201, resp.text
        assert bob.post(f"/runs/{ids[0]}/cancel").status_code == 200
        assert bob.post("/runs", json={"config": TINY}).status_code == 201  # room again

    # The sampling limit per minute: tests/integration/test_rate_limit.py, on a clock it sets.


def test_open_mode_only_on_loopback(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'gptjobs.db'}"
    upgrade(db_url)
    env = service_env(tmp_path, f"redis://127.0.0.1:{free_port()}/0", db_url)
    out = gptjobs(env, "serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert out.returncode == 2
    assert "refusing to serve on 0.0.0.0 with no API keys" in out.stderr
    # On loopback it starts, and says it is open.
    argv = serve_argv("127.0.0.1", free_port())
    p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stderr is not None
        assert "no API keys, so the API on 127.0.0.1 is open" in p.stderr.readline()
    finally:
        stop(p)


def _outward_ip() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_open_mode_refuses_non_loopback_requests_however_started(tmp_path: Path) -> None:
    ip = _outward_ip()
    if ip is None:
        pytest.skip("NO NON-LOOPBACK ADDRESS ON THIS MACHINE: open mode's per-request guard NOT TESTED")
    with Stack(tmp_path) as stack:
        stack.start_redis()
        stack.migrate()
        # Plain uvicorn on every address: `gptjobs serve`'s start-up check never runs.
        uvicorn = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", str(stack.api_port)]
        stack.start_api(argv=uvicorn)
        assert httpx.get(stack.url + "/runs").status_code == 200
        outside = httpx.get(f"http://{ip}:{stack.api_port}/runs")
        assert outside.status_code == 403 and "only on loopback" in outside.json()["detail"]
        assert _ws_close_code(f"ws://{ip}:{stack.api_port}/runs/x/stream") == 4403


def test_revoking_every_key_does_not_open_the_server(tmp_path: Path) -> None:
    from api.auth import Unauthorized, create_key, open_mode, owner_of, revoke
    from api.db import Database

    db_url = f"sqlite:///{tmp_path / 'gptjobs.db'}"
    upgrade(db_url)
    db = Database(db_url)
    assert open_mode(db) and owner_of(db, None) is None
    create_key(db, "solo")
    assert revoke(db, name="solo") == 1
    assert not open_mode(db)
    with pytest.raises(Unauthorized):
        owner_of(db, None)

"""Bad input gets a 4xx that names the field and the reason, never a 500: the app in-process,
against a real SQLite database and a real Redis (no workers: nothing here needs one)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.harness import TINY, app_client, redis_server

LIMIT = 4096
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
def client(tmp_path: Path, redis_url: str) -> Iterator[TestClient]:
    with app_client(tmp_path, redis_url, max_body_bytes=LIMIT) as c:
        yield c


def _errors(resp) -> dict[str, str]:  # type: ignore[no-untyped-def]
    assert resp.status_code == 422, resp.text
    return {"/".join(map(str, e["loc"])): e["msg"] for e in resp.json()["detail"]}


def _padded(body: dict, size: int) -> bytes:
    """The JSON body, padded with whitespace to exactly `size` bytes."""
    raw = json.dumps(body).encode()
    return raw + b" " * (size - len(raw))


def _chunks(data: bytes, n: int = 1000) -> Iterator[bytes]:
    """A body without Content-Length: httpx sends a generator chunked."""
    for i in range(0, len(data), n):
        yield data[i : i + n]


TOO_BIG = {"detail": f"request body over {LIMIT} bytes (GPTJOBS_MAX_BODY_BYTES)"}


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    bad = {"config": {"n_layer": 0}}  # a 422 once read: shows the app saw the whole body
    at_limit, over = _padded(bad, LIMIT), _padded(bad, LIMIT + 1)
    assert "body/config/n_layer" in _errors(client.post("/runs", content=at_limit, headers=JSON))
    resp = client.post("/runs", content=over, headers=JSON)
    assert resp.status_code == 413 and resp.json() == TOO_BIG
    resp = client.post("/runs/nope/samples", content=b"{}" + b" " * 10 * LIMIT, headers=JSON)
    assert resp.status_code == 413  # before the run is looked up


def test_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    bad = {"config": {"n_layer": 0}}
    resp = client.post("/runs", content=_chunks(_padded(bad, LIMIT)), headers=JSON)
    assert "content-length" not in resp.request.headers
    assert "body/config/n_layer" in _errors(resp)  # read, put back together, and validated
    resp = client.post("/runs", content=_chunks(_padded(bad, LIMIT + 1)), headers=JSON)
    assert resp.status_code == 413 and resp.json() == TOO_BIG


def test_malformed_json_and_wrong_types_are_422(client: TestClient) -> None:
    errors = _errors(client.post("/runs", content=b'{"config": {', headers=JSON))
    assert any(k.startswith("body") and "JSON" in v for k, v in errors.items()), errors
    assert "body/name" in _errors(client.post("/runs", json={"name": 5}))
    assert "body/confg" in _errors(client.post("/runs", json={"confg": TINY}))  # not a default-sized run
    assert "body/config" in _errors(client.post("/runs", json={"config": "n_layer=2"}))
    assert "body/config/n_layer" in _errors(client.post("/runs", json={"config": {**TINY, "n_layer": "two"}}))
    assert "body/temperature" in _errors(client.post("/runs/nope/samples", json={"temperature": "hot"}))
    assert "body/stream" in _errors(client.post("/runs/nope/samples", json={"stream": [1]}))
    assert "query/limit" in _errors(client.get("/runs", params={"limit": "ten"}))
    assert "query/after" in _errors(client.get("/runs/nope/events", params={"after": -1}))
    assert "query/follow" in _errors(client.get("/runs/nope/log", params={"follow": "maybe"}))


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ('{"n_layer": 1000000000000000000000000000000}', "n_layer", "below 2**62"),
        ('{"seed": -1000000000000000000000000000000}', "seed", "below 2**62"),
        ('{"max_iters": 1e400}', "max_iters", "integer"),  # Python's JSON reads 1e400 as inf
        ('{"learning_rate": 1e400}', "learning_rate", "finite"),
        ('{"learning_rate": NaN}', "learning_rate", "finite"),
        ('{"dropout": -Infinity}', "dropout", "finite"),
        ('{"sample_prompts": ["\\ud800"]}', "sample_prompts", "Unicode"),  # a lone surrogate
    ],
)
def test_huge_and_non_finite_config_values_are_422(client: TestClient, raw: str, field: str, words: str) -> None:
    config = json.dumps(TINY)[:-1] + ", " + raw[1:]
    errors = _errors(client.post("/runs", content=f'{{"config": {config}}}', headers=JSON))
    assert words in errors[f"body/config/{field}"], errors


def test_huge_numbers_are_422(client: TestClient) -> None:
    huge = 10**30
    for path in ("/runs/nope/events", "/runs/nope/log"):
        assert "query/after" in _errors(client.get(path, params={"after": huge}))
    for key in ("seed", "top_k", "max_new_tokens", "num_samples", "checkpoint"):
        assert any(k.startswith(f"body/{key}") for k in _errors(client.post("/runs/nope/samples", json={key: huge})))
    errors = _errors(client.post("/runs/nope/samples", content=b'{"temperature": 1e400}', headers=JSON))
    assert "finite" in errors["body/temperature"]
    # The largest seq a database integer holds is still a fine cursor.
    run_id = client.post("/runs", json={"config": TINY}).json()["id"]  # queued: no worker takes it
    page = client.get(f"/runs/{run_id}/events", params={"after": 2**63 - 1})
    assert page.status_code == 200 and page.json()["events"] == []


@pytest.mark.parametrize("name", ["nul\x00", "esc\x1b[2Jcleared", "two\nlines", "bell\x07", "del\x7f", "c1\x85"])
def test_control_characters_in_name_are_422(client: TestClient, name: str) -> None:
    errors = _errors(client.post("/runs", json={"name": name, "config": TINY}))
    assert "control characters" in errors["body/name"]
    assert client.get("/runs").json()["runs"] == []  # nothing was stored


def test_hostile_run_ids_are_4xx(client: TestClient) -> None:
    assert "path/run_id" in _errors(client.get("/runs/a%00b"))  # PostgreSQL would refuse the NUL
    assert client.get("/runs/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert client.get("/runs/" + "x" * 33).status_code == 422


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/runs/nope"),
        ("post", "/runs/nope/cancel"),
        ("get", "/runs/nope/events"),
        ("get", "/runs/nope/log"),
        ("get", "/runs/nope/log?follow=true"),
        ("post", "/runs/nope/samples"),
        ("get", "/runs/nope/checkpoints"),
        ("get", "/runs/nope/checkpoints/latest"),
    ],
)
def test_unknown_run_is_404_everywhere(client: TestClient, method: str, path: str) -> None:
    resp = client.request(method, path, json={} if method == "post" else None)
    assert resp.status_code == 404, resp.text
    assert "nope" in resp.json()["detail"]

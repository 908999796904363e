"""The API against a real SQLite database, in-process (no Redis needed for these paths)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.harness import TINY, app_client


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    # No Redis: these requests must be answered before Redis is needed.
    with app_client(tmp_path, max_params=1_000_000) as c:
        yield c


def _errors(resp) -> dict[str, str]:  # type: ignore[no-untyped-def]
    assert resp.status_code == 422, resp.text
    return {"/".join(map(str, e["loc"])): e["msg"] for e in resp.json()["detail"]}


@pytest.mark.parametrize(
    ("config", "field", "words"),
    [
        ({"n_layer": 0}, "n_layer", "positive"),
        ({"n_embd": 30, "n_head": 4}, "n_embd", "divisible by n_head"),
        ({"learning_rate": "fast"}, "learning_rate", "number"),
        ({"dropout": 1.5}, "dropout", "[0, 1)"),
        ({"dataset": "/etc/passwd"}, "dataset", "unknown dataset"),
        ({"nonsense_key": 1}, "nonsense_key", "unknown key"),
        ({"n_layer": 48, "n_embd": 1024, "n_head": 16}, "n_layer", "too large"),
        ({"init_from": "gpt3"}, "init_from", "must be one of"),
        ({"init_from": "gpt2-xl"}, "dataset", "weights of gpt2-xl were trained with gpt2"),
    ],
)
def test_bad_config_is_422_naming_the_field(client: TestClient, config: dict, field: str, words: str) -> None:
    errors = _errors(client.post("/runs", json={"config": {**TINY, **config}}))
    assert f"body/config/{field}" in errors, errors
    assert words in errors[f"body/config/{field}"]


def test_every_bad_field_is_named_at_once(client: TestClient) -> None:
    errors = _errors(client.post("/runs", json={"config": {"n_layer": -1, "dropout": 2, "bogus": 1}}))
    assert {"body/config/n_layer", "body/config/dropout", "body/config/bogus"} <= set(errors)


def test_bad_body_and_queries(client: TestClient) -> None:
    assert "body/config" in _errors(client.post("/runs", json={"config": [1, 2]}))
    assert "body/name" in _errors(client.post("/runs", json={"name": "x" * 201}))
    assert "query/status" in _errors(client.get("/runs?status=done"))
    assert "query/cursor" in _errors(client.get("/runs?cursor=%%%"))
    assert "query/limit" in _errors(client.get("/runs?limit=0"))


def test_unknown_run_is_404(client: TestClient) -> None:
    for method, path in [("get", "/runs/nope"), ("post", "/runs/nope/cancel"), ("get", "/runs/nope/events")]:
        resp = getattr(client, method)(path)
        assert resp.status_code == 404, (path, resp.text)
        assert "not found" in resp.json()["detail"]
    assert client.get("/runs/nope/log").status_code == 404


def test_empty_list_and_docs(client: TestClient) -> None:
    assert client.get("/runs").json() == {"runs": [], "next_cursor": None}
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"404", "409", "422"} <= set(spec["paths"]["/runs/{run_id}/cancel"]["post"]["responses"])


def test_healthz_names_what_is_down(client: TestClient) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 503
    assert resp.json()["database"] == "ok" and resp.json()["redis"].startswith("error")


def test_a_run_that_cannot_be_queued_fails_with_its_history_ended(client: TestClient) -> None:
    resp = client.post("/runs", json={"config": TINY})  # Redis (the queue) is down
    assert resp.status_code == 503 and "could not queue the run" in resp.json()["detail"]
    run = client.get("/runs").json()["runs"][0]
    assert run["status"] == "failed" and run["reason"].startswith("could not queue the run")
    events = client.get(f"/runs/{run['id']}/events").json()["events"]
    assert [(e["seq"], e["type"], e["status"]) for e in events] == [(1, "status", "failed")]


def test_pretrained_weights_that_cannot_be_had_are_refused_saying_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    config = {"dataset": "shakespeare", "init_from": "gpt2", "max_iters": 10}
    with app_client(tmp_path) as client:  # the default size limit: gpt2's 124M parameters pass it
        errors = _errors(client.post("/runs", json={"config": config}))
    assert "not in this server's Hugging Face cache" in errors["body/config/init_from"]
    assert (
        "POST /runs/import" in errors["body/config/init_from"] and "HF_HUB_OFFLINE" in errors["body/config/init_from"]
    )


def test_an_import_over_the_upload_limit_is_413_before_it_is_read(tmp_path: Path) -> None:
    with app_client(tmp_path, max_upload_bytes=1000) as client:
        resp = client.post("/runs/import", files={"file": ("ckpt.pt", b"x" * 5000)})
    assert resp.status_code == 413 and "GPTJOBS_MAX_UPLOAD_BYTES" in resp.json()["detail"]

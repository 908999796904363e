"""Each owner's dataset limits, in the API in-process against a real redis-server and SQLite
(no prepare worker: every answer here comes at the request): bytes per upload, bytes stored,
datasets per owner, each a 413 or 429 naming its setting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.harness import app_client, redis_server


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    limits = {"max_upload_bytes": 1000, "max_stored_bytes": 2500, "max_datasets": 3}
    with redis_server() as redis_url, app_client(tmp_path, redis_url, **limits) as c:
        yield c


def _post(client: TestClient, name: str, size: int) -> tuple[int, str]:
    resp = client.post("/datasets", files={"file": (f"{name}.txt", b"a" * size)}, data={"name": name})
    return resp.status_code, resp.text


def test_bytes_per_upload(client: TestClient) -> None:
    resp = client.post("/uploads", json={"filename": "big.txt", "bytes": 1001})
    assert resp.status_code == 413 and "1000 per upload (GPTJOBS_MAX_UPLOAD_BYTES)" in resp.text
    status, text = _post(client, "big", 1001)
    assert status == 413 and "GPTJOBS_MAX_UPLOAD_BYTES" in text
    assert client.post("/uploads", json={"filename": "ok.txt", "bytes": 1000}).status_code == 201


def test_bytes_stored_count_datasets_and_open_uploads(client: TestClient) -> None:
    assert _post(client, "one", 1000)[0] == 202
    assert client.post("/uploads", json={"filename": "two.txt", "bytes": 1000}).status_code == 201  # open: counted
    status, text = _post(client, "three", 600)
    assert status == 413 and "stores 2000 bytes; 600 more is over 2500 (GPTJOBS_MAX_STORED_BYTES)" in text
    assert _post(client, "three", 500)[0] == 202


def test_datasets_per_owner(client: TestClient) -> None:
    for name in ("a", "b", "c"):
        assert _post(client, name, 10)[0] == 202
    status, text = _post(client, "d", 10)
    assert status == 429 and "3 datasets" in text and "GPTJOBS_MAX_DATASETS" in text
    status, text = _post(client, "a", 10)
    assert status == 409 and "already have a dataset named 'a'" in text  # said before any limit


def test_an_abandoned_upload_is_removed(tmp_path: Path) -> None:
    from api.datasets import expire_uploads
    from api.db import Database
    from api.settings import Settings

    with redis_server() as redis_url, app_client(tmp_path, redis_url, upload_ttl_s=0.5) as client:
        old = client.post("/uploads", json={"filename": "a.txt", "bytes": 10}).json()
        time.sleep(0.6)
        fresh = client.post("/uploads", json={"filename": "b.txt", "bytes": 10}).json()
        assert old["expires_at"] < fresh["expires_at"]
        settings = Settings(data_dir=tmp_path, redis_url=redis_url, upload_ttl_s=0.5)
        db = Database(settings.db_url)
        try:
            assert expire_uploads(db, settings) == [old["id"]]  # what the reaper does once a minute
        finally:
            db.dispose()
        assert client.get(f"/uploads/{old['id']}").status_code == 404
        uploads = tmp_path / "uploads"
        assert not (uploads / old["id"]).exists() and (uploads / fresh["id"] / "data").exists()
        assert client.get(f"/uploads/{fresh['id']}").status_code == 200

"""The per-owner sampling limit (GPTJOBS_SAMPLE_REQUESTS_PER_MIN) in the API, in-process,
against a real redis-server and SQLite, on a clock the test sets: a window is the clock's
minute, so the test stands inside one instead of waiting for the wall clock to start one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.harness import TINY, app_client, redis_server


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[TestClient, Clock]]:
    clock = Clock(1_000 * 60 + 50.0)  # 50 s into a minute: 10 s of it left
    with redis_server() as redis_url, app_client(tmp_path, redis_url, clock=clock, sample_requests_per_min=2) as client:
        yield client, clock


def test_samples_over_the_limit_are_429_until_the_next_minute(app: tuple[TestClient, Clock]) -> None:
    client, clock = app
    run_id = client.post("/runs", json={"config": TINY}).json()["id"]  # queued: no worker takes it
    answers = [client.post(f"/runs/{run_id}/samples", json={"max_new_tokens": 1}) for _ in range(3)]
    assert [a.status_code for a in answers[:2]] == [409, 409]  # no checkpoint yet, but counted
    assert answers[2].status_code == 429
    assert "at most 2 sample requests a minute" in answers[2].json()["detail"]
    assert "GPTJOBS_SAMPLE_REQUESTS_PER_MIN" in answers[2].json()["detail"]
    assert answers[2].headers["retry-after"] == "10"  # the rest of this minute
    clock.now += 9
    assert client.post(f"/runs/{run_id}/samples", json={}).headers["retry-after"] == "1"
    clock.now += 1  # the next minute: a new window
    assert client.post(f"/runs/{run_id}/samples", json={}).status_code == 409

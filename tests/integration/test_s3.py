"""Artifacts on an object store, with no disk shared between the processes: the API, two
training workers, a sampling and a prepare worker each with a data directory of its own, and
the artifacts in an S3 endpoint on loopback (moto's server mode, a stand-in for S3 or MinIO:
the same HTTP API, spoken by the same s3fs and boto). A run trains there, samples, downloads
byte for byte what the store holds, exports to Hugging Face and is continued by another run,
with nothing of it written to any of the directories; a dataset uploads (whole, and in
parts), prepares and trains on both training workers, each from its own cached copy."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.cli import serve_argv
from gpt.store import Store
from tests.harness import Stack, free_port, s3_server, s3_settings, wait_for

PREFIX = "s3://gptjobs/service"
RUN = {"max_iters": 20, "eval_interval": 10, "eval_iters": 2}
NODES = ("train", "sample", "prepare", "train2")

pytestmark = pytest.mark.store_specific  # it picks its stores itself


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Store]]:
    root = tmp_path_factory.mktemp("gptjobs-s3")
    with s3_server() as env:
        settings = {
            **env,
            **s3_settings(PREFIX),  # checkpoints go up in parts
            "GPTJOBS_UPLOAD_PART_BYTES": str(100_000),  # a dataset's upload in several parts
        }
        with Stack(root / "api", env=settings) as stack:
            stack.up(train=0)
            for node in NODES:  # each on a machine of its own, as far as disks go
                stack.start_worker(node.rstrip("0123456789"), env={"GPTJOBS_DATA_DIR": str(root / node)})
            import os

            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)  # for this process's own Store, reading what the service wrote
            try:
                yield stack, Store(PREFIX)
            finally:
                for k, v in saved.items():
                    os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def trained(s3: tuple[Stack, Store]) -> str:
    stack, _ = s3
    run = stack.submit(RUN)
    done = stack.wait_status(run["id"], {"succeeded", "failed"}, timeout=180)
    assert done["status"] == "succeeded", done
    return str(run["id"])


def test_a_run_trains_into_the_store_and_nowhere_else(s3: tuple[Stack, Store], trained: str) -> None:
    stack, store = s3
    names = store.list(f"runs/{trained}")
    assert {"ckpt.pt", "best.pt", "model.json", "checkpoints.json"} <= set(names), names
    assert {n for n in names if n.startswith("ckpt-")} == {"ckpt-10.pt", "ckpt-20.pt"}
    for d in (stack.root, *(stack.root.parent / node for node in NODES)):
        assert not (d / "runs").exists(), f"{d} has a runs directory"
    listed = stack.http.get(f"/runs/{trained}/checkpoints").json()["checkpoints"]
    assert [c["iter"] for c in listed] == [10, 20]
    assert [c["latest"] for c in listed] == [False, True]
    assert sum(c["best"] for c in listed) == 1
    ev = [e for e in stack.events(trained) if e["type"] == "checkpoint"][-1]
    assert ev["path"] == f"{PREFIX}/runs/{trained}/ckpt.pt"


def test_its_checkpoint_downloads_byte_for_byte(s3: tuple[Stack, Store], trained: str, tmp_path: Path) -> None:
    stack, store = s3
    for which, name in (("latest", "ckpt.pt"), ("best", "best.pt"), ("10", "ckpt-10.pt")):
        r = stack.http.get(f"/runs/{trained}/checkpoints/{which}")
        assert r.status_code == 200, r.text
        assert r.headers["content-length"] == str(len(r.content))
        assert r.content == store.read_bytes(f"runs/{trained}/{name}"), which
    assert stack.http.get(f"/runs/{trained}/checkpoints/30").status_code == 404


def test_a_sampling_worker_reads_it_from_the_store(s3: tuple[Stack, Store], trained: str) -> None:
    stack, _ = s3
    body = {"prompt": "ROMEO:", "max_new_tokens": 12, "seed": 1, "checkpoint": 10}
    r = stack.http.post(f"/runs/{trained}/samples", json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["samples"][0]["text"]) == 12


def test_the_hugging_face_export_is_kept_in_the_store(s3: tuple[Stack, Store], trained: str) -> None:
    stack, store = s3
    r = stack.http.get(f"/runs/{trained}/checkpoints/best", params={"format": "hf"}, timeout=120)
    assert r.status_code == 200, r.text
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        assert {"config.json", "model.safetensors", "vocab.json"} <= set(tar.getnames())
    (export,) = store.list(f"runs/{trained}/export")
    assert store.read_bytes(f"runs/{trained}/export/{export}") == r.content


def test_a_run_continues_from_it_through_the_store(s3: tuple[Stack, Store], trained: str) -> None:
    stack, store = s3
    child = stack.submit({**RUN, "init_from": f"run:{trained}@best", "max_iters": 10})
    done = stack.wait_status(child["id"], {"succeeded", "failed"}, timeout=180)
    assert done["status"] == "succeeded", done
    assert done["parent"]["run_id"] == trained
    parent = store.read_bytes(f"runs/{trained}/best.pt")
    assert store.read_bytes(f"runs/{child['id']}/parent.pt") == parent  # copied in the store


def test_presigned_downloads_redirect_to_the_store(s3: tuple[Stack, Store], trained: str) -> None:
    stack, store = s3
    port = free_port()  # a second API replica, asked to redirect downloads
    api = stack.start("api-presign", serve_argv("127.0.0.1", port), env={"GPTJOBS_PRESIGN_DOWNLOADS": "true"})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

            def up() -> bool:
                api.check()
                try:
                    return http.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(up, 60, "the second API")
            r = http.get(f"/runs/{trained}/checkpoints/latest")
        assert r.status_code == 307, r.text
        got = httpx.get(r.headers["location"], timeout=30)  # no credentials: the URL carries them
        assert got.status_code == 200 and got.content == store.read_bytes(f"runs/{trained}/ckpt.pt")
    finally:
        api.stop()


def test_a_dataset_uploads_prepares_and_trains_on_two_workers_with_their_own_caches(
    s3: tuple[Stack, Store], tmp_path: Path
) -> None:
    import gptjobs

    stack, store = s3
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(6000)))
    with gptjobs.Client(stack.url, "") as client:
        whole = client.datasets.create(text, "whole", tokenizer="char")
        parts = client.datasets.upload(text, "parts", tokenizer="char", parallel=2)
        for ds in (whole, parts):
            done = client.datasets.wait(ds.id, timeout=120, poll_s=0.2)
            assert done.status == "ready", done.reason
        assert client.datasets.get(whole.id).train_tokens == client.datasets.get(parts.id).train_tokens
    (key,) = _folders(store, "datasets")  # the same bytes, prepared the same way: once
    assert set(store.list(f"datasets/{key}")) == {"train.bin", "val.bin", "meta.json"}
    assert _folders(store, "uploads") == []  # the uploads went once prepared
    runs = [stack.submit({**RUN, "dataset": "parts", "max_iters": 4}) for _ in range(2)]
    for run in runs:
        done = stack.wait_status(run["id"], {"succeeded", "failed"}, timeout=180)
        assert done["status"] == "succeeded", done
    caches = [stack.root.parent / node / "cache" / "datasets" for node in ("train", "train2")]
    for c in caches:  # each training worker trained from a copy of its own
        assert c.is_dir() and len([d for d in c.iterdir() if not d.name.startswith(".")]) == 1, c
    for d in (stack.root, *(stack.root.parent / node for node in NODES)):
        assert not (d / "datasets" / key).exists(), f"{d} holds the prepared dataset"


def _folders(store: Store, prefix: str) -> list[str]:
    try:
        found = store.fs.ls(f"{store.url.removeprefix('s3://')}/{prefix}", detail=True, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(d["name"].rsplit("/", 1)[-1] for d in found if d["type"] == "directory")

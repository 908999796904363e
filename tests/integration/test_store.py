"""The artifact store (gpt/store.py) keeps its promises in both kinds: a local directory, and
an S3 endpoint on loopback (moto's server mode, a stand-in for S3: the same HTTP API that
s3fs and boto speak to S3 or MinIO). An object appears whole or not at all, even when its
writer is killed midway; a refused commit leaves the old object; versions tell contents
apart; keys cannot leave the store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gpt.store import Store
from tests.harness import ROOT, S3_PART_BYTES, open_uploads, s3_server, wait_for

pytestmark = pytest.mark.store_specific  # it picks its stores itself


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    with s3_server() as env:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # s3fs and boto read the endpoint and keys from the environment
        try:
            yield env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(params=["directory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "directory":
        return Store(tmp_path / "artifacts")
    request.getfixturevalue("s3_env")
    return Store(f"s3://gptjobs/t-{tmp_path.name}")


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_an_object_goes_in_and_comes_back(store: Store, tmp_path: Path) -> None:
    data = os.urandom(3 * 2**20 + 17)
    assert store.put_file(_file(tmp_path, "a", data), "runs/r1/ckpt.pt") == len(data)
    info = store.info("runs/r1/ckpt.pt")
    assert info is not None and info.size == len(data)
    assert store.list("runs/r1") == ["ckpt.pt"]
    assert b"".join(store.chunks("runs/r1/ckpt.pt", 2**20)) == data
    store.get_file("runs/r1/ckpt.pt", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data
    assert store.info("runs/r1/none.pt") is None and store.list("runs/none") == []
    with pytest.raises(FileNotFoundError), store.open("runs/r1/none.pt"):
        pass
    with pytest.raises(FileNotFoundError):
        next(store.chunks("runs/r1/none.pt"))
    for _ in range(20):  # a reader that leaves early (a client gone mid-download) gives its connection back
        left = store.chunks("runs/r1/ckpt.pt", 2**20)
        first = next(left)  # up to 1 MiB: what has arrived
        assert first and data.startswith(first)
        left.close()
    assert b"".join(store.chunks("runs/r1/ckpt.pt")) == data


def test_a_new_content_has_a_new_version_and_a_refused_commit_keeps_the_old(store: Store, tmp_path: Path) -> None:
    store.put_file(_file(tmp_path, "a", b"first" * 1000), "k/x")
    v1 = store.info("k/x")
    store.put_file(_file(tmp_path, "b", b"second" * 1000), "k/x")
    v2 = store.info("k/x")
    assert v1 and v2 and v1.version != v2.version

    def refuse() -> None:
        raise PermissionError("the lease is gone")

    with pytest.raises(PermissionError):
        store.put_file(_file(tmp_path, "c", b"third" * 1000), "k/x", before_commit=refuse)
    assert store.read_bytes("k/x") == b"second" * 1000
    assert store.list("k") == ["x"]  # nothing half-written left under the prefix


def test_a_big_object_is_checked_after_its_parts_and_a_refusal_leaves_no_upload(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    """The fence runs as late as S3 allows: with every part sent, just before the completion
    that makes the object visible; refused, the upload is aborted (no parts left billed)."""
    store = Store(f"s3://gptjobs/t-{tmp_path.name}", part_bytes=S3_PART_BYTES)

    def uploads() -> list[dict[str, object]]:
        return open_uploads(store)

    store.put_bytes(b"previous", "runs/r/ckpt.pt")
    big = _file(tmp_path, "big", os.urandom(12 * 2**20 + 5))  # three parts
    seen: list[int] = []

    def refuse() -> None:
        seen.append(len(uploads()))
        raise PermissionError("the lease is gone")

    with pytest.raises(PermissionError):
        store.put_file(big, "runs/r/ckpt.pt", before_commit=refuse)
    assert seen == [1], "the check came before the multipart upload had its parts"
    assert store.read_bytes("runs/r/ckpt.pt") == b"previous"
    assert uploads() == [], "the refused upload was left open"

    store.put_file(big, "runs/r/ckpt.pt", before_commit=lambda: seen.append(len(uploads())))
    assert store.read_bytes("runs/r/ckpt.pt") == big.read_bytes() and uploads() == []


def test_copy_delete_and_small_objects(store: Store, tmp_path: Path) -> None:
    store.put_file(_file(tmp_path, "a", b"weights"), "runs/r/ckpt.pt")
    store.copy("runs/r/ckpt.pt", "runs/r/best.pt")
    store.put_bytes(b'{"iter": 3}', "runs/r/model.json")
    assert store.list("runs/r") == ["best.pt", "ckpt.pt", "model.json"]
    assert store.read_bytes("runs/r/best.pt") == b"weights"
    store.put_file(_file(tmp_path, "b", b"newer"), "runs/r/ckpt.pt")
    assert store.read_bytes("runs/r/best.pt") == b"weights"  # a second name, not an alias
    store.delete("runs/r/best.pt")
    store.delete("runs/r/best.pt")  # gone already: nothing to do
    assert store.list("runs/r") == ["ckpt.pt", "model.json"]
    store.delete_tree("runs/r")
    assert store.list("runs/r") == []


def test_keys_stay_under_the_store(store: Store) -> None:
    for bad in ("../etc/passwd", "runs/../../x", "", "/"):
        with pytest.raises(ValueError, match="not a key"):
            store.info(bad)


def test_a_presigned_url_downloads_without_credentials(store: Store, tmp_path: Path) -> None:
    store.put_file(_file(tmp_path, "a", b"signed bytes"), "runs/r/ckpt.pt")
    url = store.presign("runs/r/ckpt.pt", 60)
    if store.is_local:
        assert url is None  # a directory has no URL of its own: the API serves the file
        return
    assert url is not None
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200 and r.content == b"signed bytes"


_WRITER = """
import sys
from pathlib import Path
from gpt.store import Store
Store(sys.argv[1]).put_file(Path(sys.argv[2]), "runs/r/ckpt.pt")
"""


def test_a_writer_killed_midway_leaves_the_previous_object(store: Store, tmp_path: Path) -> None:
    store.put_file(_file(tmp_path, "old", b"complete"), "runs/r/ckpt.pt")
    big = tmp_path / "big"
    with open(big, "wb") as f:  # big enough that the upload is still going when the kill comes
        for _ in range(120):  # over twice s3fs's 50 MB part: a multipart upload
            f.write(os.urandom(2**20))
    url = store.url if not store.is_local else str(store.root)
    p = subprocess.Popen([sys.executable, "-c", _WRITER, url, str(big)], cwd=ROOT, env=os.environ.copy())
    started = time.monotonic()
    if store.is_local:
        assert store.root is not None
        wait_for(lambda: any((store.root / "runs/r").glob(".ckpt.pt.*.tmp")) or None, 30, "the copy to start")
    else:
        wait_for(lambda: open_uploads(store), 30, "the multipart upload to start")
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    assert p.returncode == -signal.SIGKILL, f"the writer finished before the kill ({time.monotonic() - started:.1f}s)"
    assert store.read_bytes("runs/r/ckpt.pt") == b"complete"


def test_the_cache_fetches_a_folder_once_and_keeps_within_its_bound(s3_env: dict[str, str], tmp_path: Path) -> None:
    from gpt.store import Cache

    store = Store(f"s3://gptjobs/cache-{tmp_path.name}")
    for ds in ("a", "b", "c"):
        for name in ("train.bin", "val.bin"):
            store.put_file(_file(tmp_path, f"{ds}{name}", ds.encode() * 400_000), f"datasets/{ds}/{name}")
    cache = Cache(tmp_path / "cache", max_bytes=2_000_000)  # room for two of the three
    a = cache.folder(store, "datasets/a", ["train.bin", "val.bin"])
    # What a fetch of "a" killed mid-file would have left: the next fetch of it removes it.
    orphan = a.parent / f".{a.name}.x1y2z3.part"
    orphan.mkdir()
    (orphan / "train.bin").write_bytes(b"half")
    shutil.rmtree(a)
    assert cache.folder(store, "datasets/a", ["train.bin", "val.bin"]) == a and not orphan.exists()
    assert (a / "train.bin").read_bytes() == b"a" * 400_000
    store.delete_tree("datasets/a")
    assert cache.folder(store, "datasets/a", ["train.bin", "val.bin"]) == a  # served from disk, not fetched
    with open(a / "train.bin", "rb") as held:  # a trainer still reading it
        time.sleep(0.01)
        b = cache.folder(store, "datasets/b", ["train.bin", "val.bin"])
        time.sleep(0.01)
        c = cache.folder(store, "datasets/c", ["train.bin", "val.bin"])
        assert not a.exists() and b.exists() and c.exists()  # the least recently used went
        assert held.read(3) == b"aaa"  # and its reader reads on
    assert not list((tmp_path / "cache").glob(".*.part"))

    local = Store(tmp_path / "dir")
    local.put_file(_file(tmp_path, "t", b"x"), "datasets/d/train.bin")
    assert cache.folder(local, "datasets/d", ["train.bin"]) == tmp_path / "dir" / "datasets" / "d"

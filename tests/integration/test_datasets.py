"""A user's own data against the real parts: uploads (one request, and resumable parts out of
order, resent and resumed), the prepare worker, runs trained and sampled on the result, a
nanoGPT data directory brought as it is, every bad input's reason, and owners.

One stack for the module: redis-server, `gptjobs serve`, a train, a sample and a prepare
worker, SQLite, and API keys for two owners (so the server is closed)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import gptjobs
from gpt.config import BUILTIN_DATASETS
from gpt.tokenizers import ASSETS, GPT2Tokenizer
from tests.configs import NANOGPT_CPU, TINY
from tests.harness import Stack

TEXT = (ASSETS / "tinyshakespeare.txt").read_text()
PART = 65536  # small parts, so that a 1 MB file has many


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "GPTJOBS_UPLOAD_PART_BYTES": str(PART),
        "GPTJOBS_MAX_UPLOAD_BYTES": str(20 << 20),
        "GPTJOBS_IDLE_CHECK_S": "1",
    }
    with Stack(tmp_path_factory.mktemp("datasets"), env=env) as s:
        s.up(train=1, sample=1, prepare=1, key="alice")
        yield s


@pytest.fixture(scope="module")
def alice(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[gptjobs.Client]:
    with gptjobs.Client(stack.url, stack.key) as c:
        c.datasets.state_dir = tmp_path_factory.mktemp("upload-state")
        yield c


@pytest.fixture(scope="module")
def bob_key(stack: Stack) -> str:
    return stack.create_key("bob")


@pytest.fixture(scope="module")
def bob(stack: Stack, bob_key: str) -> Iterator[gptjobs.Client]:
    with gptjobs.Client(stack.url, bob_key) as c:
        yield c


def ready(client: gptjobs.Client, ds: gptjobs.Dataset, stack: Stack) -> gptjobs.Dataset:
    done = client.datasets.wait(ds.id, timeout=120, poll_s=0.2)
    assert done.status == "ready", (done.reason, stack.log_tail("prepare"))
    return done


def failed(client: gptjobs.Client, ds: gptjobs.Dataset) -> str:
    done = client.datasets.wait(ds.id, timeout=60, poll_s=0.2)
    assert done.status == "failed", done
    return done.reason or ""


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


@pytest.fixture(scope="module")
def chars(alice: gptjobs.Client, stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> gptjobs.Dataset:
    """Tiny Shakespeare by POST /datasets (multipart, one request), with the char tokenizer."""
    src = write(tmp_path_factory.mktemp("src") / "shakespeare.txt", TEXT)
    ds = alice.datasets.create(src, "shakes", tokenizer="char")
    assert ds.status == "preparing" and ds.bytes == src.stat().st_size
    assert ds.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    return ready(alice, ds, stack)


def test_one_request_upload_prepares_characters_as_nanogpt_does(chars: gptjobs.Dataset) -> None:
    assert chars.train_tokens + chars.val_tokens == len(TEXT)  # type: ignore[operator]
    assert chars.train_tokens == int(len(TEXT) * 0.9)
    assert (chars.tokenizer, chars.vocab_size, chars.format, chars.documents) == ("char", 65, "text", 1)
    assert chars.preview and TEXT.startswith(chars.preview)
    assert chars.progress.phase == "done" and chars.progress.bytes_done == chars.bytes


def _upload(stack: Stack, data: bytes, **declared: Any) -> dict[str, Any]:
    resp = stack.http.post("/uploads", json={"filename": "c.txt", "bytes": len(data), **declared})
    assert resp.status_code == 201, resp.text
    return resp.json()


def _put(stack: Stack, upload_id: str, n: int, data: bytes) -> httpx.Response:
    return stack.http.put(f"/uploads/{upload_id}/parts/{n}", content=data)


def test_parts_out_of_order_one_resent_then_gpt2_counts_match_tiktoken(alice: gptjobs.Client, stack: Stack) -> None:
    data = TEXT.encode()
    up = _upload(stack, data, sha256=hashlib.sha256(data).hexdigest())
    n = up["parts_expected"]
    assert up["part_bytes"] == PART and n == math.ceil(len(data) / PART) and up["parts"] == []
    parts = {i: data[(i - 1) * PART : i * PART] for i in range(1, n + 1)}
    order = list(range(n, 0, -1))  # last first
    assert _put(stack, up["id"], 3, b"x" * PART).status_code == 200  # a wrong part 3 ...
    for i in order:
        resp = _put(stack, up["id"], i, parts[i])
        assert resp.status_code == 200 and resp.json() == {
            "n": i, "bytes": len(parts[i]), "sha256": hashlib.sha256(parts[i]).hexdigest()
        }  # fmt: skip
    state = stack.http.get(f"/uploads/{up['id']}").json()  # ... replaced by the right one
    assert [p["n"] for p in state["parts"]] == list(range(1, n + 1)) and state["received_bytes"] == len(data)
    resp = stack.http.post(f"/uploads/{up['id']}/complete", json={"name": "shakes-bpe", "tokenizer": "gpt2"})
    assert resp.status_code == 202, resp.text
    ds = ready(alice, gptjobs.Dataset.from_json(resp.json()), stack)
    assert ds.train_tokens + ds.val_tokens == len(GPT2Tokenizer().enc.encode_ordinary(TEXT))  # type: ignore[operator]
    assert (ds.tokenizer, ds.vocab_size) == ("gpt2", 50257)
    again = stack.http.post(f"/uploads/{up['id']}/complete", json={"name": "shakes-bpe"})
    assert again.status_code == 202 and again.json()["id"] == ds.id  # completing twice: the same dataset


def test_an_interrupted_upload_resumes_sending_only_the_missing_parts(
    alice: gptjobs.Client, stack: Stack, tmp_path: Path
) -> None:
    src = write(tmp_path / "corpus.txt", TEXT[:600_000] + "\nAnd a line of our own.\n")

    class Interrupted(Exception):
        pass

    def stop_midway(p: gptjobs.UploadProgress) -> None:
        if p.bytes_done > p.bytes_total // 2:
            raise Interrupted  # as a Ctrl-C or a dropped connection would, mid-upload

    with pytest.raises(Interrupted):
        alice.datasets.upload(src, "resumed", tokenizer="char", parallel=2, progress=stop_midway)
    seen: list[gptjobs.UploadProgress] = []
    ds = alice.datasets.upload(src, "resumed", tokenizer="char", parallel=2, progress=seen.append)
    assert seen[-1].resumed and seen[-1].bytes_done == src.stat().st_size
    assert 0 < seen[-1].bytes_sent < src.stat().st_size / 2 + 2 * PART  # only what was missing
    ds = ready(alice, ds, stack)
    assert ds.train_tokens + ds.val_tokens == len(src.read_text())  # type: ignore[operator]


def test_train_and_sample_on_ones_own_dataset_by_name(
    alice: gptjobs.Client, chars: gptjobs.Dataset, stack: Stack
) -> None:
    config = {
        **TINY,
        "dataset": "shakes",
        "max_iters": 20,
        "lr_decay_iters": 20,
        "eval_interval": 10,
        "warmup_iters": 0,
    }
    run = alice.runs.create(config)
    assert run.config["dataset"] == chars.id and run.raw["dataset"] == {"id": chars.id, "sha256": chars.sha256}
    done = alice.runs.wait(run.id, timeout=120)
    assert done.status == "succeeded", (done.reason, stack.log_tail("train"))
    text = alice.runs.sample(run.id, "ROMEO:", max_new_tokens=30, seed=1).text
    assert len(text) == 30 and set(text) <= set(TEXT)  # the dataset's own 65 characters
    queued = alice.runs.create({**config, "max_iters": 10_000, "lr_decay_iters": 10_000})
    with pytest.raises(gptjobs.Conflict, match="in use by runs"):  # a queued (or running) run holds it
        alice.datasets.delete(chars.id)
    alice.runs.cancel(queued.id)
    alice.runs.wait(queued.id, timeout=120)


def _nanogpt_archive(d: Path) -> Path:
    """data/shakespeare_char as nanoGPT's prepare.py leaves it, in a tar.gz."""
    root = d / "shakespeare_char"
    root.mkdir()
    stoi = {c: i for i, c in enumerate(sorted(set(TEXT)))}
    n = len(TEXT)
    np.array([stoi[c] for c in TEXT[: int(n * 0.9)]], dtype=np.uint16).tofile(root / "train.bin")
    np.array([stoi[c] for c in TEXT[int(n * 0.9) :]], dtype=np.uint16).tofile(root / "val.bin")
    with open(root / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(stoi), "itos": {i: c for c, i in stoi.items()}, "stoi": stoi}, f)
    write(root / "input.txt", TEXT)
    out = d / "shakespeare_char.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(root, arcname="shakespeare_char")
    return out


def test_a_nanogpt_data_directory_trains_with_nanogpts_loss_at_step_250(
    alice: gptjobs.Client, stack: Stack, tmp_path: Path
) -> None:
    ds = ready(alice, alice.datasets.upload(_nanogpt_archive(tmp_path), "nanogpt-dir"), stack)
    assert (ds.format, ds.tokenizer, ds.vocab_size) == ("nanogpt", "char", 65)
    # shakespeare_char's recipe and the README's CPU run, on the uploaded arrays: nanoGPT's
    # train.py printed "step 250: train loss 2.4293, val loss 2.4447" for the same command.
    recipe = BUILTIN_DATASETS["shakespeare_char"]["recipe"]
    config = {k: v for k, v in {**recipe, **NANOGPT_CPU}.items() if k != "out_dir"}
    run = alice.runs.create({**config, "dataset": ds.id, "log_interval": 250, "max_iters": 250})
    done = alice.runs.wait(run.id, timeout=300)
    assert done.status == "succeeded", (done.reason, stack.log_tail("train"))
    last = [e for e in alice.runs.events_all(run.id, type="eval")][-1]
    assert last["iter"] == 250
    assert last["train_loss"] == pytest.approx(2.4293, abs=0.005) and last["val_loss"] == pytest.approx(
        2.4447, abs=0.005
    )


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _symlink_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("d/train.bin")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "options", "reason"),
    [
        ("latin1.txt", "caf\xe9 ok".encode("latin-1"), {}, "not UTF-8 text: invalid byte at offset 3"),
        ("bad.jsonl", b'{"text": "a"}\n{"text": "b"\n', {}, "line 2: not JSON"),
        ("field.jsonl", b'{"text": "a"}\n{"body": "b"}\n', {}, "line 2: no 'text' field"),
        ("odd.tar", _tar({"train.bin": b"\x00\x00\x00", "val.bin": b"\x00\x00"}), {}, "odd length"),
        (
            "half.tar",
            _tar({"d/val.bin": b"\x00\x00", "d/meta.pkl": pickle.dumps({"itos": {0: "a"}})}),
            {},
            "no train.bin",
        ),
        ("link.tar", _symlink_tar(), {}, "is a link"),
        ("escape.tar", _tar({"../../train.bin": b"\x00\x00"}), {}, "leaves its folder"),
        ("bomb.txt.gz", gzip.compress(b"a" * (21 << 20)), {}, "decompresses to more than"),
        ("few.txt", "to be", {"tokenizer": "char", "val_fraction": 0.5}, None),
    ],
)
def test_bad_files_fail_with_their_reason(
    alice: gptjobs.Client, stack: Stack, tmp_path: Path, name: str, data: bytes | str, options: dict, reason: str | None
) -> None:
    ds = alice.datasets.upload(write(tmp_path / name, data), f"bad-{name}", **options)
    if reason is not None:
        assert reason in failed(alice, ds)
        return
    # Prepared, but too short to train on: POST /runs says which split and why.
    ready(alice, ds, stack)
    with pytest.raises(gptjobs.ValidationError) as e:
        alice.runs.create({**TINY, "dataset": ds.name})
    assert "its train split has 2 tokens, fewer than block_size + 1 (33)" in e.value.fields["config.dataset"]


def test_bad_requests_are_4xx_naming_the_reason(alice: gptjobs.Client, stack: Stack, tmp_path: Path) -> None:
    empty = stack.http.post("/datasets", files={"file": ("e.txt", b"")}, data={"name": "empty"})
    assert empty.status_code == 202  # the bytes are taken; preparing says what is wrong
    assert failed(alice, gptjobs.Dataset.from_json(empty.json())) == "the file is empty"
    big = _upload(stack, b"x", bytes=3 * PART + 1)
    assert _put(stack, big["id"], 1, b"x" * (PART + 1)).status_code == 413  # a part over part_bytes
    assert _put(stack, big["id"], 5, b"x").status_code == 422  # beyond the declared size's parts
    for i in (1, 2, 3):
        assert _put(stack, big["id"], i, b"x" * PART).status_code == 200
    missing = stack.http.post(f"/uploads/{big['id']}/complete", json={"name": "big"})
    assert missing.status_code == 409 and "parts missing: 4" in missing.json()["detail"]
    longer = _put(stack, big["id"], 4, b"xx")  # the file is not the size declared
    assert longer.status_code == 422 and "part 4 must be 1 bytes" in longer.text and "got 2" in longer.text
    assert _put(stack, big["id"], 4, b"x").status_code == 200
    wrong = stack.http.post(f"/uploads/{big['id']}/complete", json={"name": "big", "sha256": "0" * 64})
    assert wrong.status_code == 422 and "hash to" in json.dumps(wrong.json())
    over = stack.http.post("/uploads", json={"filename": "huge", "bytes": 21 << 20})
    assert over.status_code == 413 and "GPTJOBS_MAX_UPLOAD_BYTES" in over.json()["detail"]
    named = stack.http.post("/datasets", files={"file": ("a.txt", b"hi")}, data={"name": "shakespeare_char"})
    assert named.status_code == 422 and "built-in dataset's name" in json.dumps(named.json())
    assert (
        stack.http.post(
            "/datasets", files={"file": ("a.txt", b"hi")}, data={"name": "x", "tokenizer": "bpe"}
        ).status_code
        == 422
    )


def test_another_owner_sees_none_of_it_but_shares_the_prepared_bytes(
    alice: gptjobs.Client, bob: gptjobs.Client, bob_key: str, chars: gptjobs.Dataset, stack: Stack, tmp_path: Path
) -> None:
    up = _upload(stack, b"abc")
    theirs_http = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {bob_key}"}, timeout=30)
    for method, path in [
        ("GET", f"/datasets/{chars.id}"),
        ("DELETE", f"/datasets/{chars.id}"),
        ("GET", f"/uploads/{up['id']}"),
        ("PUT", f"/uploads/{up['id']}/parts/1"),
        ("POST", f"/uploads/{up['id']}/complete"),
    ]:
        body = {"json": {"name": "mine"}} if method == "POST" else {"content": b"abc"} if method == "PUT" else {}
        resp = theirs_http.request(method, path, **body)
        assert resp.status_code == 404, (method, path, resp.text)
    assert chars.id not in [d.id for d in bob.datasets.list()]
    with pytest.raises(gptjobs.ValidationError) as e:  # alice's name means nothing to bob
        bob.runs.create({**TINY, "dataset": "shakes"})
    assert "unknown dataset 'shakes'" in e.value.fields["config.dataset"]
    # The same bytes, prepared the same way: ready at once, the same tokens, bob's own dataset.
    theirs = bob.datasets.create(write(tmp_path / "same.txt", TEXT), "shakes", tokenizer="char")
    assert theirs.status == "ready" and theirs.id != chars.id and theirs.train_tokens == chars.train_tokens
    bob.datasets.delete(theirs.id)  # shared files stay for alice
    assert alice.datasets.get(chars.id).status == "ready"
    run = alice.runs.create({**TINY, "dataset": chars.id, "max_iters": 2, "eval_interval": 2, "warmup_iters": 0})
    assert alice.runs.wait(run.id, timeout=120).status == "succeeded"

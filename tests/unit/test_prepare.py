"""gpt.prepare on real files: every format to nanoGPT's uint16 arrays, the counts a tokenizer
gives for the same text, and every input it must refuse with a reason."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zstandard

from gpt import prepare as P
from gpt.data import open_prepared
from gpt.tokenizers import ASSETS, GPT2Tokenizer

TEXT = (ASSETS / "tinyshakespeare.txt").read_text()
ENC = GPT2Tokenizer().enc
EOT = ENC.eot_token


def run(src: Path, tmp_path: Path, **kw: object) -> tuple[P.Prepared, Path]:
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    kw.setdefault("fmt", "text")
    kw.setdefault("tokenizer", "gpt2")
    done = P.prepare(src, out, max_bytes=1 << 30, workers=2, **kw)  # type: ignore[arg-type]
    return done, out


def tokens(out: Path, split: str) -> np.ndarray:
    return np.fromfile(out / f"{split}.bin", dtype=np.uint16)


def test_text_with_gpt2_gives_the_tokens_of_the_whole_text(tmp_path: Path) -> None:
    src = tmp_path / "s.txt"
    src.write_text(TEXT)
    done, out = run(src, tmp_path)
    whole = ENC.encode_ordinary(TEXT)
    assert done.train_tokens + done.val_tokens == len(whole)
    assert done.train_tokens == int(len(whole) * 0.9) and done.documents == 1
    assert np.array_equal(np.concatenate([tokens(out, "train"), tokens(out, "val")]), np.array(whole, dtype=np.uint16))
    assert done.preview == TEXT[: len(done.preview)] and len(done.preview) == P.PREVIEW_CHARS
    assert json.loads((out / "meta.json").read_text())["tokenizer"] == {"kind": "gpt2"}
    assert not (out / "all.bin").exists() and not (out / "doc_ends.bin").exists()


def test_a_large_input_is_tokenized_in_worker_processes_to_the_same_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(P, "PROCESSES_FROM", 1 << 20)  # tiny Shakespeare counts as large here
    src = tmp_path / "s.txt"
    src.write_text(TEXT)
    with P._pool(src, "gpt2", 2) as pool:
        assert isinstance(pool, P.ProcessPoolExecutor)
    _, out = run(src, tmp_path)
    whole = np.array(ENC.encode_ordinary(TEXT), dtype=np.uint16)
    assert np.array_equal(np.concatenate([tokens(out, "train"), tokens(out, "val")]), whole)


def test_a_text_without_newlines_in_chars(tmp_path: Path) -> None:
    done, _ = run(_write(tmp_path / "one.txt", b"to be or not"), tmp_path, tokenizer="char")
    assert done.vocab_size == 7 and done.train_tokens + done.val_tokens == 12


def test_text_with_chars_is_nanogpts_shakespeare_char_split(tmp_path: Path) -> None:
    src = tmp_path / "s.txt"
    src.write_text(TEXT)
    done, out = run(src, tmp_path, tokenizer="char", val_fraction=0.1)
    chars = sorted(set(TEXT))  # nanoGPT's data/shakespeare_char/prepare.py, as it does it
    stoi = {c: i for i, c in enumerate(chars)}
    n = len(TEXT)
    train = np.array([stoi[c] for c in TEXT[: int(n * 0.9)]], dtype=np.uint16)
    val = np.array([stoi[c] for c in TEXT[int(n * 0.9) :]], dtype=np.uint16)
    assert done.vocab_size == len(chars) == 65 and done.train_tokens + done.val_tokens == n
    assert np.array_equal(tokens(out, "train"), train) and np.array_equal(tokens(out, "val"), val)
    assert open_prepared(out).tokenizer.meta() == {"kind": "char", "chars": "".join(chars)}


@pytest.mark.parametrize("seed", range(3))
def test_pieces_are_cut_where_gpt2s_pre_tokenizer_cuts_anyway(seed: int) -> None:
    rng = random.Random(seed)
    words = ["the", "  ", "\n", "\n\n", " ", "don't", "1234", "...", "  \n", "\t", "é", "日本", "!?"]
    text = "".join(rng.choice(words) for _ in range(20_000))
    pieces = list(P._pieces(iter([text[i : i + 997] for i in range(0, len(text), 997)]), size=500))
    assert "".join(pieces) == text and len(pieces) > 10
    assert [t for p in pieces for t in ENC.encode_ordinary(p)] == ENC.encode_ordinary(text)


def test_json_lines_one_document_a_line_joined_by_eot_and_split_between_documents(tmp_path: Path) -> None:
    docs = [TEXT[i : i + 3000] for i in range(0, 300_000, 3000)]
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)) + "\n")
    done, out = run(src, tmp_path, fmt="jsonl")
    expected = sum(len(ENC.encode_ordinary(d)) + 1 for d in docs)
    assert done.documents == len(docs) and done.train_tokens + done.val_tokens == expected
    train, val = tokens(out, "train"), tokens(out, "val")
    assert train[-1] == EOT and (val == EOT).sum() == len(val[val == EOT])  # the cut follows an EOT
    assert ENC.decode(val[: val.tolist().index(EOT)].tolist()) in docs  # val starts with a whole document
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.15


def test_compression_is_told_by_the_bytes_not_the_name(tmp_path: Path) -> None:
    raw = TEXT[:200_000].encode()
    (tmp_path / "a.dat").write_bytes(gzip.compress(raw))
    (tmp_path / "b.dat").write_bytes(zstandard.ZstdCompressor().compress(raw))
    plain, _ = run(_write(tmp_path / "c.txt", raw), tmp_path)
    for name in ("a.dat", "b.dat"):
        assert P.detect_format(tmp_path / name) == "text"
        done, _ = run(tmp_path / name, tmp_path)
        assert (done.train_tokens, done.val_tokens) == (plain.train_tokens, plain.val_tokens)
    jsonl = tmp_path / "d.jsonl.zst"
    jsonl.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "hi"}\n'))
    assert P.detect_format(jsonl) == "jsonl"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _nanogpt_dir(tmp_path: Path) -> Path:
    """A data directory made the way nanoGPT's data/shakespeare_char/prepare.py makes one."""
    d = tmp_path / "shakespeare_char"
    d.mkdir()
    chars = sorted(set(TEXT))
    stoi, itos = {c: i for i, c in enumerate(chars)}, dict(enumerate(chars))
    n = len(TEXT)
    np.array([stoi[c] for c in TEXT[: int(n * 0.9)]], dtype=np.uint16).tofile(d / "train.bin")
    np.array([stoi[c] for c in TEXT[int(n * 0.9) :]], dtype=np.uint16).tofile(d / "val.bin")
    with open(d / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    (d / "prepare.py").write_text("# nanoGPT's script\n")
    return d


def _tar(tmp_path: Path, d: Path, name: str = "data.tar.gz") -> Path:
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        tar.add(d, arcname=d.name)
    return path


def test_a_nanogpt_data_directory_as_a_tar_is_taken_as_it_is(tmp_path: Path) -> None:
    d = _nanogpt_dir(tmp_path)
    src = _tar(tmp_path, d)
    assert P.detect_format(src) == "nanogpt"
    done, out = run(src, tmp_path, fmt="nanogpt", tokenizer=None)
    assert done.tokenizer["kind"] == "char" and done.vocab_size == 65 and done.documents == 0
    assert (out / "train.bin").read_bytes() == (d / "train.bin").read_bytes()
    assert (out / "val.bin").read_bytes() == (d / "val.bin").read_bytes()
    assert done.preview == TEXT[: P.PREVIEW_CHARS]
    # The same directory opens as it is for the command line (nanoGPT's layout, meta.pkl read safely).
    assert open_prepared(d).tokenizer.meta() == open_prepared(out).tokenizer.meta()
    with pytest.raises(P.PrepareError, match=r"has a meta\.pkl"):
        run(src, tmp_path, fmt="nanogpt", tokenizer="gpt2")


def _bad_tar(tmp_path: Path, add: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    path = tmp_path / f"bad{len(list(tmp_path.iterdir()))}.tar"
    with tarfile.open(path, "w") as tar:
        for info, data in add:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _special(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([(_file("d/val.bin"), b"\x00\x00")], "no train.bin"),
        ([(_file("train.bin"), b"\x00\x00\x01"), (_file("val.bin"), b"\x00\x00")], "odd length"),
        ([(_special("train.bin", tarfile.SYMTYPE, "/etc/passwd"), None)], "is a link"),
        ([(_special("d/train.bin", tarfile.LNKTYPE, "d/val.bin"), None)], "is a link"),
        ([(_special("dev", tarfile.CHRTYPE), None)], "not a regular file"),
        ([(_file("../../train.bin"), b"\x00\x00")], "leaves its folder"),
        ([(_file("/abs/train.bin"), b"\x00\x00")], "leaves its folder"),
        ([(_file("train.bin"), b"\xff\xff"), (_file("val.bin"), b"\x00\x00")], "outside the vocabulary"),
    ],
)
def test_bad_archives_are_refused_with_the_reason(tmp_path: Path, members: list, reason: str) -> None:
    with pytest.raises(P.PrepareError, match=reason):
        run(_bad_tar(tmp_path, members), tmp_path, fmt="nanogpt", tokenizer=None)


class _Boom:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned > /tmp/gptjobs-pwned",))


def test_meta_pkl_is_read_without_running_it() -> None:
    assert P.read_meta_pkl(pickle.dumps({"vocab_size": 2, "itos": {0: "a", 1: "b"}}))["vocab_size"] == 2
    with pytest.raises(P.PrepareError, match="only plain dicts"):
        P.read_meta_pkl(pickle.dumps({"itos": _Boom()}))
    assert not Path("/tmp/gptjobs-pwned").exists()
    with pytest.raises(P.PrepareError, match="not a readable pickle"):
        P.read_meta_pkl(b"\x80\x04garbage")
    with pytest.raises(P.PrepareError, match="must map each id to one character"):
        P.char_tokenizer(P.read_meta_pkl(pickle.dumps({"itos": {0: "ab"}})))


@pytest.mark.parametrize(
    ("data", "kw", "reason"),
    [
        (b"", {}, "empty"),
        (b"hello \xe2\x82 world \xff", {}, r"not UTF-8 text: invalid byte at offset 6"),
        (b'{"text": "a"}\n{"text": 1}\n', {"fmt": "jsonl"}, r"line 2: 'text' is not a string"),
        (b'{"text": "a"}\n\n{"body": "b"}\n', {"fmt": "jsonl"}, r"line 3: no 'text' field \(fields: body\)"),
        (b'{"text": "a"}\nnot json\n', {"fmt": "jsonl"}, r"line 2: not JSON"),
        (b"[1, 2]\n", {"fmt": "jsonl"}, r"line 1: expected a JSON object"),
        (b"   \n\n", {"fmt": "jsonl"}, "no line has a 'text' field"),
    ],
)
def test_bad_text_is_refused_with_the_reason(tmp_path: Path, data: bytes, kw: dict, reason: str) -> None:
    with pytest.raises(P.PrepareError, match=reason):
        run(_write(tmp_path / "x", data), tmp_path, **kw)


def test_a_decompression_bomb_stops_at_the_limit(tmp_path: Path) -> None:
    bomb = _write(tmp_path / "bomb.gz", gzip.compress(b"a" * (8 << 20)))  # 8 MB from ~8 kB
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(P.PrepareError, match="decompresses to more than 1000000 bytes"):
        P.prepare(bomb, out, fmt="text", tokenizer="gpt2", max_bytes=1_000_000)


def test_too_many_distinct_characters_for_uint16(tmp_path: Path) -> None:
    text = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 70_000) if not 0xD800 <= c < 0xE000)
    with pytest.raises(P.PrepareError, match="more than 65535 distinct characters"):
        run(_write(tmp_path / "cjk.txt", text.encode()), tmp_path, tokenizer="char")


def test_progress_is_reported_and_can_stop_the_work(tmp_path: Path) -> None:
    src = _write(tmp_path / "s.txt", (TEXT * 6).encode())
    seen: list[P.Progress] = []

    class Stop(Exception):
        pass

    def progress(p: P.Progress) -> None:
        seen.append(p)
        if p.tokens > 0:
            raise Stop

    out = tmp_path / "out"
    out.mkdir()
    P.PROGRESS_S, old = 0.0, P.PROGRESS_S
    try:
        with pytest.raises(Stop):
            P.prepare(src, out, fmt="text", tokenizer="gpt2", max_bytes=1 << 30, progress=progress)
    finally:
        P.PROGRESS_S = old
    assert seen[-1].phase == "tokenizing" and seen[-1].bytes_total == src.stat().st_size and seen[-1].tokens > 0
    assert not (out / "meta.json").exists()  # nothing a reader would take for done

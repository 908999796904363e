"""Preparing a user's corpus: bytes in, nanoGPT's uint16 `train.bin` / `val.bin` out, streamed.

Knows files, bytes and tokenizers; nothing of uploads, owners, databases or queues (the
prepare worker brings the file and takes the directory). Nothing here trusts the input:

- UTF-8 text, JSON Lines (one document per line in a text field), either of them gzip- or
  zstd-compressed (told by their first bytes, never by a name), or a nanoGPT data directory
  already prepared (`train.bin`, `val.bin`, and `meta.pkl` for a character vocabulary) as
  one tar archive, itself compressed or not.
- Every size is bounded before it is read: what decompresses past `max_bytes` stops with a
  reason (a decompression bomb), a JSON line longer than MAX_LINE_BYTES too, a meta.pkl
  larger than MAX_META_BYTES is not read. A tar member that is a link, a device, or a path
  leaving the archive's folder refuses the whole archive.
- `meta.pkl` is a pickle: `read_meta_pkl` builds only dicts, lists, strings and numbers and
  never looks up a global, so no pickle can run code here.

Memory stays flat whatever the file's size: text is read in chunks of CHUNK_CHARS, cut where
GPT-2's pre-tokenization would cut anyway (so a chunked encoding equals encoding the whole
text at once), tokenized with a bounded number of chunks in flight (below), and
written straight to disk. A character vocabulary takes one streaming pass of its own first.
GPT-2's BPE runs in `workers` processes for a large input: tiktoken releases the GIL for only
part of its work (two threads did 1.6x one here, two processes 2x), and each process takes
its tokens as one array rather than a Python list of ints. A small input is not worth their
start-up and gets one thread beside the reader.

The split, after tokenizing: the last `val_fraction` of the tokens are val.bin (nanoGPT's
Shakespeare split is by characters, and a character is a token there), moved to the next
document boundary for JSON Lines so no document is in both.

Everything is written into `out_dir`, which the caller renames into place once `meta.json`
(written last) is there: a killed preparation leaves nothing that a reader takes for done.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import io
import json
import multiprocessing
import os
import pickle
import tarfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from gpt.config import CHAR_VOCAB_LIMIT
from gpt.tokenizers import CharTokenizer, GPT2Tokenizer, Tokenizer, decode

FORMATS = ("text", "jsonl", "nanogpt")
CHUNK_CHARS = 1 << 20  # text per tokenizer call: big enough to amortise a call, small enough to stream
READ_BYTES = 4 << 20  # bytes read from the (decompressed) input at a time
MAX_LINE_BYTES = 64 << 20  # one JSON Lines document
MAX_META_BYTES = 16 << 20  # meta.pkl: a character vocabulary is a few hundred kB at most
PREVIEW_CHARS = 500
PROGRESS_S = 0.5  # at most one progress report this often
PROCESSES_FROM = 64 << 20  # bytes of input from which GPT-2's BPE gets worker processes
GZIP_MAGIC, ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"


class PrepareError(ValueError):
    """The input cannot be prepared; the message says why, for the dataset's `reason`."""


@dataclass
class Progress:
    phase: str  # "vocabulary" (a character vocabulary's own pass), "tokenizing", "splitting"
    bytes_done: int  # of the input file as stored (compressed or not)
    bytes_total: int
    tokens: int
    tokens_per_s: float
    eta_s: float | None


@dataclass
class Prepared:
    """What meta.json says of a prepared directory (beside its tokenizer's meta)."""

    format: str
    tokenizer: dict[str, Any]
    vocab_size: int
    train_tokens: int
    val_tokens: int
    documents: int
    preview: str


ProgressFn = Callable[[Progress], None]


# --- the input -------------------------------------------------------------------------------


def detect_format(path: Path, filename: str | None = None) -> str:
    """nanogpt for a tar archive (by its bytes, compressed or not), jsonl for a name ending in
    .jsonl or .ndjson (before any .gz/.zst), else text."""
    with open_input(path, max_bytes=1 << 20) as f:
        head = f.read(512)
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "nanogpt"
    name = (filename or path.name).lower()
    for ext in (".gz", ".gzip", ".zst", ".zstd"):
        name = name.removesuffix(ext)
    return "jsonl" if name.endswith((".jsonl", ".ndjson")) else "text"


class _Bounded(io.RawIOBase):
    """A decompressed stream that refuses to go past max_bytes (a decompression bomb), and
    knows how far it is into the file as stored (for progress)."""

    def __init__(self, inner: IO[bytes], raw: IO[bytes], max_bytes: int, compressed: bool):
        self.inner, self.raw, self.max_bytes, self.compressed = inner, raw, max_bytes, compressed
        self.out = self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.inner.read(len(b))
        self.out += len(data)
        if self.out > self.max_bytes:
            what = "decompresses to" if self.compressed else "is"
            raise PrepareError(f"the file {what} more than {self.max_bytes} bytes (GPTJOBS_MAX_UPLOAD_BYTES)")
        b[: len(data)] = data
        return len(data)

    def stored_pos(self) -> int:
        if not self.raw.closed:
            self.pos = self.raw.tell()
        return self.pos

    def close(self) -> None:
        self.stored_pos()  # kept: progress may ask after the last read
        self.inner.close()
        self.raw.close()
        super().close()


def open_input(path: Path, max_bytes: int) -> _Bounded:
    """The file's bytes, decompressed if its first bytes say gzip or zstd."""
    raw = open(path, "rb")  # noqa: SIM115 (closed by the wrapper)
    magic = raw.read(4)
    raw.seek(0)
    inner: Any
    if magic[:2] == GZIP_MAGIC:
        inner = gzip.GzipFile(fileobj=raw, mode="rb")
    elif magic == ZSTD_MAGIC:
        import zstandard

        inner = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    else:
        inner = raw
    return _Bounded(inner, raw, max_bytes, inner is not raw)


def _text_chunks(f: _Bounded) -> Iterator[str]:
    """The input as UTF-8 text, in pieces; a byte that is not UTF-8 stops it, naming its offset."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    done = 0  # bytes decoded so far, not counting those the decoder holds back
    while True:
        data = f.read(READ_BYTES)
        held = len(decoder.getstate()[0])
        try:
            text = decoder.decode(data, final=not data)
        except UnicodeDecodeError as e:
            raise PrepareError(f"not UTF-8 text: invalid byte at offset {done - held + e.start}") from None
        done += len(data)
        if text:
            yield text
        if not data:
            return


# --- cutting text where GPT-2's pre-tokenizer cuts anyway ---------------------------------------


def safe_cut(text: str, before: int) -> int:
    """An index in (0, before] where text can be split so that encoding the two parts gives
    the tokens of the whole: just before a newline that follows a non-space character (no
    piece of GPT-2's pattern spans that point, and none of its lookaheads reads past it),
    else before a space between two non-spaces; 0 when there is neither."""
    i = text.rfind("\n", 0, before)
    while i > 0:
        if not text[i - 1].isspace():
            return i
        i = text.rfind("\n", 0, i - 1) if i > 1 else -1
    i = text.rfind(" ", 0, before)
    while i > 0:
        if i + 1 < len(text) and not text[i - 1].isspace() and not text[i + 1].isspace():
            return i
        i = text.rfind(" ", 0, i - 1) if i > 1 else -1
    return 0


def _pieces(chunks: Iterator[str], size: int = CHUNK_CHARS) -> Iterator[str]:
    """Pieces of about `size` characters, cut safely; a stretch with no safe cut in twice
    that is cut where it is (a text without spaces or lines: only its tokens there may differ)."""
    buf = ""
    for chunk in chunks:
        buf += chunk
        while len(buf) >= 2 * size:
            cut = safe_cut(buf, 2 * size) or 2 * size
            yield buf[:cut]
            buf = buf[cut:]
    if buf:
        yield buf


# --- JSON Lines ------------------------------------------------------------------------------


def _documents(f: _Bounded, text_field: str) -> Iterator[str]:
    """Each line's `text_field`; blank lines are skipped. A line that is not JSON, not an
    object, lacks the field, or holds something else than text stops it, naming the line."""
    for n, line in enumerate(_lines(f), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except UnicodeDecodeError as e:
            raise PrepareError(f"line {n}: not UTF-8 (invalid byte at column {e.start + 1})") from None
        except ValueError as e:
            raise PrepareError(f"line {n}: not JSON ({e})") from None
        if not isinstance(doc, dict):
            raise PrepareError(f"line {n}: expected a JSON object with a {text_field!r} field")
        if text_field not in doc:
            raise PrepareError(f"line {n}: no {text_field!r} field (fields: {', '.join(list(doc)[:10]) or 'none'})")
        text = doc[text_field]
        if not isinstance(text, str):
            raise PrepareError(f"line {n}: {text_field!r} is not a string")
        try:
            text.encode()
        except UnicodeEncodeError as e:  # "\ud800" parses, but is no text
            raise PrepareError(f"line {n}: {text_field!r} holds a lone surrogate at position {e.start}") from None
        yield text


def _lines(f: _Bounded) -> Iterator[bytes]:
    reader = io.BufferedReader(f, READ_BYTES)
    n = 0
    while line := reader.readline(MAX_LINE_BYTES + 1):
        n += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            raise PrepareError(f"line {n} is longer than {MAX_LINE_BYTES >> 20} MB")
        yield line


# --- tokenizing ------------------------------------------------------------------------------


class _Writer:
    """Token arrays appended to one file, in order; reports progress now and then."""

    def __init__(self, path: Path, report: Callable[[int], None]):
        self.f = open(path, "wb")  # noqa: SIM115 (closed in close())
        self.tokens = 0
        self.report = report

    def write(self, ids: np.ndarray) -> None:
        self.f.write(ids.astype(np.uint16, copy=False).tobytes())
        self.tokens += len(ids)
        self.report(self.tokens)

    def close(self) -> None:
        self.f.close()


Unit = tuple[str, bool]  # text to encode, and whether a document ends with it
Encoded = tuple[np.ndarray, list[int]]  # tokens, and where in them each document ended


class _Ordered:
    """Encodes batches of units on a pool, at most `depth` batches in flight, and hands the
    results on in the order the batches came."""

    def __init__(self, pool: Executor, encode: Callable[[list[Unit]], Encoded], depth: int):
        self.pool, self.encode, self.depth = pool, encode, depth
        self.queue: deque[Future[Encoded]] = deque()

    def put(self, batch: list[Unit]) -> Iterator[Encoded]:
        self.queue.append(self.pool.submit(self.encode, batch))
        while len(self.queue) > self.depth:
            yield self.queue.popleft().result()

    def drain(self) -> Iterator[Encoded]:
        while self.queue:
            yield self.queue.popleft().result()


def _batches(units: Iterator[Unit], chars: int = CHUNK_CHARS) -> Iterator[list[Unit]]:
    """Units grouped to about `chars` characters a batch: one call per tiny document would
    cost more in hand-offs to the pool than in tokenizing."""
    batch: list[Unit] = []
    size = 0
    for unit in units:
        batch.append(unit)
        size += len(unit[0])
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


@dataclass(frozen=True)
class _Encode:
    """Encodes a batch of units, a separator after each document. Plain data, so that it
    can be sent to a worker process; the tokenizer is built once per process."""

    chars: str | None  # a character vocabulary; None: GPT-2's BPE
    sep: tuple[int, ...]

    def __call__(self, batch: list[Unit]) -> Encoded:
        encode = _encoder(self.chars)
        sep = np.array(self.sep, dtype=np.uint16)
        parts: list[np.ndarray] = []
        ends: list[int] = []
        n = 0
        for text, doc_end in batch:
            ids = encode(text)
            parts.append(ids)
            n += len(ids)
            if doc_end:
                parts.append(sep)
                n += len(sep)
                ends.append(n)
        return (np.concatenate(parts) if len(parts) > 1 else parts[0]), ends


@functools.cache
def _encoder(chars: str | None) -> Callable[[str], np.ndarray]:
    if chars is None:
        enc = GPT2Tokenizer().enc
        # No special tokens recognised (as encode_ordinary), straight into an array.
        return lambda text: enc.encode_to_numpy(text, disallowed_special=()).astype(np.uint16)
    lut = np.full(max(map(ord, chars)) + 1, -1, dtype=np.int32)
    for i, c in enumerate(chars):
        lut[ord(c)] = i

    def encode(text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return lut[codes].astype(np.uint16)  # every character is in the vocabulary: its pass saw them all

    return encode


def _pool(src: Path, tokenizer: str, workers: int) -> Executor:
    if tokenizer == "gpt2" and workers > 1 and src.stat().st_size >= PROCESSES_FROM:
        # spawn, not fork: the caller may be a worker with threads of its own (its lease's).
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    return ThreadPoolExecutor(1)


def _char_vocabulary(units: Iterator[str], extra: str = "") -> CharTokenizer:
    seen: set[str] = set(extra)
    for text in units:
        seen.update(text)
        if len(seen) > CHAR_VOCAB_LIMIT:
            raise PrepareError(
                f"more than {CHAR_VOCAB_LIMIT} distinct characters: token ids are stored as uint16; "
                "use the gpt2 tokenizer for this text"
            )
    if not seen:
        raise PrepareError("the file has no text")
    return CharTokenizer("".join(sorted(seen)))


# --- the whole preparation -------------------------------------------------------------------


def prepare(
    src: Path,
    out_dir: Path,
    *,
    fmt: str,
    tokenizer: str | None,
    val_fraction: float = 0.1,
    text_field: str = "text",
    max_bytes: int,
    workers: int = 1,
    progress: ProgressFn | None = None,
) -> Prepared:
    """Prepare src into out_dir (which must exist and be empty); raises PrepareError with
    the reason when the input cannot be. `tokenizer` None takes a nanoGPT archive's own (else
    it is GPT-2's). `progress` is called now and then; an exception from it (a lost lease,
    say) stops the preparation and comes out of this call."""
    assert fmt in FORMATS and tokenizer in ("char", "gpt2", None) and 0.0 < val_fraction < 1.0
    if src.stat().st_size == 0:
        raise PrepareError("the file is empty")
    clock = _Clock(src.stat().st_size, progress)
    if fmt == "nanogpt":
        return _from_nanogpt(src, out_dir, tokenizer, max_bytes, clock)
    tokenizer = tokenizer or "gpt2"

    def units(phase: str) -> Iterator[Unit]:
        """(text to encode, whether a document ends with it), in order."""
        f = open_input(src, max_bytes)
        clock.stream, clock.phase = f, phase
        with f:
            if fmt == "text":
                for piece in _pieces(_text_chunks(f)):
                    yield piece, False
                return
            # Each document is encoded on its own, as nanoGPT's openwebtext does.
            for doc in _documents(f, text_field):
                parts = list(_pieces(iter([doc]))) or [""]
                for i, part in enumerate(parts):
                    yield part, i == len(parts) - 1

    tok: Tokenizer
    if tokenizer == "char":
        char = _char_vocabulary((u for u, _ in units("vocabulary")), "\n" if fmt == "jsonl" else "")
        # Documents are joined by a newline (in the vocabulary: its pass added one for JSON Lines).
        tok, encode = char, _Encode(char.chars, tuple(char.encode("\n")) if fmt == "jsonl" else ())
    else:
        gpt2 = GPT2Tokenizer()
        tok, encode = gpt2, _Encode(None, (gpt2.enc.eot_token,))  # as nanoGPT's openwebtext: one EOT after each
    all_path, ends_path = out_dir / "all.bin", out_dir / "doc_ends.bin"
    writer = _Writer(all_path, clock.tokens)
    documents = 0
    with open(ends_path, "wb") as ends, _pool(src, tokenizer, workers) as pool:
        ordered = _Ordered(pool, encode, depth=2 * max(1, workers))

        def emit(results: Iterator[Encoded]) -> None:
            nonlocal documents
            for ids, doc_ends in results:
                if doc_ends:  # document boundaries go to disk, not to memory
                    ends.write((np.array(doc_ends, dtype=np.uint64) + writer.tokens).tobytes())
                    documents += len(doc_ends)
                writer.write(ids)

        for batch in _batches(units("tokenizing")):
            emit(ordered.put(batch))
        emit(ordered.drain())
    writer.close()
    if writer.tokens == 0:
        raise PrepareError("the file has no text" if fmt == "text" else f"no line has a {text_field!r} field with text")
    clock.phase = "splitting"
    n_train = _split_point(writer.tokens, val_fraction, ends_path)
    ends_path.unlink()
    _split(all_path, out_dir / "train.bin", out_dir / "val.bin", n_train)
    return _finish(out_dir, fmt, tok, documents if fmt == "jsonl" else 1)


def _split_point(n: int, val_fraction: float, ends_path: Path) -> int:
    """Train tokens: n * (1 - val_fraction), moved up to the next document end if there are
    document ends (or down to the last one before, if none follows)."""
    cut = int(n * (1.0 - val_fraction))
    if ends_path.stat().st_size == 0:
        return cut
    ends = np.memmap(ends_path, dtype=np.uint64, mode="r")
    i = int(np.searchsorted(ends, cut))
    if i < len(ends) and int(ends[i]) < n:
        return int(ends[i])
    return int(ends[i - 1]) if i > 0 and int(ends[i - 1]) > 0 else cut


def _split(all_path: Path, train: Path, val: Path, n_train: int) -> None:
    """The tokens after n_train go to val; train is the same file cut short (no second copy)."""
    with open(all_path, "rb") as f, open(val, "wb") as out:
        f.seek(2 * n_train)
        while block := f.read(READ_BYTES):
            out.write(block)
    os.truncate(all_path, 2 * n_train)
    os.replace(all_path, train)


def _finish(out_dir: Path, fmt: str, tok: Tokenizer, documents: int) -> Prepared:
    train = np.memmap(out_dir / "train.bin", dtype=np.uint16, mode="r")
    val_tokens = (out_dir / "val.bin").stat().st_size // 2
    head = [int(t) for t in train[: PREVIEW_CHARS * 2]]
    preview = decode(tok, head)[:PREVIEW_CHARS]
    done = Prepared(fmt, tok.meta(), tok.n_vocab, len(train), val_tokens, documents, preview)
    del train
    _write_meta(out_dir, done)
    return done


def _write_meta(out_dir: Path, done: Prepared) -> None:
    # Last, and atomically: a directory with meta.json is complete (gpt/data.py reads it so).
    tmp = out_dir / ".meta.json.tmp"
    tmp.write_text(json.dumps(asdict(done)))
    os.replace(tmp, out_dir / "meta.json")


class _Clock:
    """Progress reports, at most every PROGRESS_S; the callback may raise to stop the work."""

    def __init__(self, total: int, progress: ProgressFn | None):
        self.total, self.progress = total, progress
        self.stream: _Bounded | None = None
        self.phase = "tokenizing"
        self.t0 = time.monotonic()
        self.next = 0.0

    def tokens(self, n: int) -> None:
        now = time.monotonic()
        if self.progress is None or now < self.next:
            return
        self.next = now + PROGRESS_S
        done = self.stream.stored_pos() if self.stream is not None else 0
        elapsed = now - self.t0
        rate = n / elapsed if elapsed > 0 else 0.0
        eta = elapsed * (self.total - done) / done if done and self.phase == "tokenizing" else None
        self.progress(Progress(self.phase, done, self.total, n, rate, eta))


# --- a nanoGPT data directory, as a tar archive --------------------------------------------------


def _from_nanogpt(src: Path, out_dir: Path, tokenizer: str | None, max_bytes: int, clock: _Clock) -> Prepared:
    found: dict[str, int] = {}
    meta: dict[str, Any] | None = None
    f = open_input(src, max_bytes)
    clock.stream, clock.phase = f, "tokenizing"
    try:
        with f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                name = member_name(member)
                if name not in ("train.bin", "val.bin", "meta.pkl"):
                    continue  # prepare.py, input.txt, readme.md: nothing we need
                if name in found or (name == "meta.pkl" and meta is not None):
                    raise PrepareError(f"the archive has {name} twice")
                data = tar.extractfile(member)
                assert data is not None  # a regular file (_member_name checked)
                if name == "meta.pkl":
                    if member.size > MAX_META_BYTES:
                        raise PrepareError(f"meta.pkl is {member.size} bytes, over {MAX_META_BYTES}")
                    meta = read_meta_pkl(data.read())
                    continue
                if member.size % 2:
                    raise PrepareError(f"{name} has an odd length ({member.size} bytes): not uint16 tokens")
                with open(out_dir / name, "wb") as out:
                    written = 0
                    while block := data.read(READ_BYTES):
                        out.write(block)
                        written += len(block)
                        clock.tokens(sum(found.values()) + written // 2)
                found[name] = member.size // 2
    except tarfile.TarError as e:
        raise PrepareError(f"not a readable tar archive: {e}") from None
    missing = [n for n in ("train.bin", "val.bin") if n not in found]
    if missing:
        raise PrepareError(f"the archive has no {' or '.join(missing)} (a nanoGPT data directory has both)")
    tok: Tokenizer
    if meta is not None:
        tok = char_tokenizer(meta)
        if tokenizer == "gpt2":
            raise PrepareError("the archive has a meta.pkl (a character vocabulary), but tokenizer is gpt2")
    else:
        if tokenizer == "char":
            raise PrepareError("the archive has no meta.pkl, so its tokens are GPT-2's; tokenizer must be gpt2")
        tok = GPT2Tokenizer()
    for name, n in found.items():
        if n == 0:
            raise PrepareError(f"{name} is empty")
        _check_ids(out_dir / name, tok.n_vocab)
    return _finish(out_dir, "nanogpt", tok, 0)


def member_name(member: tarfile.TarInfo) -> str:
    """The member's file name if it is a regular file inside the archive's folder; a link,
    a device, or a path that leaves the folder refuses the archive."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise PrepareError(f"the archive's member {member.name!r} leaves its folder")
    if member.issym() or member.islnk():
        raise PrepareError(f"the archive's member {member.name!r} is a link")
    if member.isdir():
        return ""
    if not member.isfile():
        raise PrepareError(f"the archive's member {member.name!r} is not a regular file")
    return path.name


def _check_ids(path: Path, vocab: int) -> None:
    arr = np.memmap(path, dtype=np.uint16, mode="r")
    step = READ_BYTES // 2
    for i in range(0, len(arr), step):
        top = int(arr[i : i + step].max())
        if top >= vocab:
            raise PrepareError(f"{path.name} has token id {top}, outside the vocabulary of {vocab}")


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise PrepareError(f"meta.pkl refers to {module}.{name}: only plain dicts, strings and numbers are read")


def read_meta_pkl(data: bytes) -> dict[str, Any]:
    """nanoGPT's meta.pkl ({'vocab_size', 'itos', 'stoi'}) without running it: the reader
    looks up no global, so a pickle can build only plain values; anything else refuses."""
    if len(data) > MAX_META_BYTES:
        raise PrepareError(f"meta.pkl is {len(data)} bytes, over {MAX_META_BYTES}")
    try:
        meta = _NoGlobals(io.BytesIO(data)).load()
    except PrepareError:
        raise
    except Exception as e:  # a truncated or corrupt pickle: any of a dozen exception types
        raise PrepareError(f"meta.pkl is not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise PrepareError("meta.pkl must hold a dict")
    return meta


def char_tokenizer(meta: dict[str, Any]) -> CharTokenizer:
    """The character vocabulary of a nanoGPT meta.pkl (as read_meta_pkl returns it)."""
    itos = meta.get("itos")
    if not isinstance(itos, dict) or not itos:
        raise PrepareError("meta.pkl has no 'itos' mapping of token ids to characters")
    n = len(itos)
    if set(itos) != set(range(n)):
        raise PrepareError("meta.pkl's 'itos' keys must be the ids 0..vocab_size-1")
    chars = [itos[i] for i in range(n)]
    if not all(isinstance(c, str) and len(c) == 1 for c in chars):
        raise PrepareError("meta.pkl's 'itos' must map each id to one character")
    if len(set(chars)) != n:
        raise PrepareError("meta.pkl's 'itos' maps two ids to the same character")
    if meta.get("vocab_size", n) != n:
        raise PrepareError(f"meta.pkl says vocab_size {meta.get('vocab_size')!r} but 'itos' has {n} ids")
    return CharTokenizer("".join(chars))

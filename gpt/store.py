"""Where artifacts live: a local directory (the default) or an object store (S3, GCS, R2,
MinIO...) through fsspec, behind one small interface.

Keys are '/'-separated paths under the store's root (`runs/<id>/ckpt.pt`). What callers rely
on, in both kinds of store:

- an object appears whole or not at all (`put_file`: a temp file and a rename on a disk; one
  PUT, or a multipart upload that only its completion makes visible, on an object store), and
  a `before_commit` check that raises leaves the key as it was;
- `copy` gives a second name to an object without sending its bytes through this process
  (a hard link on a disk, a server-side copy on a store);
- `version` tells two contents under one key apart (inode and mtime on a disk, the ETag or
  version id on a store), so caches keyed on it never serve a replaced object;
- `open` streams: a reader holds one block in memory, never the whole object.

Credentials and endpoints are read the way fsspec's backends read them (for S3, boto's
AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ~/.aws...). No torch here: the
API uses this module too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

READ_BLOCK = 8 * 2**20  # what one streaming reader holds (and asks an object store for) at a time


@dataclass(frozen=True)
class Info:
    size: int
    version: str  # differs whenever the content under the key may have
    mtime: float  # seconds since the epoch


class Store:
    """A local directory or an object store, named by a path or a URL (`s3://bucket/prefix`)."""

    def __init__(self, url: str | os.PathLike[str], part_bytes: int | None = None, **storage_options: Any) -> None:
        """part_bytes: an object store's multipart upload part size (its default where None)."""
        text = os.fspath(url)
        self.url, self.part_bytes = text, part_bytes
        if "://" not in text or text.startswith("file://"):
            self.root: Path | None = Path(text.removeprefix("file://")).resolve()
            self.fs: Any = None
            self._prefix = ""
        else:
            import fsspec

            # Another process's write must be seen at once: no cached listings.
            storage_options.setdefault("use_listings_cache", False)
            self.root = None
            self.fs, self._prefix = fsspec.core.url_to_fs(text, **storage_options)
            self._prefix = self._prefix.rstrip("/")

    @property
    def is_local(self) -> bool:
        return self.root is not None

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # --- names -------------------------------------------------------------------------

    def local_path(self, key: str) -> Path | None:
        """The file itself where the store is a directory (to memmap, link or serve); None on an
        object store."""
        return None if self.root is None else self.root / _clean(key)

    def where(self, key: str = "") -> str:
        """The object's path or URL (the store's own for no key), for people and configs."""
        if self.root is not None:
            return str(self.root / _clean(key)) if key else str(self.root)
        return f"{self.url.rstrip('/')}/{_clean(key)}" if key else self.url

    def _remote(self, key: str) -> str:
        return f"{self._prefix}/{_clean(key)}" if self._prefix else _clean(key)

    # --- reading -----------------------------------------------------------------------

    def info(self, key: str) -> Info | None:
        """Size, version and mtime of the object at key; None when there is none."""
        if (p := self.local_path(key)) is not None:
            try:
                st = p.stat()
            except (FileNotFoundError, NotADirectoryError):
                return None
            if not p.is_file():
                return None
            return Info(st.st_size, file_version(st), st.st_mtime)
        try:
            d = self.fs.info(self._remote(key))
        except FileNotFoundError:
            return None
        if d.get("type") != "file":
            return None
        version = d.get("VersionId") or d.get("ETag") or d.get("etag") or d.get("md5Hash") or d.get("generation")
        mtime = d.get("LastModified") or d.get("mtime") or d.get("updated")
        ts = mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime or 0)
        return Info(int(d["size"]), f"{str(version).strip(chr(34))}:{d['size']}", ts)

    def exists(self, key: str) -> bool:
        return self.info(key) is not None

    def list(self, prefix: str = "") -> list[str]:
        """The names (last path part) of the objects directly under prefix (the store's root
        when empty), sorted."""
        if self.root is not None:
            p = self.root / _clean(prefix) if prefix else self.root
            try:
                return sorted(c.name for c in p.iterdir() if c.is_file())
            except (FileNotFoundError, NotADirectoryError):
                return []
        try:
            found = self.fs.ls(self._remote(prefix) if prefix else self._prefix, detail=True, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(d["name"].rsplit("/", 1)[-1] for d in found if d.get("type") == "file")

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[IO[bytes]]:
        """A binary reader of the object; FileNotFoundError when there is none."""
        if (p := self.local_path(key)) is not None:
            with open(p, "rb") as f:
                yield f
            return
        with self.fs.open(self._remote(key), "rb", block_size=READ_BLOCK, cache_type="readahead") as f:
            yield f

    def chunks(self, key: str, size: int = 2**20) -> Iterator[bytes]:
        """The object's bytes, up to size at a time (a download served without holding it).
        On S3, one GET read as it arrives: a ranged GET per block would be a request each
        (and a server that reads the whole object for every range, as moto's does, slows to
        a crawl on a big one)."""
        if self.fs is not None and "s3" in self._protocols():
            yield from self._streamed(key, size)
            return
        with self.open(key) as f:
            while chunk := f.read(size):
                yield chunk

    def _streamed(self, key: str, size: int) -> Iterator[bytes]:
        from fsspec.asyn import sync

        loop = self.fs.loop
        f = sync(loop, self.fs.open_async, self._remote(key), "rb")
        try:
            while chunk := sync(loop, f.read, size):
                yield chunk
        finally:
            if getattr(f, "r", None) is not None:  # the GET's body: its connection goes back to the pool
                f.r.close()

    def _protocols(self) -> tuple[str, ...]:
        return self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)

    def get_file(self, key: str, dest: Path) -> None:
        """Copy the object to a local file, which appears whole or not at all."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        os.close(fd)
        try:
            if (p := self.local_path(key)) is not None:
                shutil.copyfile(p, tmp)
            else:
                self.fs.get_file(self._remote(key), tmp)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def local_file(self, key: str, dest: Path) -> Path:
        """The object as a local file: the file itself in a directory, else a copy at dest."""
        p = self.local_path(key)
        if p is None:
            self.get_file(key, dest)
            return dest
        return p

    def presign(self, key: str, expires_s: int) -> str | None:
        """A URL that downloads the object without credentials for expires_s seconds, where the
        store can make one (None for a directory)."""
        if self.root is not None:
            return None
        try:
            return str(self.fs.sign(self._remote(key), expiration=expires_s))
        except NotImplementedError:
            return None

    # --- writing -----------------------------------------------------------------------

    @contextlib.contextmanager
    def staged(self, key: str, before_commit: Callable[[], None] | None = None) -> Iterator[Path]:
        """A local path to write the object to; when the block ends without an exception, the
        file becomes the object at key, whole (before_commit runs first, and if it raises, key
        keeps what it had). On a disk it is written beside its name (`.<name>.*.tmp`) and renamed;
        for an object store, written to a local temp file and uploaded."""
        p = self.local_path(key)
        where = p.parent if p is not None else None
        if where is not None:
            where.mkdir(parents=True, exist_ok=True)
        name = key.rsplit("/", 1)[-1]
        fd, tmp = tempfile.mkstemp(dir=where, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            yield Path(tmp)
            if p is not None:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())  # the rename must not land before the bytes do
                if before_commit is not None:
                    before_commit()
                os.replace(tmp, p)
            else:
                self._upload(tmp, key, before_commit)
        finally:
            with contextlib.suppress(FileNotFoundError):  # renamed, or a new attempt cleaned up first
                os.unlink(tmp)

    def put_file(self, src: Path, key: str, before_commit: Callable[[], None] | None = None) -> int:
        """Store a copy of the local file src under key, whole or not at all (see staged).
        Returns the size."""
        if self.local_path(key) is None:
            self._upload(os.fspath(src), key, before_commit)
        else:
            with self.staged(key, before_commit) as tmp:
                shutil.copyfile(src, tmp)
        return src.stat().st_size

    def _upload(self, src: str, key: str, before_commit: Callable[[], None] | None = None) -> None:
        """An object store has no rename: before_commit runs just before what makes the object
        visible. A file of up to one part goes in one PUT, after the check. On S3 a bigger one
        goes up as a multipart upload whose parts are sent first, then the check, then the
        completion; a check that refuses, or any failure, aborts the upload (no parts left).
        Either way this process holds at most one part in memory."""
        remote, check = self._remote(key), before_commit or (lambda: None)
        if "s3" not in self._protocols():
            check()
            self.fs.put_file(src, remote)
            return
        part = max(self.part_bytes or self.fs.default_block_size, 5 * 2**20)  # S3's smallest part
        if os.path.getsize(src) <= part:
            check()
            self.fs.pipe_file(remote, Path(src).read_bytes())
            return
        f = self.fs.open(remote, "wb", block_size=part, autocommit=False)
        try:
            with open(src, "rb") as r:
                while chunk := r.read(part):
                    f.write(chunk)
            f.close()  # the last part sent; the upload is still open, nothing visible
            check()
            f.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                f.discard()
            raise

    def put_folder(self, src: Path, prefix: str, last: str) -> None:
        """The files of the local directory src as prefix/<name>, the folder complete once
        `last` is there: in a directory, renamed into place whole (src is gone after); on an
        object store, uploaded one by one, `last` after all the others."""
        if (p := self.local_path(prefix)) is not None:
            p.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(src, p)
            except OSError:
                if (p / last).exists():
                    return  # another writer of the same folder got there first
                tmp = Path(tempfile.mkdtemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp"))
                shutil.copytree(src, tmp, dirs_exist_ok=True)  # src is on another filesystem
                os.rename(tmp, p)
            return
        names = sorted(f.name for f in src.iterdir() if f.is_file())
        for name in [n for n in names if n != last] + [last]:
            self.put_file(src / name, f"{prefix}/{name}")

    def put_bytes(self, data: bytes, key: str) -> None:
        """A small object (a manifest, a JSON), whole or not at all."""
        if (p := self.local_path(key)) is not None:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, p)
            return
        self.fs.pipe_file(self._remote(key), data)

    def read_bytes(self, key: str) -> bytes:
        if (p := self.local_path(key)) is not None:
            return p.read_bytes()
        return bytes(self.fs.cat_file(self._remote(key)))

    def copy(self, src: str, dst: str) -> None:
        """Give dst the object at src, atomically, without its bytes passing through here."""
        if (s := self.local_path(src)) is not None:
            d = self.local_path(dst)
            assert d is not None
            d.parent.mkdir(parents=True, exist_ok=True)
            tmp = d.with_name(f".{d.name}.link")
            tmp.unlink(missing_ok=True)
            try:
                os.link(s, tmp)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(s, tmp)
            os.replace(tmp, d)
            return
        self.fs.copy(self._remote(src), self._remote(dst))

    def delete(self, key: str) -> None:
        """Remove the object at key; nothing when there is none."""
        if (p := self.local_path(key)) is not None:
            p.unlink(missing_ok=True)
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._remote(key))

    def delete_tree(self, prefix: str) -> None:
        """Remove every object under prefix."""
        if (p := self.local_path(prefix)) is not None:
            shutil.rmtree(p, ignore_errors=True)
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._remote(prefix), recursive=True)


def file_version(st: os.stat_result) -> str:
    """A file's version, as Info.version gives it in a directory (an open file's fstat too)."""
    return f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


def _clean(key: str) -> str:
    """A key that stays under the store's root: no absolute path, no '..', no empty parts."""
    parts = [p for p in key.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"not a key under the store: {key!r}")
    return "/".join(parts)


class Cache:
    """Local copies of folders of an object store whose content never changes under their
    name (a prepared dataset is named by its text's hash and its tokenizer), so that training
    reads a memmap on a local disk, not the network. At most max_bytes in all: the folders
    used longest ago go first. Taking one out from under a reader is safe on POSIX: a
    memmapped file lives on until it is unmapped, only its name goes.

    Several processes may share root: a folder is fetched once (the others wait on its lock)
    into a temp directory that is renamed into place whole; the next fetch of it removes
    what a killed one left.
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = root, max_bytes

    def folder(self, store: Store, prefix: str, names: list[str]) -> Path:
        """A local directory holding the objects prefix/<name> for each name."""
        if (p := store.local_path(prefix)) is not None:
            return p  # the store is a directory already: no second copy
        import fcntl
        import hashlib

        tag = hashlib.sha256(f"{store.url}\n{_clean(prefix)}".encode()).hexdigest()[:24]
        here = self.root / tag
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{tag}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not here.is_dir():
                # A fetch killed outright (SIGKILL, a lost machine) left its temp folder: with
                # the lock held, no other fetch of this folder is under way to own one.
                for orphan in self.root.glob(f".{tag}.*.part"):
                    shutil.rmtree(orphan, ignore_errors=True)
                tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{tag}.", suffix=".part"))
                try:
                    for name in names:
                        store.get_file(f"{prefix}/{name}", tmp / name)
                    os.replace(tmp, here)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            os.utime(here)  # last used: now
        self._evict(keep=here)
        return here

    def _evict(self, keep: Path) -> None:
        entries = []
        for d in self.root.iterdir():
            if d.is_dir() and not d.name.startswith("."):
                size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
                entries.append((d.stat().st_mtime, size, d))
        total = sum(size for _, size, _ in entries)
        for _, size, d in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if d == keep:
                continue  # the one just asked for stays, even alone over the bound
            shutil.rmtree(d, ignore_errors=True)
            total -= size

"""`gptjobs datasets upload|list|show|rm`: your corpora from a terminal, over gptjobs.Client.

`upload` sends the file as parts in parallel with a progress bar (bytes, MB/s, ETA); after
an interruption the same command resumes, sending only the parts the server lacks. Then it
follows the preparing to `ready` with a second bar (tokens, tokens/s). Exit codes as the
other client commands: 0 ready, 1 failed to prepare, 2 bad input, 4 refused or unreachable.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from typing import TextIO

import gptjobs
from api.client import EXIT_FAILED, _client, _fmt, _guarded, ago, duration

REDRAW_S = 0.1


class Meter:
    """One progress line, redrawn in place on a terminal; elsewhere only its last state,
    printed when it is done."""

    def __init__(self, out: TextIO):
        self.out, self.tty = out, out.isatty()
        self.drawn, self.text = 0.0, ""

    def show(self, fraction: float | None, text: str, force: bool = False) -> None:
        self.text = text
        now = time.monotonic()
        if not self.tty or (not force and now - self.drawn < REDRAW_S):
            return
        self.drawn = now
        width = shutil.get_terminal_size().columns - 1
        room = width - len(text) - 3
        if fraction is not None and room >= 10:
            fill = round(room * min(1.0, max(0.0, fraction)))
            text = f"[{'=' * fill}{' ' * (room - fill)}] {text}"
        self.out.write("\r" + text[:width] + "\x1b[K")
        self.out.flush()

    def done(self, text: str | None = None) -> None:
        if self.tty:
            self.out.write("\r\x1b[K")
        print(text or self.text, file=self.out, flush=True)


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def cmd_upload(args: argparse.Namespace) -> int:
    client = _client(args)
    meter = Meter(sys.stdout)

    def sent(p: gptjobs.UploadProgress) -> None:
        rate = p.bytes_sent / p.elapsed_s if p.elapsed_s > 0 else 0.0
        eta = (p.bytes_total - p.bytes_done) / rate if rate > 0 else None
        resumed = "  (resumed)" if p.resumed else ""
        text = f"upload {_mb(p.bytes_done)} / {_mb(p.bytes_total)}  {rate / 1e6:.1f} MB/s  eta {duration(eta)}{resumed}"
        meter.show(p.bytes_done / p.bytes_total if p.bytes_total else 1.0, text, force=p.bytes_done == p.bytes_total)

    ds = client.datasets.upload(
        args.file,
        args.name,
        tokenizer=args.tokenizer,
        format=args.format,
        val_fraction=args.val_fraction,
        text_field=args.text_field,
        parallel=args.parallel,
        progress=sent,
    )
    meter.done()
    print(f"dataset {ds.id} {ds.name!r}: {ds.status}", flush=True)
    if args.no_wait:
        return 0

    def preparing(d: gptjobs.Dataset) -> None:
        p = d.progress
        frac = p.bytes_done / d.bytes if d.bytes else None
        text = (
            f"{p.phase or 'waiting for a prepare worker'}  {p.tokens:,} tokens  "
            f"{p.tokens_per_s:,.0f} tokens/s  eta {duration(p.eta_s)}"
        )
        meter.show(frac, text)

    ds = client.datasets.wait(ds.id, poll_s=0.5, progress=preparing)
    if ds.status == "failed":
        meter.done(f"dataset {ds.id} failed: {ds.reason}")
        return EXIT_FAILED
    meter.done(
        f"dataset {ds.id} ready: {ds.train_tokens:,} train + {ds.val_tokens:,} val tokens, "
        f"{ds.tokenizer} (vocabulary {ds.vocab_size:,})"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = [["ID", "NAME", "STATUS", "TOKENIZER", "SIZE", "TOKENS", "AGE"]]
    for d in _client(args).datasets.list():
        tokens = (d.train_tokens or 0) + (d.val_tokens or 0) if d.status == "ready" else d.progress.tokens
        rows.append([d.id, d.name, d.status, d.tokenizer or "-", _mb(d.bytes), f"{tokens:,}", ago(d.created_at)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(
                c.rjust(w) if i >= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    if len(rows) == 1:
        print("(no datasets)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    d = _client(args).datasets.get(args.dataset)
    p = d.progress
    lines = [
        ("dataset", f"{d.id}  {d.name!r}"),
        ("status", d.status + (f": {d.reason}" if d.reason else "")),
        ("format", d.format),
        (
            "tokenizer",
            f"{d.tokenizer}" + (f" (vocabulary {d.vocab_size:,})" if d.vocab_size else "") if d.tokenizer else None,
        ),
        ("bytes", f"{d.bytes:,}  sha256 {d.sha256}"),
        ("tokens", f"{d.train_tokens:,} train, {d.val_tokens:,} val" if d.status == "ready" else None),
        ("documents", _fmt(d.documents, ",d") if d.documents else None),
        (
            "progress",
            f"{p.phase}: {p.tokens:,} tokens, {p.tokens_per_s:,.0f} tokens/s" if d.status == "preparing" else None,
        ),
        ("created", f"{ago(d.created_at)} ago"),
    ]
    for label, value in lines:
        if value is not None:
            print(f"{label:<10} {value}")
    if d.preview:
        print("preview")
        print("    " + d.preview[:300].replace("\n", "\n    "))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    _client(args).datasets.delete(args.dataset)
    print(f"deleted dataset {args.dataset}")
    return 0


def add_dataset_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    top = sub.add_parser("datasets", help="your datasets: upload, list, show, rm")
    dsub = top.add_subparsers(dest="datasets_command", required=True)

    def command(name: str, fn: object, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = dsub.add_parser(name, help=help, parents=[common], allow_abbrev=False)
        p.set_defaults(fn=_guarded(fn))  # type: ignore[arg-type]
        return p

    p = command("upload", cmd_upload, "send a file as a dataset (resumable), then follow its preparing")
    p.add_argument("file", metavar="FILE", help="text, JSON Lines, gzip/zstd of either, or a nanoGPT data dir as a tar")
    p.add_argument("--name", required=True, help="your name for it (runs may say --dataset=NAME)")
    p.add_argument("--tokenizer", choices=["gpt2", "char"], help="default gpt2 (a nanoGPT archive: its own)")
    p.add_argument("--format", choices=["text", "jsonl", "nanogpt"], help="default: told from the file")
    p.add_argument("--val-fraction", type=float, help="the share held out for val (default 0.1)")
    p.add_argument("--text-field", help="JSON Lines: the field holding each document (default text)")
    p.add_argument("--parallel", type=int, default=4, help="parts in flight at once (default 4)")
    p.add_argument("--no-wait", action="store_true", help="return once uploaded, without following the preparing")

    command("list", cmd_list, "your datasets, newest first")
    p = command("show", cmd_show, "a dataset, its progress and a preview")
    p.add_argument("dataset", metavar="DATASET")
    p = command("rm", cmd_rm, "delete a dataset (refused while a queued or running run uses it)")
    p.add_argument("dataset", metavar="DATASET")

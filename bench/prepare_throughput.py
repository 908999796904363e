"""How fast a corpus is prepared, against the most tiktoken can do on this machine and
against nanoGPT's way, and how much memory preparing takes at two sizes.

    python bench/prepare_throughput.py [--gb 1.0] [--small-mb 100]

It writes a generated English-like text (lines of tiny Shakespeare drawn at random, in
paragraphs; `--gb` of it) and measures, on the same bytes, in this order:

- ours: gpt.prepare.prepare(format text, GPT-2 BPE) in a child process of its own, workers
  = every core this process may use; tokens/s over its wall time, and the peak RSS of that
  child and its tokenizer processes together (sampled every 0.1 s);
- the ceiling: tiktoken's encode_ordinary_batch over the same text (in pieces of the size
  ours encodes) on every core, in this process, nothing written;
- nanoGPT's way: one encode_ordinary call per document (a paragraph), one process, as its
  openwebtext/prepare.py encodes each example;
- the peak RSS of ours again at --small-mb of input, to compare with the big one.

Bars: ours >= 0.85 of the ceiling, >= 1.5x nanoGPT's way; peak RSS <= 512 MB at both sizes
and within 10% of each other (memory that does not grow with the input).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.settings import usable_cores  # noqa: E402
from gpt.prepare import CHUNK_CHARS  # noqa: E402
from gpt.tokenizers import ASSETS, GPT2Tokenizer  # noqa: E402


def generate(path: Path, size: int, seed: int = 0) -> None:
    lines = [ln for ln in (ASSETS / "tinyshakespeare.txt").read_text().splitlines() if ln.strip()]
    rng = random.Random(seed)
    written = 0
    with open(path, "w") as f:
        while written < size:
            para = "\n".join(rng.choice(lines) for _ in range(rng.randint(3, 12))) + "\n\n"
            f.write(para)
            written += len(para)


CHILD = """
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from gpt.prepare import prepare
src, out, threads = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
t0 = time.perf_counter()
done = prepare(src, out, fmt="text", tokenizer="gpt2", max_bytes=1 << 40, workers=threads)
wall = time.perf_counter() - t0
rss = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))  # this mm only: ru_maxrss counts the parent before exec
print(json.dumps({"tokens": done.train_tokens + done.val_tokens, "wall": wall, "rss": rss}))
"""


def _tree_rss(root: int) -> int:
    """RSS of a process and all its descendants (the preparation's tokenizer processes)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/statm") as f:
                rss[int(d)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(kids)
        frontier += kids
    return sum(rss.get(p, 0) for p in tree)


def ours(src: Path, threads: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=src.parent) as out:
        argv = [sys.executable, "-c", CHILD, str(ROOT), str(src), out, str(threads)]
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        peak = 0
        while child.poll() is None:
            peak = max(peak, _tree_rss(child.pid))
            time.sleep(0.1)
        assert child.returncode == 0 and child.stdout is not None
        done = json.loads(child.stdout.read())
    return {**done, "tree_rss": peak}


def ceiling(text: str, threads: int) -> tuple[int, float]:
    enc = GPT2Tokenizer().enc
    pieces = [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)]
    t0 = time.perf_counter()
    n = sum(len(ids) for ids in enc.encode_ordinary_batch(pieces, num_threads=threads))
    return n, time.perf_counter() - t0


def nanogpt_way(text: str) -> tuple[int, float]:
    enc = GPT2Tokenizer().enc
    t0 = time.perf_counter()
    n = sum(len(enc.encode_ordinary(doc)) for doc in text.split("\n\n"))
    return n, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="size of the big input, in GB (default 1)")
    ap.add_argument("--small-mb", type=float, default=100.0, help="size of the small input, in MB (default 100)")
    ap.add_argument("--dir", default=None, help="where the inputs go (default: a temp dir)")
    args = ap.parse_args()
    threads = usable_cores()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="prepare-bench-") as d:
        big, small = Path(d) / "big.txt", Path(d) / "small.txt"
        generate(big, int(args.gb * 1e9))
        generate(small, int(args.small_mb * 1e6), seed=1)
        size = big.stat().st_size
        print(f"input: {size / 1e9:.2f} GB of generated text; {threads} cores", flush=True)

        r = ours(big, threads)
        ours_tps = r["tokens"] / r["wall"]
        print(
            f"ours:         {r['tokens']:,} tokens in {r['wall']:.1f} s = {ours_tps:,.0f} tokens/s "
            f"({size / r['wall'] / 1e6:.1f} MB/s), peak RSS {r['tree_rss'] / 2**20:.0f} MB "
            f"(its processes together; the main one {r['rss'] / 2**20:.0f} MB)",
            flush=True,
        )
        text = big.read_text()
        n_ceil, t_ceil = ceiling(text, threads)
        ceil_tps = n_ceil / t_ceil
        print(f"ceiling:      {n_ceil:,} tokens in {t_ceil:.1f} s = {ceil_tps:,.0f} tokens/s", flush=True)
        n_nano, t_nano = nanogpt_way(text)
        nano_tps = n_nano / t_nano
        print(f"nanoGPT way:  {n_nano:,} tokens in {t_nano:.1f} s = {nano_tps:,.0f} tokens/s", flush=True)
        del text
        s = ours(small, threads)
        print(
            f"small input:  {small.stat().st_size / 1e6:.0f} MB, peak RSS {s['tree_rss'] / 2**20:.0f} MB "
            f"(the main process {s['rss'] / 2**20:.0f} MB)",
            flush=True,
        )
    this = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nours / ceiling      = {ours_tps / ceil_tps:.3f}   (bar >= 0.85)")
    print(f"ours / nanoGPT way  = {ours_tps / nano_tps:.2f}x  (bar >= 1.5)")
    big_rss, small_rss = r["tree_rss"], s["tree_rss"]
    print(
        f"peak RSS big/small  = {big_rss / 2**20:.0f} / {small_rss / 2**20:.0f} MB = {big_rss / small_rss:.3f}"
        "   (bars: <= 512 MB, within 10%)"
    )
    print(f"(this process, holding the text for the ceiling: {this:.0f} MB; not part of the bar)")
    ok = ours_tps >= 0.85 * ceil_tps and ours_tps >= 1.5 * nano_tps and max(big_rss, small_rss) <= 512 * 2**20
    ok = ok and abs(big_rss / small_rss - 1) <= 0.10
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

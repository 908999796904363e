"""How fast a large file goes through the resumable upload API, and what it costs the API.

    python bench/upload_throughput.py [--gb 1.0] [--parallel 4] [--part-mb 64]

Starts redis-server and `gptjobs serve` on loopback (tests/harness.py's Stack; no worker:
what is measured ends at complete), writes a file of random bytes, and uploads it the way
`gptjobs datasets upload` does (gptjobs.Client.datasets.upload: the whole file's sha256 read
beside the parts sent in parallel, each written in place in the upload's file, then complete,
which hashes the file and checks the sha256). Prints
the wall time and MB/s of the whole call, and the API process's peak RSS (VmHWM) before and
after. Bars: >= 150 MB/s; the API's RSS stays under 300 MB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gptjobs  # noqa: E402
from tests.harness import Stack  # noqa: E402


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--part-mb", type=int, default=64)
    args = ap.parse_args()
    size = int(args.gb * 1e9)
    env = {"GPTJOBS_UPLOAD_PART_BYTES": str(args.part_mb << 20), "GPTJOBS_MAX_UPLOAD_BYTES": str(2 * size)}
    with tempfile.TemporaryDirectory(prefix="gptjobs-bench-") as d, Stack(Path(d) / "stack", env=env) as stack:
        src = Path(d) / "upload.bin"
        with open(src, "wb") as f:
            for _ in range(size // (64 << 20)):
                f.write(os.urandom(64 << 20))
            f.write(os.urandom(size % (64 << 20)))
        stack.start_redis()
        stack.migrate()
        stack.start_api()
        assert stack.api_proc is not None
        pid = stack.api_proc.pid
        before = peak_rss(pid)
        with gptjobs.Client(stack.url, "") as client:
            client.datasets.state_dir = Path(d) / "state"
            t0 = time.perf_counter()
            ds = client.datasets.upload(src, "bench", format="text", parallel=args.parallel)
            wall = time.perf_counter() - t0
        after = peak_rss(pid)
    rate = size / wall / 1e6
    print(f"{size / 1e9:.2f} GB in {args.part_mb} MB parts, {args.parallel} in flight: {wall:.2f} s = {rate:.0f} MB/s")
    print(f"  (the whole call: the parts and the file's sha256 beside them, then complete hashing it; dataset {ds.id})")
    print(f"API peak RSS: {before / 2**20:.0f} MB at start, {after / 2**20:.0f} MB after the upload")
    print(
        f"bars: >= 150 MB/s ({'met' if rate >= 150 else 'NOT met'}), API RSS < 300 MB ({'met' if after < 300 * 2**20 else 'NOT met'})"
    )
    return 0 if rate >= 150 and after < 300 * 2**20 else 1


if __name__ == "__main__":
    sys.exit(main())

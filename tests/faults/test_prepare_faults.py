"""A prepare worker SIGKILLed in the middle of a file: the dataset stays `preparing` with
nothing half-written where training reads, the reaper notices the lapsed lease, and a new
worker prepares it again from the start, to the same counts as an uninterrupted run."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import gptjobs
from gpt.tokenizers import ASSETS, GPT2Tokenizer
from tests.faults.conftest import Row, Stack
from tests.harness import wait_for


def corpus(path: Path, size: int) -> str:
    lines = [ln for ln in (ASSETS / "tinyshakespeare.txt").read_text().splitlines() if ln.strip()]
    rng = random.Random(0)
    out: list[str] = []
    n = 0
    while n < size:
        out.append(rng.choice(lines))
        n += len(out[-1]) + 1
    text = "\n".join(out) + "\n"
    path.write_text(text)
    return text


def test_prepare_worker_killed_mid_file_is_prepared_again(stack: Stack, row: Row, tmp_path: Path) -> None:
    row.fault = "8. prepare worker SIGKILLed mid-file; a new worker started"
    stack.up(train=0, prepare=1)
    text = corpus(tmp_path / "corpus.txt", 30_000_000)  # a few seconds of GPT-2 BPE on two cores
    with gptjobs.Client(stack.url, "") as client:
        ds = client.datasets.create(tmp_path / "corpus.txt", "corpus", tokenizer="gpt2")
        seen = wait_for(lambda: (d := client.datasets.get(ds.id)).progress.tokens > 0 and d, 60, "tokenizing", 0.02)
        t_fault = time.time()
        stack.workers[0].stop(signal.SIGKILL)
        assert client.datasets.get(ds.id).status == "preparing"
        done_looking = [k for k in stack.artifacts("datasets") if k.endswith("/meta.json")]
        assert done_looking == [], "a killed preparation left a folder that looks done"
        stack.start_worker("prepare", wait=False)
        done = client.datasets.wait(ds.id, timeout=180, poll_s=0.2)
    assert done.status == "ready", (done.reason, stack.log_tail("prepare2"))
    want = len(GPT2Tokenizer().enc.encode_ordinary(text))
    assert done.train_tokens + done.val_tokens == want  # type: ignore[operator]
    # The killed attempt's scratch (on the worker's disk) is gone too, and no temp name is in the store.
    leftovers = [p.name for p in (stack.data_dir / "cache" / "prepare").glob(f".{ds.id}.*")]
    leftovers += [k for k in stack.artifacts("datasets") if "/." in k]
    assert leftovers == [], leftovers
    row.recovered = "yes"
    row.recover_s = time.time() - t_fault
    row.lost = row.duplicated = 0
    row.note = (
        f"killed at {seen.progress.bytes_done / 1e6:.1f} of {len(text) / 1e6:.0f} MB ({seen.progress.tokens:,} tokens); "
        f"prepared again from the start: {want:,} tokens, as tiktoken counts the whole text"
    )

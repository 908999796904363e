"""The training configs the tests and the benchmarks share, as plain dicts of nanoGPT's keys
(this module imports nothing, so a benchmark or a fast test can take them for free).

A tier that needs more spells only its overrides on top, e.g. the engine's unit tests:
`TINY | {"max_iters": 20, "eval_interval": 10, ...}`.
"""

from __future__ import annotations

from typing import Any

# The smallest model worth training: ~100 iterations a second on one CPU thread. The
# dataset's recipe fills in the rest (shakespeare_char's: dropout 0.2, eval_interval 250...).
TINY: dict[str, Any] = {
    "dataset": "shakespeare_char",
    "device": "cpu",
    "compile": False,
    "n_layer": 1,
    "n_head": 2,
    "n_embd": 32,
    "block_size": 32,
    "batch_size": 4,
    "eval_iters": 5,  # evaluation is not what these tests measure
    "log_interval": 1,
}

# nanoGPT's README CPU run (`python train.py config/train_shakespeare_char.py --device=cpu
# --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
# --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`): the
# reference for parity (step 250: train 2.4293, val 2.4447) and for speed.
NANOGPT_CPU: dict[str, Any] = {
    "dataset": "shakespeare_char",
    "device": "cpu",
    "compile": False,
    "eval_iters": 20,
    "log_interval": 1,
    "block_size": 64,
    "batch_size": 12,
    "n_layer": 4,
    "n_head": 4,
    "n_embd": 128,
    "max_iters": 2000,
    "lr_decay_iters": 2000,
    "dropout": 0.0,
}

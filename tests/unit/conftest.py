from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from gpt.config import TrainConfig, make_config
from tests.configs import TINY as SERVICE_TINY

# One thread: the tests share two cores with other processes, where OpenMP threads that
# spin-wait for each other slow a step down tenfold.
torch.set_num_threads(1)

# The shared tiny model, as short runs that evaluate (and checkpoint) every 10 iterations.
TINY: dict[str, Any] = SERVICE_TINY | {
    "eval_iters": 2,
    "eval_interval": 10,
    "max_iters": 20,
    "lr_decay_iters": 20,
    "warmup_iters": 2,
    "dropout": 0.0,
}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def tiny(tmp_path: Path):
    def make(**over: Any) -> TrainConfig:
        return make_config({**TINY, "out_dir": str(tmp_path / "out"), **over})

    return make

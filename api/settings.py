"""The one place environment variables are read (prefix GPTJOBS_).

Torch-free and FastAPI-free, so that the worker, the CLI and migrations share it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPTJOBS_", extra="ignore")

    data_dir: Path = Path(".gptjobs")  # checkpoints, datasets, SQLite, embedded Redis
    database_url: str | None = None  # None: SQLite at <data_dir>/gptjobs.db
    redis_url: str = "redis://127.0.0.1:6379/0"  # broker, event streams, cancel flags

    # Limits a service owner sets for everyone's runs.
    max_params: int | None = Field(default=200_000_000, ge=1)  # bigger models are refused with a 422
    stream_maxlen: int = Field(default=10_000, ge=100)  # per-run Redis stream cap (approximate trim)
    stream_ttl_s: int = Field(default=7 * 86400, ge=60)  # finished runs' streams expire; the DB keeps all

    # Worker
    iter_flush_count: int = Field(default=200, ge=1)  # iter events per DB transaction...
    iter_flush_s: float = Field(default=1.0, gt=0)  # ...or this old, whichever comes first
    cancel_check_s: float = Field(default=0.1, ge=0)  # at most one Redis EXISTS per this many seconds
    torch_threads: int | None = Field(default=None, ge=1)  # None: the cores this process may use
    visibility_timeout_s: int = Field(default=3600, ge=10)

    # API
    ws_queue_size: int = Field(default=2000, ge=10)  # per-subscriber buffer before it resyncs from history
    xread_block_ms: int = Field(default=1000, ge=10, le=4000)  # below redis-py's 5 s socket timeout
    idle_check_s: float = Field(default=5.0, gt=0)  # a quiet subscriber re-reads the DB this often

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'gptjobs.db').resolve()}"

    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1

"""The one place environment variables are read (prefix GPTJOBS_).

Torch-free and FastAPI-free, so that the worker, the CLI and migrations share it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gpt.store import Store


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPTJOBS_", extra="ignore")

    data_dir: Path = Path(".gptjobs")  # checkpoints, datasets, SQLite, embedded Redis
    # Where checkpoints live (gpt/store.py): a directory, or an object store's URL
    # (s3://bucket/prefix, its endpoint and keys read as boto reads them). None: data_dir.
    artifacts_url: str | None = None
    store_part_bytes: int = Field(default=64 * 2**20, ge=5 * 2**20)  # an object store's multipart part size
    cache_dir: Path | None = None  # a worker's local copies of what it reads from the store; None: data_dir/cache
    cache_max_bytes: int = Field(default=50 * 2**30, ge=1)  # prepared datasets cached by a worker, at most
    presign_downloads: bool = False  # checkpoint downloads redirect (307) to a presigned URL where the store has them
    presign_expires_s: int = Field(default=3600, ge=60, le=7 * 86400)
    database_url: str | None = None  # None: SQLite at <data_dir>/gptjobs.db
    redis_url: str = "redis://127.0.0.1:6379/0"  # broker, event streams, cancel flags

    # Limits a service owner sets for everyone's runs.
    max_params: int | None = Field(default=200_000_000, ge=1)  # bigger models are refused with a 422
    stream_maxlen: int = Field(default=10_000, ge=100)  # per-run Redis stream cap (approximate trim)
    stream_ttl_s: int = Field(default=7 * 86400, ge=60)  # finished runs' streams expire; the DB keeps all

    # Access (api/auth.py). Limits apply to each owner (each API key's name) on its own.
    allow_open: bool = False  # serve without API keys on a non-loopback address (behind your own auth)
    max_active_runs: int = Field(default=20, ge=1)  # queued + running + recovering; over: 429
    max_iters: int = Field(default=10_000_000, ge=1)  # a run's max_iters; over: 422
    sample_requests_per_min: int = Field(default=120, ge=1)  # POST /runs/{id}/samples; over: 429

    # Datasets (api/routes/datasets.py, uploads.py; worker/prepare.py). Limits per owner.
    max_upload_bytes: int = Field(default=20 * 2**30, ge=1)  # one upload, and what it may decompress to
    max_stored_bytes: int = Field(default=100 * 2**30, ge=1)  # an owner's datasets and open uploads
    max_datasets: int = Field(default=100, ge=1)
    upload_part_bytes: int = Field(default=64 * 2**20, ge=1024)  # the most one PUT of a part may carry
    upload_ttl_s: float = Field(default=86400.0, gt=0)  # an upload untouched this long is removed
    prepare_workers: int | None = Field(default=None, ge=1)  # tokenizer processes; None: the cores it may use
    max_prepare_restarts: int = Field(default=3, ge=0)  # lost prepare workers before a dataset fails

    # Worker
    iter_flush_count: int = Field(default=200, ge=1)  # iter events per DB transaction...
    iter_flush_s: float = Field(default=1.0, gt=0)  # ...or this old, whichever comes first
    cancel_check_s: float = Field(default=0.1, ge=0)  # at most one Redis EXISTS per this many seconds
    torch_threads: int | None = Field(default=None, ge=1)  # None: the cores this process may use
    visibility_timeout_s: int = Field(default=3600, ge=10)
    keep_checkpoints: int = Field(default=5, ge=1)  # per run, by iter (ckpt-<iter>.pt); the best is kept too
    # A run on several machines: the workers that take it meet within this many seconds, or
    # the run goes back to the queue. node_addr: where the other machines reach this worker
    # (None: this machine's hostname).
    rendezvous_timeout_s: float = Field(default=120.0, ge=1)
    node_addr: str | None = None

    # Leases (worker/lease.py, api/reaper.py): a training worker renews its run's lease every lease_ttl_s / 3;
    # a lease not renewed for lease_ttl_s means the worker is gone and the reaper (in the API)
    # queues the run again, at most max_restarts times (a run's own max_restarts wins).
    lease_ttl_s: float = Field(default=30.0, ge=1)
    reaper_interval_s: float = Field(default=5.0, gt=0)
    max_restarts: int = Field(default=3, ge=0, le=1000)
    # Sweeps (api/sweeper.py): the controller, in one API replica at a time (a lease of lease_ttl_s),
    # looks at the live sweeps this often: new eval events to report, runs to start or stop.
    sweep_interval_s: float = Field(default=2.0, gt=0)

    # Sampling (POST /runs/{id}/samples): limits per request, and the sampling worker
    sample_max_new_tokens: int = Field(default=2000, ge=1)
    sample_max_num_samples: int = Field(default=16, ge=1)
    sample_max_prompt_chars: int = Field(default=20_000, ge=1)
    sample_models: int = Field(default=4, ge=1)  # checkpoints a sampling worker keeps loaded (LRU)
    sample_device: str | None = None  # None: cuda if available, else cpu
    sample_pickup_timeout_s: float = Field(default=10.0, gt=0)  # no sampling worker took the request: 503
    sample_answer_timeout_s: float = Field(default=60.0, gt=0)  # a worker took it, then went quiet: 504
    weights_timeout_s: float = Field(default=600.0, gt=0)  # an import or a Hugging Face export may take this long

    # API
    ws_queue_size: int = Field(default=2000, ge=10)  # per-subscriber buffer before it resyncs from history
    xread_block_ms: int = Field(default=1000, ge=10, le=4000)  # below redis-py's 5 s socket timeout
    idle_check_s: float = Field(default=5.0, gt=0)  # a quiet subscriber re-reads the DB this often
    max_body_bytes: int = Field(default=1_048_576, ge=1024)  # a longer request body is a 413, unread

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'gptjobs.db').resolve()}"

    def store(self) -> Store:
        """The artifact store's root."""
        return Store(self.artifacts_url or self.data_dir, part_bytes=self.store_part_bytes)

    def run_store(self, run_id: str) -> Store:
        """A run's folder of the artifact store: its checkpoints, model.json, exports."""
        root = self.artifacts_url.rstrip("/") if self.artifacts_url else str(self.data_dir / "runs")
        return Store(f"{root}/runs/{run_id}" if self.artifacts_url else f"{root}/{run_id}", self.store_part_bytes)

    def cache(self) -> Path:
        return self.cache_dir or self.data_dir / "cache"

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

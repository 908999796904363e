"""Sweeps as the API keeps them: a POST /sweeps body checked into a sweep's row (every
combination of values it can, before anything is queued), and a sweep as its owner reads it
(its runs, each one's best val loss, the best run so far, what is left).

A sweep's runs are ordinary runs with `sweep_id`, `trial` and `params`; what it searches and
prunes with is Optuna's (api/study.py), driven by the controller (api/sweeper.py). Reading a
sweep needs only our tables: the runs and their eval events. Torch-free, Optuna-free.
"""

from __future__ import annotations

import itertools
import json
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import HTTPException
from sqlalchemy import select
from sqlmodel import Session

from api.db import Database, R, Run, Sweep
from api.lifecycle import RUNNING
from api.progress import glances
from api.routes.config import SERVER_SET, check_config
from api.schemas import SweepBest, SweepCreate, SweepDetail, SweepPublic, SweepRun, iso
from api.settings import Settings
from gpt.config import FIELDS, Corpus, Start

MAX_GRID = 1000  # grid points; a bigger grid is a 422 (a random search samples a space that size)
MAX_CHECKED = 1000  # combinations checked at creation; past it, a point is checked as its run starts
MAX_ERRORS = 10  # failing combinations named in one 422
DEFAULT_CONCURRENT = 4

Errors = list[dict[str, Any]]


def _combinations(parameters: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every combination of the listed values and of each range's two ends: a range's
    inside is checked when a point inside it is drawn."""
    names = list(parameters)
    choices = [p["values"] if "values" in p else [p["min"], p["max"]] for p in parameters.values()]
    for combo in itertools.product(*choices):
        yield dict(zip(names, combo, strict=True))


def grid_size(parameters: dict[str, Any]) -> int:
    return math.prod(len(p["values"]) for p in parameters.values())


def _named(combo: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in combo.items())


def plan(
    body: SweepCreate,
    settings: Settings,
    corpus: Callable[[str], Corpus],
    owner: str | None,
    start: Callable[[str], Start] | None = None,
) -> tuple[Sweep | None, Errors]:
    """The sweep's row (not added yet), or the errors by field, as a 422 lists them."""
    errors: Errors = []

    def bad(loc: tuple[Any, ...], msg: str, value: Any = None) -> None:
        errors.append({"type": "value_error", "loc": ("body", *loc), "msg": msg, "input": value})

    parameters = {name: p.normalised() for name, p in body.parameters.items()}
    for name in parameters:
        if name not in FIELDS:
            bad(("parameters", name), "unknown key (not a training option)", name)
        elif name in SERVER_SET:
            bad(("parameters", name), f"not searchable: {SERVER_SET[name]}", name)
    if body.method == "grid":
        for name, p in parameters.items():
            if "values" not in p:
                bad(("parameters", name), "a grid needs a list of values for each parameter, not a range", p)
    if errors:
        return None, errors

    if body.method == "grid":
        size = grid_size(parameters)
        if size > MAX_GRID:
            bad(("parameters",), f"a grid of {size} points; at most {MAX_GRID} (a random search samples it)")
        elif body.max_runs is not None and body.max_runs > size:
            bad(("max_runs",), f"the grid has {size} points: at most {size} runs", body.max_runs)
        max_runs = body.max_runs or size
    elif body.max_runs is None:
        bad(("max_runs",), f"required for a {body.method} search: how many runs to try")
        max_runs = 0
    else:
        max_runs = body.max_runs
    limit = settings.max_active_runs
    if body.max_concurrent is not None and body.max_concurrent > limit:
        bad(
            ("max_concurrent",),
            f"at most {limit} on this server (GPTJOBS_MAX_ACTIVE_RUNS): a sweep's runs count toward your active runs",
            body.max_concurrent,
        )
    max_concurrent = body.max_concurrent or min(DEFAULT_CONCURRENT, max(1, max_runs), limit)
    if errors:
        return None, errors

    max_iters = _check_combinations(body.config, parameters, settings, corpus, start, bad)
    if errors:
        return None, errors
    early_stop = body.early_stop.model_dump() if body.early_stop else None
    if early_stop and max_iters is not None and early_stop["min_iter"] >= max_iters:
        bad(
            ("early_stop", "min_iter"),
            f"never reached: the runs train at most {max_iters} iterations, so nothing would be compared",
            early_stop["min_iter"],
        )
        return None, errors
    sweep = Sweep(
        id=secrets.token_hex(8),
        name=body.name,
        owner=owner,
        config=body.config,
        parameters=parameters,
        method=body.method,
        metric=body.metric,
        goal=body.goal,
        max_runs=max_runs,
        max_concurrent=max_concurrent,
        early_stop=early_stop,
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
        created_at=time.time(),
    )
    return sweep, []


def _check_combinations(
    base: dict[str, Any],
    parameters: dict[str, Any],
    settings: Settings,
    corpus: Callable[[str], Corpus],
    start: Callable[[str], Start] | None,
    bad: Callable[..., None],
) -> int | None:
    """check_config on the base config with each combination over it (up to MAX_CHECKED).
    An error that every combination has, in a key no parameter sets, is the base config's
    (`config.<key>`); any other names the values that cause it. Returns the longest run's
    max_iters (None when nothing was valid)."""
    found: dict[str, Corpus] = {}
    starts: dict[str, Start] = {}

    def cached(ref: str) -> Corpus:  # a dataset looked up once, not once per combination
        if ref not in found:
            found[ref] = corpus(ref)
        return found[ref]

    def cached_start(ref: str) -> Start:  # a parent run's checkpoint, likewise
        if start is None:
            raise ValueError("starting from a run's checkpoint needs an owner's lookup")
        if ref not in starts:
            starts[ref] = start(ref)
        return starts[ref]

    failing: list[tuple[dict[str, Any], Errors]] = []
    checked, longest = 0, None
    for combo in itertools.islice(_combinations(parameters), MAX_CHECKED):
        checked += 1
        cfg, errs = check_config({**base, **combo}, settings, cached, cached_start)
        if cfg is None:
            failing.append((combo, errs))
        else:
            longest = max(longest or 0, cfg.max_iters)
    if not failing:
        return longest
    everywhere: dict[tuple[Any, ...], dict[str, Any]] = {}
    if len(failing) == checked:
        keyed = [{(tuple(e["loc"]), e["msg"]): e for e in errs} for _, errs in failing]
        common = set(keyed[0]).intersection(*keyed[1:])
        everywhere = {k: keyed[0][k] for k in common if k[0][2] not in parameters}
    for e in everywhere.values():
        bad(tuple(e["loc"][1:]), e["msg"], e.get("input"))
    named = 0
    for combo, errs in failing:
        for e in errs:
            if (tuple(e["loc"]), e["msg"]) in everywhere:
                continue
            if named == MAX_ERRORS:
                bad(("parameters",), f"and more: {len(failing)} of {checked} combinations are invalid")
                return longest
            bad(("parameters",), f"{_named(combo)}: config.{e['loc'][-1]} {e['msg']}", combo)
            named += 1
    return longest


# --- reading ---------------------------------------------------------------------------------


def load_sweep(db: Database, sweep_id: str, owner: str | None) -> Sweep:
    """The sweep, or the 404 an unknown id gets (another owner's sweep does not exist for
    the caller, as their runs do not)."""
    with db.session() as s:
        sweep = s.get(Sweep, sweep_id)
    if sweep is None or (owner is not None and sweep.owner != owner):
        raise HTTPException(404, f"sweep {sweep_id!r} not found")
    return sweep


def sweep_runs(s: Session, sweep_ids: list[str]) -> dict[str, list[SweepRun]]:
    """Each sweep's runs, by trial, with their glance (best val loss, newest iter)."""
    runs = list(s.execute(select(Run).where(R.sweep_id.in_(sweep_ids)).order_by(R.trial)).scalars())
    seen = glances(s, runs)
    out: dict[str, list[SweepRun]] = {i: [] for i in sweep_ids}
    for r in runs:
        g = seen[r.id]
        out[r.sweep_id or ""].append(
            SweepRun(
                id=r.id,
                trial=r.trial or 0,
                name=r.name,
                status=r.status,
                reason=r.reason,
                params=r.params or {},
                best_val_loss=g.best_val_loss,
                iter=g.iter,
                max_iters=g.max_iters,
            )
        )
    return out


def public(sweep: Sweep, runs: list[SweepRun]) -> SweepPublic:
    scored = [r for r in runs if r.best_val_loss is not None]
    top = min(scored, key=lambda r: r.best_val_loss or 0.0) if scored else None
    best = (
        SweepBest(run=top.id, params=top.params, val_loss=top.best_val_loss or 0.0, status=top.status) if top else None
    )
    return SweepPublic(
        id=sweep.id,
        name=sweep.name,
        status=sweep.status,
        reason=sweep.reason,
        config=sweep.config,
        parameters=sweep.parameters,
        method=sweep.method,
        metric=sweep.metric,
        goal=sweep.goal,
        max_runs=sweep.max_runs,
        max_concurrent=sweep.max_concurrent,
        early_stop=sweep.early_stop,
        seed=sweep.seed,
        runs_by_status=dict(Counter(r.status for r in runs)),
        left=max(0, sweep.max_runs - len(runs)) if sweep.status == RUNNING else 0,
        best=best,
        created_at=iso(sweep.created_at),  # type: ignore[arg-type]
        finished_at=iso(sweep.finished_at),
    )


def detail(db: Database, sweep: Sweep) -> SweepDetail:
    with db.session() as s:
        runs = sweep_runs(s, [sweep.id])[sweep.id]
    return SweepDetail(**public(sweep, runs).model_dump(), runs=runs)

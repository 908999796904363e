"""The sweep controller, in the API process beside the reaper: it starts each live sweep's
runs up to max_concurrent, reports their eval events to Optuna, stops the ones the pruner
cuts, tells Optuna how each run ended, and ends the sweep when its budget is spent.

Exactly one API replica acts at a time: `sweeps:controller` in Redis holds that process's
token, with a TTL of lease_ttl_s that every pass renews. A replica stopped by SIGTERM gives
the lease up; one killed leaves it to lapse, and another (or the same, restarted) takes it.

It keeps nothing in memory that a restart needs. Each pass reads what is: our tables (the
sweep, its runs, their eval events, CURRENT only) and the sweep's Optuna study (api/study.py,
in the same database), and squares them:
- a trial of Optuna's without its run (the process died between asking and adding the run)
  gets its run; the unique (sweep_id, trial) index keeps it to one;
- a run that ended gets its trial told (succeeded: complete, valued by its best val loss;
  pruned: pruned; failed or cancelled: failed, and the sweep goes on);
- a running run's new eval events are reported at their iters, and after each one the
  pruner is asked; a cut is first written to the trial (pruned, the reason as an attribute),
  then the run is stopped (`pruned`, a checkpoint first): if the process dies in between,
  the next pass finds a pruned trial with a live run and stops it again;
- a run added but never sent is sent again by the reaper, as any run.
Then, below max_concurrent (the sweep's runs queued or running) and below the owner's
active-runs limit, it asks Optuna for the next trials (a sampler seeded by the sweep's seed
and the trial's number, so a restart draws as no restart would) and adds their runs.

What the lease cannot rule out: a replica frozen mid-pass for longer than the TTL, while
another took over, may ask for one trial more than the budget when it wakes. Every other
write it could make is a conditional one (a run's move, the sweep's end) or idempotent.
A cancelled sweep's runs are stopped; its study is left as it was (nothing asks it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from celery import Celery
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from api import lifecycle
from api.datasets import Lookup
from api.db import CURRENT, Database, E, R, Run, S, Sweep
from api.lifecycle import (
    ACTIVE,
    CANCELLED,
    FAILED,
    PRUNED,
    QUEUED,
    RUNNING,
    RUNS,
    SUCCEEDED,
    SWEEPS,
    TERMINAL,
)
from api.redis_keys import SWEEP_CONTROLLER
from api.routes.config import check_config
from api.routes.runs import active_runs, new_run, queue_run, stop_run
from api.settings import Settings
from api.weights import ParentLookup, link_parent

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage

log = logging.getLogger(__name__)

_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class ControllerLease:
    """This process's turn to act for every sweep: held while `sweeps:controller` holds its token."""

    def __init__(self, r: aioredis.Redis, ttl_s: float):
        self.r, self.ttl_ms = r, int(ttl_s * 1000)
        self.token = secrets.token_hex(8)
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)

    async def hold(self) -> bool:
        """Renew it if ours, else take it if free: True while this process is the controller."""
        if await self._renew(keys=[SWEEP_CONTROLLER], args=[self.token, self.ttl_ms]):
            return True
        return bool(await self.r.set(SWEEP_CONTROLLER, self.token, nx=True, px=self.ttl_ms))

    async def release(self) -> None:
        await self._release(keys=[SWEEP_CONTROLLER], args=[self.token])


@dataclass
class Pass:
    """What one sweep's pass decided that needs Redis (stopping runs) or the queue."""

    stops: list[tuple[str, str, str]] = field(default_factory=list)  # (run id, to, reason)
    sends: list[Run] = field(default_factory=list)  # added runs, for the training queue


def _live(db: Database) -> list[Sweep]:
    """Running sweeps, and cancelled ones whose runs are still queued or running."""
    with db.session() as s:
        stopping = select(R.sweep_id).where(R.sweep_id.is_not(None), R.status.in_(ACTIVE)).distinct()
        q = select(Sweep).where((S.status == RUNNING) | ((S.status == CANCELLED) & S.id.in_(stopping)))
        return list(s.execute(q.order_by(S.created_at)).scalars())


def _evals(db: Database, run_ids: list[str]) -> dict[str, list[tuple[int, float]]]:
    """Each run's (iter, val loss) in its one timeline, oldest first."""
    out: dict[str, list[tuple[int, float]]] = {i: [] for i in run_ids}
    if not run_ids:
        return out
    with db.session() as s:
        q = select(E.run_id, E.body).where(E.run_id.in_(run_ids), E.type == "eval", CURRENT).order_by(E.seq)
        for run_id, body in s.execute(q):
            ev = json.loads(body)
            if isinstance(ev.get("iter"), int) and isinstance(ev.get("val_loss"), int | float):
                out[run_id].append((ev["iter"], float(ev["val_loss"])))
    return out


def _get_run(db: Database, run_id: str) -> Run | None:
    with db.session() as s:
        return s.get(Run, run_id)


class SweepController:
    def __init__(self, db: Database, r: aioredis.Redis, celery: Celery, settings: Settings):
        self.db, self.r, self.celery, self.settings = db, r, celery, settings
        self.lease = ControllerLease(r, settings.lease_ttl_s)
        self._storage: RDBStorage | None = None
        self._stopping = asyncio.Event()
        self._done = asyncio.Event()

    # --- the loop ----------------------------------------------------------------------
    async def forever(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    if await self.lease.hold():
                        await self.once()
                except RedisError as e:  # no lease to hold, no run to stop: wait for Redis
                    log.warning("sweeps: Redis unavailable (%s)", e)
                except Exception:
                    log.exception("sweeps: pass failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.settings.sweep_interval_s)
        finally:
            self._done.set()

    async def stop(self, timeout: float = 10.0) -> None:
        """At shutdown: finish the pass in hand, then give the lease up for the next process."""
        self._stopping.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout)
        with contextlib.suppress(RedisError):
            await self.lease.release()

    async def once(self) -> None:
        for sweep in await run_in_threadpool(_live, self.db):
            if not await self.lease.hold():  # renewed between sweeps: a pass may be long
                return
            plan = await run_in_threadpool(self.decide, sweep)
            for run_id, to, reason in plan.stops:
                await self._stop(run_id, to, reason)
            for run in plan.sends:
                if (e := await run_in_threadpool(queue_run, self.db, self.celery, run)) is not None:
                    log.warning("sweep %s: could not queue run %s: %s", sweep.id, run.id, e)

    async def _stop(self, run_id: str, to: str, reason: str) -> None:
        run = await run_in_threadpool(_get_run, self.db, run_id)
        if run is None or run.status in TERMINAL:
            return
        run, ended = await stop_run(self.db, self.r, self.settings, run, to, reason)
        log.info("run %s: %s (%s)", run_id, to if ended else f"asked to end {to}", reason)

    # --- one sweep's pass (blocking: Optuna and the database) -------------------------
    def storage(self) -> RDBStorage:
        if self._storage is None:
            from api import study  # Optuna: imported by the first pass, not at the API's start

            self._storage = study.storage(self.db.url)
        return self._storage

    def decide(self, sweep: Sweep) -> Pass:
        from optuna.trial import Trial, TrialState

        from api import study as st

        plan = Pass()
        study = st.load(self.storage(), sweep)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        with self.db.session() as s:
            runs = {r.trial: r for r in s.execute(select(Run).where(R.sweep_id == sweep.id)).scalars()}
        evals = _evals(self.db, [r.id for r in runs.values()])
        live = sweep.status == RUNNING
        orphans = []
        for number, t in trials.items():
            run = runs.get(number)
            if run is None:
                if t.state == TrialState.RUNNING and live:
                    orphans.append(t)
                continue
            if not live:  # cancelled: its runs stop; its study is left as it was
                if run.status in ACTIVE:
                    plan.stops.append((run.id, CANCELLED, "its sweep was cancelled"))
            elif t.state == TrialState.RUNNING and run.status in TERMINAL:
                self._report(sweep, study, t, evals[run.id], prune=False)
                self._tell(study, number, run, evals[run.id])
            elif t.state == TrialState.RUNNING:
                cut = self._report(sweep, study, t, evals[run.id], prune=bool(sweep.early_stop))
                if cut is not None:
                    # The decision first, where a restart finds it; then the stop.
                    Trial(study, t._trial_id).set_user_attr("pruned", cut)
                    study.tell(number, state=TrialState.PRUNED)
                    plan.stops.append((run.id, PRUNED, cut))
            elif t.state == TrialState.PRUNED and run.status in ACTIVE:
                plan.stops.append((run.id, PRUNED, str(t.user_attrs.get("pruned", "pruned by its sweep"))))
        if live:
            self._start(sweep, study, trials, runs, orphans, plan)
        return plan

    def _report(
        self,
        sweep: Sweep,
        study: optuna.Study,
        t: optuna.trial.FrozenTrial,
        evals: list[tuple[int, float]],
        *,
        prune: bool,
    ) -> str | None:
        """Report the evals Optuna has not had yet, at their iters; with prune, ask the pruner
        after each one and return the reason of a cut (None: the run goes on)."""
        from optuna.trial import Trial

        from api import study as st

        trial = None
        for it, val in evals:
            if it in t.intermediate_values:
                continue
            trial = trial or Trial(study, t._trial_id)
            trial.report(val, it)
            if not (prune and trial.should_prune()):
                continue
            factor = (sweep.early_stop or {}).get("reduction_factor", 3)
            why = st.promotion_cut(study, t._trial_id, factor)
            if why is None:
                return f"pruned at iter {it}: val loss {val:.4f}"
            rung, value, cut, n = why
            return (
                f"pruned at iter {it}: val loss {value:.4f}, rung keeps runs at or below {cut:.4f} "
                f"(the best {max(1, n // factor)} of the {n} runs at rung {rung})"
            )
        return None

    def _tell(self, study: optuna.Study, number: int, run: Run, evals: list[tuple[int, float]]) -> None:
        from optuna.trial import TrialState

        best = min((v for _, v in evals), default=None)
        if run.status == SUCCEEDED and best is not None:
            study.tell(number, best)
        elif run.status == PRUNED:
            study.tell(number, state=TrialState.PRUNED)
        else:  # failed, cancelled: a failed trial, and the sweep goes on
            study.tell(number, state=TrialState.FAIL)

    def _start(
        self,
        sweep: Sweep,
        study: optuna.Study,
        trials: dict[int, Any],
        runs: dict[int | None, Run],
        orphans: list[optuna.trial.FrozenTrial],
        plan: Pass,
    ) -> None:
        """Add the runs of trials that lack one, ask for new trials while there is room, and
        end the sweep once every run it may have has ended."""
        from api import study as st

        active = sum(r.status in ACTIVE for r in runs.values())
        if len(trials) >= sweep.max_runs and not active and not orphans:
            self._finish(sweep)
            return
        room = sweep.max_concurrent - active
        with self.db.session() as s:
            quota = self.settings.max_active_runs - active_runs(s, sweep.owner)
        for t in orphans:  # asked before a restart: within the budget and the room already
            if quota <= 0:
                return
            if self._add(sweep, t.number, t.params, plan):
                quota -= 1
            room -= 1
        space = st.distributions(sweep.parameters)
        while room > 0 and quota > 0 and len(trials) < sweep.max_runs:
            new = st.load(self.storage(), sweep, st.sampler(sweep, len(trials))).ask(space)
            trials[new.number] = new
            if self._add(sweep, new.number, new.params, plan):
                quota -= 1
            room -= 1

    def _add(self, sweep: Sweep, number: int, params: dict[str, Any], plan: Pass) -> bool:
        """Add trial `number`'s run (queued, sent after the pass; or failed at once when its
        point makes an invalid config). False if it is there already or over the quota."""
        lookup, parents = Lookup(self.db, sweep.owner), ParentLookup(self.db, self.settings, sweep.owner)
        config = {**sweep.config, **params}
        cfg, errors = check_config(config, self.settings, lookup, parents)
        fields: dict[str, Any] = {"name": f"{sweep.name or 'sweep ' + sweep.id} #{number}"}
        fields |= {"sweep_id": sweep.id, "trial": number, "params": params}
        if cfg is not None:
            run = new_run(cfg, lookup.found, sweep.owner, parent=parents.found, **fields)
        else:
            run = Run(id=secrets.token_hex(8), config=config, owner=sweep.owner, created_at=time.time(), **fields)
        try:
            with self.db.transaction() as s:
                if s.execute(select(S.status).where(S.id == sweep.id)).scalar() != RUNNING:
                    return False  # cancelled meanwhile
                if active_runs(s, sweep.owner) >= self.settings.max_active_runs:
                    return False  # taken meanwhile by the owner's other runs: the next pass adds it
                s.add(run)
                s.flush()
                if cfg is None:
                    reason = "its parameters make an invalid config: " + "; ".join(
                        f"{e['loc'][-1]}: {e['msg']}" for e in errors
                    )
                    RUNS.move(s, run.id, FAILED, frm=[QUEUED], reason=reason)
                    lifecycle.status_event(s, run.id, 0, FAILED, reason)
        except IntegrityError:
            return False  # another pass (a replica that held the lease before) added it
        if cfg is not None:
            if parents.found is not None:  # before any worker can start it
                link_parent(self.settings, parents.found, run.id)
            plan.sends.append(run)
        log.info("sweep %s: run %s is trial %d %s", sweep.id, run.id, number, params)
        return True

    def _finish(self, sweep: Sweep) -> None:
        """The end, once every run it may have has ended: succeeded if one of them did."""
        with self.db.session() as s:
            ended = list(s.execute(select(R.id, R.status).where(R.sweep_id == sweep.id)).all())
        if any(status not in TERMINAL for _, status in ended):
            return
        counts = Counter(status for _, status in ended)
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        scored = sorted((min(v for _, v in ev), i) for i, ev in _evals(self.db, [i for i, _ in ended]).items() if ev)
        if counts[SUCCEEDED]:
            to, reason = SUCCEEDED, f"{len(ended)} runs ({summary})"
            if scored:
                reason += f"; the lowest val loss {scored[0][0]:.4f}, run {scored[0][1]}"
        else:
            to, reason = FAILED, f"no run finished: {summary}"
        with self.db.transaction() as s:
            if SWEEPS.move(s, sweep.id, to, reason=reason):
                log.info("sweep %s %s: %s", sweep.id, to, reason)

"""Each sweep's Optuna study, kept in our own database: the trials, the val losses reported
at each eval, the pruner's rungs. The search and the early stopping are Optuna's (its
samplers, its grid sampler, its successive-halving pruner); what this module knows is how
a sweep's settings become those, and how Optuna's storage lives beside our schema.

Optuna's RDBStorage (SQLAlchemy) would create its tables itself and version them with its
own Alembic revisions, in a table named `alembic_version`: the table our migrations version
our schema with. One table, two histories: Optuna refuses a storage whose revision is not
one of its own, and our `alembic upgrade` cannot place a revision of Optuna's. So the
tables are ours to make and change: migration 0007 creates them as Optuna 5.0 defines them
(its schema version 12), with the `version_info` row it looks for, and the storage is opened
with skip_table_creation (no create_all) and skip_compatibility_check (the check that
compares `alembic_version` with Optuna's revisions). Its version manager then only reads:
it finds a revision in `alembic_version`, so it stamps none. tests/unit/test_migrations.py
compares the migrated tables with Optuna's models, and `check_schema` refuses to open the
storage with an Optuna whose schema version is not the one migrated: an upgrade of Optuna
that changes its tables needs a migration of ours first.

Torch-free. Imported by the sweep controller (api/sweeper.py) and the migrations, not by
the routes: reading a sweep needs only our own tables.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.pruners import BasePruner, NopPruner, SuccessiveHalvingPruner
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.storages import RDBStorage
from optuna.storages._rdb import models  # the tables: no public name for them
from sqlalchemy import MetaData

from api.db import Sweep, sqlite_rules

SCHEMA_VERSION = 12  # Optuna's models.SCHEMA_VERSION that migration 0007 created
TPE_STARTUP_MAX = 10  # Optuna's default n_startup_trials: random trials before TPE models the space

optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial otherwise, in the API's log
logging.getLogger("alembic").setLevel(logging.WARNING)  # Optuna's version manager sets up Alembic


def metadata() -> MetaData:
    """Optuna's tables, as its installed models define them: what migration 0007 must match."""
    return models.BaseModel.metadata


def check_schema() -> None:
    if models.SCHEMA_VERSION != SCHEMA_VERSION:
        raise RuntimeError(
            f"Optuna {optuna.__version__} has storage schema {models.SCHEMA_VERSION}; the migrations made "
            f"{SCHEMA_VERSION}: sweeps are off until a migration brings its tables to Optuna's"
        )


def storage(url: str) -> RDBStorage:
    """Optuna's storage on our database, with our SQLite rules (busy timeout, BEGIN IMMEDIATE:
    Optuna reads, then writes, in one transaction, which a deferred SQLite transaction
    cannot do once another process has written in between)."""
    check_schema()
    sqlite = url.startswith("sqlite")
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}} if sqlite else {}
    if not sqlite:
        kwargs["pool_pre_ping"] = True
    st = RDBStorage(url, engine_kwargs=kwargs, skip_compatibility_check=True, skip_table_creation=True)
    if sqlite:
        sqlite_rules(st.engine, writer=True)
        st.engine.dispose()  # the version manager's connections predate the rules
    return st


def study_name(sweep_id: str) -> str:
    return f"sweep-{sweep_id}"


def distributions(parameters: dict[str, Any]) -> dict[str, BaseDistribution]:
    """A sweep's normalised parameters (api/sweeps.py) as Optuna's distributions."""
    out: dict[str, BaseDistribution] = {}
    for name, p in parameters.items():
        if "values" in p:
            out[name] = CategoricalDistribution(p["values"])
        elif p["type"] == "int":
            out[name] = IntDistribution(p["min"], p["max"], log=p["log"])
        else:
            out[name] = FloatDistribution(p["min"], p["max"], log=p["log"])
    return out


def sampler(sweep: Sweep, n: int) -> BaseSampler:
    """The sampler that picks trial `n`. Samplers keep their random state in memory, so one is
    made afresh for each trial, seeded by the sweep's seed and n: after a restart it draws as
    it would have without one. The grid sampler shuffles the grid by its seed and gives trial
    n the n-th point: its seed is the sweep's own, the same for every trial."""
    if sweep.method == "grid":
        return GridSampler({k: p["values"] for k, p in sweep.parameters.items()}, seed=sweep.seed)
    seed = (sweep.seed + n) % 2**32
    if sweep.method == "tpe":
        # constant_liar: runs in flight count as bad results, so concurrent trials spread out.
        startup = min(TPE_STARTUP_MAX, max(1, sweep.max_runs // 4))
        return TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)
    return RandomSampler(seed=seed)


def pruner(sweep: Sweep) -> BasePruner:
    """ASHA as Optuna has it: rung k at min_iter * reduction_factor**k iterations; a run
    goes on past a rung only if its val loss there is in the best 1/reduction_factor of the
    runs that reached it (the first runs to get there: the best of them)."""
    es = sweep.early_stop
    if not es:
        return NopPruner()
    return SuccessiveHalvingPruner(min_resource=es["min_iter"], reduction_factor=es["reduction_factor"])


def load(st: RDBStorage, sweep: Sweep, sampler_: BaseSampler | None = None) -> optuna.Study:
    """The sweep's study, made on first use. Without a sampler, a RandomSampler: telling a
    trial calls the sampler's after_trial, and the grid sampler's, on the last point, stops
    an optimize loop we do not run (raising outside one)."""
    return optuna.create_study(
        storage=st,
        study_name=study_name(sweep.id),
        direction="minimize",
        sampler=sampler_ or RandomSampler(),
        pruner=pruner(sweep),
        load_if_exists=True,
    )


def promotion_cut(study: optuna.Study, trial_id: int, reduction_factor: int) -> tuple[int, float, float, int] | None:
    """Why the pruner stopped a trial: (rung, its value there, the cut, runs at the rung),
    from the rung values the successive-halving pruner records on each trial
    (`completed_rung_<k>`). The cut is its rule: of the n values at a rung, sorted, the one at
    n // reduction_factor - 1 (at least the first) is the worst still promoted."""
    trials = study.get_trials(deepcopy=False)
    mine = next((t for t in trials if t._trial_id == trial_id), None)
    if mine is None:
        return None
    rungs = [int(k.rsplit("_", 1)[1]) for k in mine.system_attrs if k.startswith("completed_rung_")]
    if not rungs:
        return None
    rung = max(rungs)
    key = f"completed_rung_{rung}"
    values = sorted(t.system_attrs[key] for t in trials if key in t.system_attrs)
    cut = values[max(0, len(values) // reduction_factor - 1)]
    return rung, mine.system_attrs[key], cut, len(values)

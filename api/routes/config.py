"""/config: what a run can be configured with, and a check of a config without creating one.

GET /config/defaults tells a form what a run can be configured with: every TrainConfig
field with its type and nanoGPT's default, the built-in datasets' recipes (which replace
some of those defaults), and this server's limits. Torch-free, and nothing in it is secret,
so it needs no key. `check_config` is every check POST /runs makes of a config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field, ValidationError

from api.auth import open_mode
from api.datasets import Lookup
from api.deps import DbDep, MaybeCaller, SettingsDep
from api.schemas import RunCreate
from api.settings import Settings
from api.weights import ParentLookup, pretrained_unavailable
from gpt import config as train_config
from gpt.config import PRETRAINED, ConfigError, Corpus, Start, TrainConfig, make_config

router = APIRouter(prefix="/config", tags=["config"])

# Fields a new run cannot set, and why: the form leaves them out.
SERVER_SET = {
    "out_dir": "chosen by the server: runs/<id> under its data directory",
}
# Where gpt/config.py's help says something that is not so through the API.
HELP = {
    "dataset": "a built-in dataset; choosing one applies its recipe (a text file's path works on the command line only)",
}
CHOICES: dict[str, tuple[str, ...]] = {
    "device": train_config.DEVICES,  # or cuda:N
    "dtype": train_config.DTYPES,
    "init_from": train_config.INIT_FROM,
    "tokenizer": train_config.TOKENIZERS,
    "dataset": tuple(train_config.BUILTIN_DATASETS),
}


class ConfigField(BaseModel):
    name: str
    type: str = Field(description='"int", "float", "bool", "str" or "list[str]"; " | None" when null is allowed')
    default: Any = Field(description="nanoGPT's train.py default (a dataset's recipe may replace it)")
    group: str = Field(description="the section of nanoGPT's train.py the key is in")
    help: str | None = None
    choices: list[str] | None = Field(default=None, description="the values accepted, where there is a fixed set")
    server_set: str | None = Field(default=None, description="set by the server, not by the request: why")


class DatasetInfo(BaseModel):
    tokenizer: str
    recipe: dict[str, Any] = Field(description="defaults this dataset replaces (nanoGPT's config file for it)")


class ServerLimits(BaseModel):
    max_iters: int = Field(description="GPTJOBS_MAX_ITERS: the largest max_iters a run may have")
    max_params: int | None = Field(description="GPTJOBS_MAX_PARAMS: the largest model, in parameters")


class ConfigDefaults(BaseModel):
    fields: list[ConfigField] = Field(description="every training key, in train.py's order")
    datasets: dict[str, DatasetInfo]
    limits: ServerLimits
    auth_required: bool = Field(description="the data needs an API key (Authorization: Bearer)")


class Validation(BaseModel):
    ok: bool
    errors: list[dict[str, Any]] = Field(description="as a 422 from POST /runs would list them: loc, msg")
    config: dict[str, Any] | None = Field(description="the config filled in as the run would get it")


def _fields() -> list[ConfigField]:
    out = []
    for f in train_config.describe():
        choices = CHOICES.get(f["name"])
        out.append(
            ConfigField(
                name=f["name"],
                type=f["type"],
                default=f["default"],
                group=f["group"],
                help=HELP.get(f["name"], f["help"]),
                choices=list(choices) if choices else None,
                server_set=SERVER_SET.get(f["name"]),
            )
        )
    return out


@router.get("/defaults", response_model=ConfigDefaults)
def config_defaults(db: DbDep, settings: SettingsDep) -> ConfigDefaults:
    """What a run's `config` may hold: each key's type and nanoGPT's default, the built-in
    datasets' recipes (applied over those defaults when the dataset is chosen), and this
    server's limits. Keys left out of POST /runs take the recipe's value, then the default."""
    datasets = {
        name: DatasetInfo(tokenizer=d["tokenizer"], recipe=d["recipe"])
        for name, d in train_config.BUILTIN_DATASETS.items()
    }
    limits = ServerLimits(max_iters=settings.max_iters, max_params=settings.max_params)
    auth_required = not open_mode(db)
    return ConfigDefaults(fields=_fields(), datasets=datasets, limits=limits, auth_required=auth_required)


@router.post("/validate", response_model=Validation)
def validate(body: dict[str, Any], db: DbDep, settings: SettingsDep, caller: MaybeCaller) -> Validation:
    """Check a POST /runs body without creating a run: always 200, with the errors by field
    that POST /runs would answer with a 422, or the config the run would get. For forms
    (the dashboard checks before it submits), and for scripts that want to know first."""
    try:
        run = RunCreate.model_validate(body)
    except ValidationError as e:
        errors = [{"type": err["type"], "loc": ["body", *err["loc"]], "msg": err["msg"]} for err in e.errors()]
        return Validation(ok=False, errors=errors, config=None)
    # Your own datasets are known only with your key (the check needs none for the rest).
    corpus = Lookup(db, caller.owner) if caller else None
    parents = ParentLookup(db, settings, caller.owner) if caller else None
    cfg, errors = check_config(run.config, settings, corpus, parents)
    if cfg is None:  # without the inputs: they may be what JSON cannot hold (inf)
        return Validation(ok=False, errors=[{k: v for k, v in e.items() if k != "input"} for e in errors], config=None)
    return Validation(ok=True, errors=[], config=cfg.to_dict())


def check_config(
    config: dict[str, Any],
    settings: Settings,
    corpus: Callable[[str], Corpus] | None = None,
    start: Callable[[str], Start] | None = None,
) -> tuple[TrainConfig | None, list[dict[str, Any]]]:
    """The config filled in, or the errors by field (FastAPI's 422 items): every check
    POST /runs makes of a config, for it and for POST /config/validate. `corpus` finds the
    caller's own datasets (api.datasets.Lookup), `start` their runs' checkpoints
    (api.weights.ParentLookup)."""
    try:
        cfg = make_config(config, max_params=settings.max_params, allow_paths=False, corpus=corpus, start=start)
    except ConfigError as e:
        loc = ("body", "config")
        return None, [
            {"type": "value_error", "loc": (*loc, k), "msg": v, "input": config.get(k)} for k, v in e.errors.items()
        ]
    if cfg.init_from in PRETRAINED and (why := pretrained_unavailable(cfg.init_from)):
        return None, [
            {"type": "value_error", "loc": ("body", "config", "init_from"), "msg": why, "input": cfg.init_from}
        ]
    if cfg.max_iters > settings.max_iters:
        msg = f"at most {settings.max_iters} on this server (GPTJOBS_MAX_ITERS)"
        return None, [
            {"type": "value_error", "loc": ("body", "config", "max_iters"), "msg": msg, "input": cfg.max_iters}
        ]
    return cfg, []

"""Training configuration: nanoGPT's train.py keys and defaults, validated.

This module imports nothing heavy (no torch), because the API validates configs with it
and must start fast without a GPU stack. Device-dependent defaults ("auto") are resolved
later, by gpt.train, on the machine that actually trains.

Resolution order, like nanoGPT's `python train.py config/<recipe>.py --key=value`:
train.py defaults  <-  the dataset's recipe (built-in datasets only)  <-  the user's keys.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("nccl", "gloo")  # torch.distributed's: NVIDIA's collectives on CUDA, gloo's on CPU
MAX_NPROC_PER_NODE = 64  # beyond any machine's device count
MAX_NNODES = 1024
TOKENIZERS = ("char", "gpt2")
# Where a run's weights come from: random, its own out_dir's checkpoint, or a pretrained
# GPT-2 (Hugging Face's weights, nanoGPT's names for them: n_layer, n_head, n_embd). The API
# also takes run:<id>[@best|latest|<iter>] (another run's checkpoint), the command line a
# checkpoint file's path.
PRETRAINED: dict[str, tuple[int, int, int]] = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}
INIT_FROM = ("scratch", "resume", *PRETRAINED)
ARCH = ("n_layer", "n_head", "n_embd", "block_size", "bias")  # what weights fix, whatever a config says
# TrainConfig's sections, as in nanoGPT's train.py, and ours.
GROUPS = ("I/O", "data", "model", "AdamW", "learning rate schedule", "system", "ours")

# A built-in dataset is a text source plus its tokenizer, and carries the recipe nanoGPT
# ships for it (config/train_shakespeare_char.py), so that `--dataset=shakespeare_char`
# behaves like nanoGPT's README command without naming the config file.
_SHAKESPEARE_RECIPE: dict[str, Any] = {
    "out_dir": "out-shakespeare-char",
    "eval_interval": 250,  # small data overfits fast: look often
    "eval_iters": 200,
    "log_interval": 10,
    "always_save_checkpoint": False,  # only write when val improves
    "gradient_accumulation_steps": 1,
    "batch_size": 64,
    "block_size": 256,  # context of up to 256 previous characters
    "n_layer": 6,
    "n_head": 6,
    "n_embd": 384,
    "dropout": 0.2,
    "learning_rate": 1e-3,  # a baby network can take a big learning rate
    "max_iters": 5000,
    "lr_decay_iters": 5000,  # usually equal to max_iters
    "min_lr": 1e-4,  # learning_rate / 10
    "beta2": 0.99,  # bigger because there are few tokens per iteration
    "warmup_iters": 100,
}
# nanoGPT's config/finetune_shakespeare.py: a pretrained GPT-2 fine-tuned on Shakespeare.
_FINETUNE_SHAKESPEARE: dict[str, Any] = {
    "out_dir": "out-shakespeare",
    "eval_interval": 5,
    "eval_iters": 40,
    "always_save_checkpoint": False,  # only when val improves: fine-tuning overfits within tens of steps
    "batch_size": 1,
    "gradient_accumulation_steps": 32,
    "max_iters": 20,
    "learning_rate": 3e-5,  # small, and constant: nudge the pretrained weights, do not retrain them
    "decay_lr": False,
}
BUILTIN_DATASETS: dict[str, dict[str, Any]] = {
    "shakespeare_char": {"source": "tinyshakespeare", "tokenizer": "char", "recipe": _SHAKESPEARE_RECIPE},
    "shakespeare": {
        "source": "tinyshakespeare",
        "tokenizer": "gpt2",
        "recipe": {**_SHAKESPEARE_RECIPE, "out_dir": "out-shakespeare", "learning_rate": 6e-4, "min_lr": 6e-5},
        "finetune": _FINETUNE_SHAKESPEARE,  # instead of the recipe, when init_from is a pretrained GPT-2
    },
}

GPT2_VOCAB_SIZE = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
CHAR_VOCAB_LIMIT = 65535  # token ids are stored as uint16


class ConfigError(ValueError):
    """Bad configuration. `errors` maps each offending field to the reason."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


def _section(group: str) -> Callable[[Any, str], Any]:
    """The maker of TrainConfig's fields in one of its sections: key(default, help)."""

    def key(default: Any, help: str) -> Any:
        meta = {"group": group, "help": help}
        if isinstance(default, list):  # each config its own copy
            return field(default_factory=lambda: list(default), metadata=meta)
        return field(default=default, metadata=meta)

    return key


_io, _data, _model, _adamw, _schedule, _system, _ours = map(_section, GROUPS)


@dataclass
class TrainConfig:
    """nanoGPT's train.py keys, defaults and sections, in its order, then ours; describe()
    lists them with the section and help each field carries in its metadata."""

    out_dir: str = _io("out", "directory for ckpt.pt and best.pt")
    eval_interval: int = _io(2000, "evaluate every this many iterations, and at the end")
    log_interval: int = _io(1, "report the loss every this many iterations")
    eval_iters: int = _io(200, "batches of each split averaged per evaluation")
    eval_only: bool = _io(False, "evaluate once, then stop")
    always_save_checkpoint: bool = _io(True, "else only when val loss improves")
    init_from: str = _io(
        "scratch",
        "'scratch', 'resume' (from out_dir/ckpt.pt), a pretrained 'gpt2', 'gpt2-medium', 'gpt2-large' or "
        "'gpt2-xl', or through the API another run of yours: 'run:<id>' (its latest), 'run:<id>@best', '@<iter>'",
    )

    dataset: str = _data(
        "shakespeare_char",
        "built-in name; through the API a dataset of yours (its id or name); on the command line a path: "
        "a UTF-8 text file, or a prepared directory (train.bin, val.bin, and meta.pkl for characters)",
    )
    gradient_accumulation_steps: int = _data(
        40, "nanoGPT's 5 * 8: micro-steps per iteration over all ranks, divided among them (world size must divide it)"
    )
    batch_size: int = _data(12, "micro-batch size when gradient_accumulation_steps > 1")
    block_size: int = _data(1024, "context length, in tokens")

    n_layer: int = _model(12, "transformer blocks")
    n_head: int = _model(12, "attention heads per block")
    n_embd: int = _model(768, "embedding width; a multiple of n_head")
    dropout: float = _model(0.0, "0 for pretraining, 0.1+ for finetuning")
    bias: bool = _model(False, "True: bias in Linears and LayerNorms, like GPT-2; False: a bit better and faster")

    learning_rate: float = _adamw(6e-4, "max learning rate, reached after the warmup")
    max_iters: int = _adamw(600000, "total number of training iterations")
    weight_decay: float = _adamw(1e-1, "AdamW's weight decay, of matrices and embeddings only")
    beta1: float = _adamw(0.9, "AdamW's first-moment decay")
    beta2: float = _adamw(0.95, "AdamW's second-moment decay")
    grad_clip: float = _adamw(1.0, "clip gradients at this norm; 0 disables")

    decay_lr: bool = _schedule(True, "after the warmup, a cosine decay to min_lr; else learning_rate throughout")
    warmup_iters: int = _schedule(2000, "iterations of linear warmup to learning_rate")
    lr_decay_iters: int = _schedule(600000, "~= max_iters per Chinchilla")
    min_lr: float = _schedule(6e-5, "~= learning_rate / 10 per Chinchilla")

    device: str = _system("auto", "cuda > mps > cpu")
    dtype: str = _system("auto", "bfloat16 where supported, else float16 on CUDA; float32 elsewhere")
    compile: bool | None = _system(None, "None: on for CUDA, off elsewhere")
    backend: str | None = _system(None, "torch.distributed's: 'nccl' or 'gloo'; None: nccl on CUDA, gloo on CPU")
    nproc_per_node: int = _system(1, "processes per machine, one device each (torchrun's --nproc_per_node)")
    nnodes: int = _system(1, "machines the run spans (torchrun's --nnodes)")

    seed: int = _ours(1337, "seeds the weights' init, the batches and dropout")
    peak_flops: float | None = _ours(None, "overrides the device table for MFU")
    tokenizer: str | None = _ours(None, "'char' or 'gpt2'; None: the dataset's own")
    sample_prompts: list[str] = _ours([], "sampled at each eval, if any")  # noqa: RUF009 (key() copies it per config)
    sample_tokens: int = _ours(200, "tokens generated per sample prompt")

    # --- derived ---------------------------------------------------------------------
    def resolved_tokenizer(self) -> str:
        if self.tokenizer:
            return self.tokenizer
        return BUILTIN_DATASETS.get(self.dataset, {}).get("tokenizer", "char")

    def tokens_per_iter(self) -> int:
        """Every rank's: gradient_accumulation_steps counts the micro-steps of all of them."""
        return self.gradient_accumulation_steps * self.batch_size * self.block_size

    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(TrainConfig)}


class FieldInfo(TypedDict):
    name: str
    type: str  # "int", "float", "bool", "str" or "list[str]"; " | None" when None is allowed
    default: Any
    group: str  # one of GROUPS
    help: str


def describe() -> list[FieldInfo]:
    """Every TrainConfig key in train.py's order, with its type, default, section and help.

    For forms and help screens (the API's GET /config/defaults); plain JSON values only.
    """
    defaults = TrainConfig().to_dict()
    return [
        FieldInfo(
            name=name, type=str(f.type), default=defaults[name], group=f.metadata["group"], help=f.metadata["help"]
        )
        for name, f in FIELDS.items()
    ]


_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _coerce(name: str, value: Any) -> Any:
    """Turn a JSON or command-line value into the field's type, or raise ValueError."""
    kind = str(FIELDS[name].type)
    optional = kind.endswith(" | None")
    base = kind.removesuffix(" | None")
    if isinstance(value, str) and base != "str":
        value = value.strip()
        if optional and value.lower() in ("none", "null"):
            return None
    elif isinstance(value, str) and optional and value.strip().lower() in ("none", "null"):
        return None  # `--backend=None` on the command line, as to_dict() writes the default out
    if value is None:
        if optional:
            return None
        raise ValueError("must not be null")
    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOLS:
            return _BOOLS[value.lower()]
        raise ValueError("must be true or false")
    if base == "int":
        if isinstance(value, bool):
            raise ValueError("must be an integer")
        if not isinstance(value, int):
            try:
                f = float(value)  # accepts 2000.0 and "2e3"
            except (TypeError, ValueError, OverflowError):
                raise ValueError("must be an integer") from None
            if not f.is_integer():  # also inf and nan
                raise ValueError("must be an integer")
            value = int(f)
        # JSON has no size limit on integers; a database column, torch and numpy do.
        if abs(value) >= 2**62:
            raise ValueError("must be an integer of magnitude below 2**62")
        return value
    if base == "float":
        if isinstance(value, bool):
            raise ValueError("must be a number")
        try:
            f = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError("must be a number") from None
        if not math.isfinite(f):
            raise ValueError("must be a finite number")
        return f
    if base == "str":
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return _text(value)
    if base == "list[str]":
        if isinstance(value, str):
            return [_text(value)]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [_text(v) for v in value]
        raise ValueError("must be a list of strings")
    raise AssertionError(f"no coercion for {name}: {kind}")


def _text(s: str) -> str:
    # JSON's "\ud800" parses to a lone surrogate, which no UTF-8 file, log or reply can hold.
    try:
        s.encode()
    except UnicodeEncodeError as e:
        raise ValueError(f"must be valid Unicode text (a lone surrogate at position {e.start})") from None
    return s


def n_params(cfg: TrainConfig, vocab_size: int | None = None) -> int:
    """Parameter count of the model this config builds (wte tied with lm_head)."""
    v = vocab_size or (GPT2_VOCAB_SIZE if cfg.resolved_tokenizer() == "gpt2" else 65)
    d, b = cfg.n_embd, int(cfg.bias)
    norms = 2 * d * (1 + b)
    attention = 4 * d * d + 4 * d * b  # qkv (3 d x d) and output projection
    mlp = 8 * d * d + 5 * d * b  # up to 4d and back down
    per_layer = norms + attention + mlp
    return v * d + cfg.block_size * d + cfg.n_layer * per_layer + d * (1 + b)


@dataclass(frozen=True)
class Corpus:
    """What a config needs to know of a prepared dataset that is not built in."""

    tokenizer: str
    vocab_size: int
    train_tokens: int
    val_tokens: int
    chars: str | None = None  # a character vocabulary's, in id order


@dataclass(frozen=True)
class Start:
    """What a config needs to know of the weights a run starts from (init_from)."""

    model_args: dict[str, Any]  # nanoGPT's: n_layer, n_head, n_embd, block_size, bias, vocab_size
    tokenizer: dict[str, Any]  # {"kind": "gpt2"}, or {"kind": "char", "chars": ...}
    what: str  # for messages: "gpt2", "run 3f0c... at iter 500"


def pretrained_start(name: str) -> Start:
    n_layer, n_head, n_embd = PRETRAINED[name]
    args = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "block_size": 1024, "bias": True}
    return Start({**args, "vocab_size": 50257}, {"kind": "gpt2"}, name)


@functools.cache
def builtin_chars(dataset: str) -> str:
    """A built-in character-level dataset's vocabulary, as its preparation makes it."""
    text = Path(__file__).parent / "assets" / f"{BUILTIN_DATASETS[dataset]['source']}.txt"  # as gpt.tokenizers.ASSETS
    return "".join(sorted(set(text.read_text())))


def make_config(
    overrides: dict[str, Any] | None = None,
    *,
    max_params: int | None = None,
    allow_paths: bool = True,
    corpus: Callable[[str], Corpus] | None = None,
    start: Callable[[str], Start] | None = None,
) -> TrainConfig:
    """Build a validated TrainConfig from user keys (JSON values or command-line strings).

    Raises ConfigError naming every bad field and why. `max_params` is a limit on the
    model's size set by whoever runs the service; `allow_paths` lets `dataset` name a
    local file or prepared directory (the command line does; a remote API should not);
    `corpus` looks up any other dataset name (the API: the caller's own datasets), raising
    ValueError with the reason when it cannot be trained on; `start` looks up a run:<id>
    init_from likewise (the API: the caller's own runs).
    """
    overrides = dict(overrides or {})
    errors: dict[str, str] = {}
    for key in overrides:
        if key not in FIELDS:
            errors[key] = "unknown key (not a training option)"
    values: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key in FIELDS:
            try:
                values[key] = _coerce(key, raw)
            except ValueError as e:
                errors[key] = f"{e} (got {raw!r})"

    init, begin = values.get("init_from", TrainConfig.init_from), None
    if "init_from" not in errors:
        begin = _start(init, allow_paths, start, errors)
    dataset = values.get("dataset", TrainConfig.dataset)
    found: Corpus | None = None
    if "dataset" not in errors:
        if dataset in BUILTIN_DATASETS:
            builtin = BUILTIN_DATASETS[dataset]
            finetuning = init in PRETRAINED and "finetune" in builtin
            values = {**builtin["finetune" if finetuning else "recipe"], **values}
        elif allow_paths and os.path.exists(dataset):
            pass
        elif corpus is not None:
            try:
                found = corpus(dataset)
            except ValueError as e:
                errors["dataset"] = str(e)
        else:
            known = ", ".join(BUILTIN_DATASETS)
            errors["dataset"] = f"unknown dataset {dataset!r}; choose one of: {known}" + (
                ", or a path to a UTF-8 text file or a prepared directory" if allow_paths else ""
            )
    if found is not None:
        if values.get("tokenizer") not in (None, found.tokenizer):
            errors["tokenizer"] = f"the dataset is tokenized with {found.tokenizer}; leave tokenizer out"
        values["tokenizer"] = found.tokenizer
    vocab = found.vocab_size if found else None
    if begin is not None and "dataset" not in errors:
        vocab = begin.model_args["vocab_size"]
        _take_architecture(begin, overrides, values, errors)
        _same_tokenizer(begin, dataset, found, values, errors)
    cfg = TrainConfig(**{k: v for k, v in values.items() if k not in errors})
    errors.update({k: v for k, v in check(cfg, max_params=max_params, vocab_size=vocab).items() if k not in errors})
    if found is not None and "block_size" not in errors and "dataset" not in errors:
        for split, n in (("train", found.train_tokens), ("val", found.val_tokens)):
            if n < cfg.block_size + 1:
                errors["dataset"] = (
                    f"its {split} split has {n} tokens, fewer than block_size + 1 ({cfg.block_size + 1}): "
                    "lower block_size, or bring more text (or a larger val_fraction)"
                )
                break
    if errors:
        raise ConfigError(errors)
    return cfg


def _start(init: str, allow_paths: bool, start: Callable[[str], Start] | None, errors: dict[str, str]) -> Start | None:
    """The weights init_from names, when make_config can know them (else None)."""
    if init in PRETRAINED:
        return pretrained_start(init)
    if init.startswith("run:") and start is not None:
        try:
            return start(init)
        except ValueError as e:
            errors["init_from"] = str(e)
            return None
    if init in INIT_FROM or (allow_paths and os.path.isfile(init)):
        return None  # scratch, resume, or a checkpoint file the engine reads
    choices = ", ".join(INIT_FROM) + (", run:<id>[@best|latest|<iter>]" if start is not None else "")
    errors["init_from"] = f"must be one of {choices}" + (", or a checkpoint file's path" if allow_paths else "")
    return None


def _take_architecture(begin: Start, given: dict[str, Any], values: dict[str, Any], errors: dict[str, str]) -> None:
    """The weights fix the architecture (nanoGPT takes it from them): a value the user gave
    that differs is an error, not silently replaced; block_size may only shrink (cropped)."""
    for k in ("n_layer", "n_head", "n_embd", "bias"):
        fixed = begin.model_args[k]
        if k in given and k not in errors and values.get(k) != fixed:
            errors[k] = f"is {fixed} in the weights of {begin.what} (init_from); leave it out"
        values[k] = fixed
    limit = begin.model_args["block_size"]
    if "block_size" in given and "block_size" not in errors and values["block_size"] > limit:
        errors["block_size"] = f"at most {limit} with the weights of {begin.what}, which have {limit} positions"
    values["block_size"] = min(values.get("block_size", limit), limit)


def _same_tokenizer(
    begin: Start, dataset: str, found: Corpus | None, values: dict[str, Any], errors: dict[str, str]
) -> None:
    """The dataset's tokens must mean what they meant to the weights."""
    if found is not None:
        kind, chars = found.tokenizer, found.chars
    elif dataset in BUILTIN_DATASETS:
        kind = BUILTIN_DATASETS[dataset]["tokenizer"]
        chars = builtin_chars(dataset) if kind == "char" else None
    else:
        return  # a local file: the engine checks it when it has prepared the text
    kind = values.get("tokenizer") or kind
    theirs = begin.tokenizer.get("kind")
    if kind != theirs:
        errors["dataset"] = f"is tokenized with {kind}, but the weights of {begin.what} were trained with {theirs}"
    elif kind == "char" and chars is not None and chars != begin.tokenizer.get("chars"):
        errors["dataset"] = (
            f"its character vocabulary ({len(chars)} characters) differs from the one the weights of "
            f"{begin.what} were trained with ({len(begin.tokenizer.get('chars') or '')}): the same ids would "
            "mean other characters"
        )


def check(cfg: TrainConfig, *, max_params: int | None = None, vocab_size: int | None = None) -> dict[str, str]:
    """Field -> reason for every value that cannot train; empty when the config is good."""
    e: dict[str, str] = {}
    positive = ["eval_interval", "log_interval", "eval_iters", "gradient_accumulation_steps", "batch_size"]
    positive += ["block_size", "n_layer", "n_head", "n_embd", "sample_tokens"]
    for name in positive:
        if getattr(cfg, name) <= 0:
            e[name] = f"must be a positive integer (got {getattr(cfg, name)})"
    for name in ("max_iters", "warmup_iters", "lr_decay_iters"):
        if getattr(cfg, name) < 0:
            e[name] = f"must be 0 or more (got {getattr(cfg, name)})"
    if cfg.n_head > 0 and cfg.n_embd > 0 and cfg.n_embd % cfg.n_head:
        e["n_embd"] = f"must be divisible by n_head ({cfg.n_embd} is not a multiple of {cfg.n_head})"
    if not 0.0 <= cfg.dropout < 1.0:
        e["dropout"] = f"must be in [0, 1) (got {cfg.dropout})"
    if cfg.learning_rate <= 0:
        e["learning_rate"] = f"must be positive (got {cfg.learning_rate})"
    if cfg.min_lr < 0:
        e["min_lr"] = f"must be 0 or more (got {cfg.min_lr})"
    elif cfg.decay_lr and cfg.min_lr > cfg.learning_rate and "learning_rate" not in e:  # unused without decay
        e["min_lr"] = f"must not exceed learning_rate ({cfg.min_lr} > {cfg.learning_rate})"
    if cfg.weight_decay < 0:
        e["weight_decay"] = f"must be 0 or more (got {cfg.weight_decay})"
    for name in ("beta1", "beta2"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            e[name] = f"must be in [0, 1) (got {getattr(cfg, name)})"
    if cfg.grad_clip < 0:
        e["grad_clip"] = f"must be 0 (off) or positive (got {cfg.grad_clip})"
    if cfg.decay_lr and cfg.lr_decay_iters < cfg.warmup_iters:
        e["lr_decay_iters"] = (
            f"must be at least warmup_iters ({cfg.lr_decay_iters} < {cfg.warmup_iters}): "
            "the cosine decay starts where the warmup ends"
        )
    if cfg.device not in DEVICES and not cfg.device.startswith("cuda:"):
        e["device"] = f"must be one of {', '.join(DEVICES)} or cuda:N (got {cfg.device!r})"
    if cfg.backend is not None and cfg.backend not in BACKENDS:
        e["backend"] = f"must be one of {', '.join(BACKENDS)}, or null to choose by device (got {cfg.backend!r})"
    elif cfg.backend == "nccl" and cfg.device in ("cpu", "mps"):
        e["backend"] = f"nccl runs on CUDA devices only; use gloo with device {cfg.device}"
    for name, most in (("nproc_per_node", MAX_NPROC_PER_NODE), ("nnodes", MAX_NNODES)):
        if not 1 <= getattr(cfg, name) <= most:
            e[name] = f"must be between 1 and {most} (got {getattr(cfg, name)})"
    world = cfg.world_size()
    if world > 1 and cfg.gradient_accumulation_steps > 0 and cfg.gradient_accumulation_steps % world:
        e["gradient_accumulation_steps"] = (
            f"must be divisible by the world size, nproc_per_node x nnodes = {cfg.nproc_per_node} x {cfg.nnodes} "
            f"= {world} (got {cfg.gradient_accumulation_steps}): each rank runs an equal share of the micro-steps"
        )
    if cfg.dtype not in DTYPES:
        e["dtype"] = f"must be one of {', '.join(DTYPES)} (got {cfg.dtype!r})"
    if cfg.tokenizer is not None and cfg.tokenizer not in TOKENIZERS:
        e["tokenizer"] = f"must be one of {', '.join(TOKENIZERS)} (got {cfg.tokenizer!r})"
    if cfg.peak_flops is not None and cfg.peak_flops <= 0:
        e["peak_flops"] = f"must be positive FLOP/s (got {cfg.peak_flops})"
    if not cfg.out_dir:
        e["out_dir"] = "must not be empty"
    if max_params is not None and not e:
        n = n_params(cfg, vocab_size)
        if n > max_params:
            e["n_layer"] = (
                f"model too large: {n / 1e6:.2f}M parameters exceeds the limit of {max_params / 1e6:.2f}M "
                "(reduce n_layer, n_embd or block_size)"
            )
    return e

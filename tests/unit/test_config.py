from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest

from gpt.config import FIELDS, GROUPS, ConfigError, TrainConfig, describe, make_config, n_params


def errors(**over: object) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        make_config(over)
    return e.value.errors


def test_nanogpt_defaults_and_recipe() -> None:
    assert TrainConfig().learning_rate == 6e-4 and TrainConfig().n_layer == 12
    cfg = make_config({"dataset": "shakespeare_char", "n_layer": "4", "compile": "False", "max_iters": "2e3"})
    # the recipe of nanoGPT's config/train_shakespeare_char.py, under the user's keys
    assert (cfg.learning_rate, cfg.beta2, cfg.warmup_iters, cfg.gradient_accumulation_steps) == (1e-3, 0.99, 100, 1)
    assert (cfg.n_layer, cfg.compile, cfg.max_iters) == (4, False, 2000)


@pytest.mark.parametrize(
    "over, field, words",
    [
        ({"n_embd": 100, "n_head": 3}, "n_embd", "divisible by n_head"),
        ({"batch_size": 0}, "batch_size", "positive"),
        ({"n_layer": -1}, "n_layer", "positive"),
        ({"warmup_iters": 500, "lr_decay_iters": 100}, "lr_decay_iters", "at least warmup_iters"),
        ({"dataset": "openwebtext"}, "dataset", "unknown dataset"),
        ({"learnign_rate": 1.0}, "learnign_rate", "unknown key"),
        ({"batch_size": "many"}, "batch_size", "integer"),
        ({"dropout": 1.5}, "dropout", "[0, 1)"),
        ({"learning_rate": "nan"}, "learning_rate", "finite"),
        ({"learning_rate": float("inf")}, "learning_rate", "finite"),
        ({"max_iters": 10**30}, "max_iters", "below 2**62"),  # JSON integers have no size limit
        ({"seed": float("inf")}, "seed", "integer"),
        ({"sample_prompts": ["\ud800"]}, "sample_prompts", "Unicode"),
        ({"device": "tpu"}, "device", "one of"),
        ({"init_from": "gpt2-xxl"}, "init_from", "must be one of scratch, resume, gpt2, gpt2-medium"),
        ({"bias": "maybe"}, "bias", "true or false"),
        ({"backend": "mpi"}, "backend", "one of nccl, gloo"),
        ({"backend": "nccl", "device": "cpu"}, "backend", "CUDA devices only"),
        ({"nproc_per_node": 0}, "nproc_per_node", "between 1 and"),
        ({"nnodes": 5000}, "nnodes", "between 1 and"),
    ],
)
def test_validation_names_field_and_reason(over: dict[str, object], field: str, words: str) -> None:
    errs = errors(**over)
    assert field in errs and words in errs[field], errs


def test_all_errors_reported_at_once() -> None:
    assert {"n_embd", "batch_size", "nope"} <= set(errors(n_embd=10, n_head=3, batch_size=-2, nope=1))


def test_model_size_limit() -> None:
    cfg = make_config({"dataset": "shakespeare_char"})
    assert 10.6e6 < n_params(cfg) < 10.8e6  # nanoGPT prints 10.65M for this model
    with pytest.raises(ConfigError) as e:
        make_config({"dataset": "shakespeare_char"}, max_params=1_000_000)
    assert "too large" in str(e.value) and "10.7" in str(e.value)


def test_paths_refused_when_not_allowed(tmp_path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("hello")
    assert make_config({"dataset": str(f)}).dataset == str(f)
    with pytest.raises(ConfigError):
        make_config({"dataset": str(f)}, allow_paths=False)


def test_config_imports_without_torch() -> None:
    code = "import sys, gpt.config, gpt.readings; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_describe_lists_every_key_with_its_section_and_help() -> None:
    fields = describe()
    assert [f["name"] for f in fields] == list(FIELDS)  # train.py's order
    assert json.loads(json.dumps(fields)) == fields  # plain JSON values, for the API
    defaults = TrainConfig()
    for f in fields:
        assert f["group"] in GROUPS and f["help"], f
        assert f["type"] == str(FIELDS[f["name"]].type) and f["default"] == getattr(defaults, f["name"])
    by_name = {f["name"]: f for f in fields}
    assert by_name["compile"]["type"] == "bool | None" and by_name["sample_prompts"]["type"] == "list[str]"
    assert (by_name["out_dir"]["group"], by_name["bias"]["group"], by_name["seed"]["group"]) == ("I/O", "model", "ours")
    # Sections in train.py's order, each in one piece.
    assert [g for g, _ in itertools.groupby(f["group"] for f in fields)] == list(GROUPS)
    assert by_name["bias"]["default"] is False and "False: a bit better and faster" in by_name["bias"]["help"]


def test_each_config_has_its_own_list() -> None:
    a, b = TrainConfig(), TrainConfig()
    a.sample_prompts.append("ROMEO:")
    assert b.sample_prompts == []


def test_world_size_must_divide_gradient_accumulation() -> None:
    # nanoGPT asserts it; here it is a 422 naming both sides.
    errs = errors(gradient_accumulation_steps=40, nproc_per_node=3)
    reason = errs["gradient_accumulation_steps"]
    assert "nproc_per_node x nnodes = 3 x 1 = 3" in reason and "got 40" in reason, reason
    assert "nnodes" in errors(gradient_accumulation_steps=6, nproc_per_node=2, nnodes=2)["gradient_accumulation_steps"]
    cfg = make_config({"gradient_accumulation_steps": 8, "nproc_per_node": 2, "nnodes": 2})
    # gradient_accumulation_steps is global, so the tokens of an iteration count every rank.
    assert cfg.world_size() == 4 and cfg.tokens_per_iter() == 8 * cfg.batch_size * cfg.block_size
    assert make_config({"backend": "gloo", "device": "cpu"}).backend == "gloo"
    assert TrainConfig().backend is None  # chosen from the device
    assert make_config({"backend": "None"}).backend is None  # as `--backend=None` from to_dict() flags

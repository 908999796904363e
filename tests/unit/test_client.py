"""The client's own logic, without a server: how `submit` reads its options and config files,
and what the watch bar does with a resumed run. The commands against a real server are in
tests/integration/test_client_cli.py."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import pytest

from api import client
from api.client import Bar, ClientError, add_client_commands, config_from_args


def _parse(*argv: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gptjobs")
    add_client_commands(ap.add_subparsers(dest="command", required=True))
    return ap.parse_args(argv)


def test_training_options_are_nanogpt_literals_and_never_the_client_flags() -> None:
    args = _parse(
        "submit", "--key=abc", "--n_layer=2", "--compile=False", "--learning_rate=1e6", "--sample_prompts=['a', 'b']",
        "--dataset=shakespeare_char", "--tokenizer=None", "--out_dir=123", "--name", "n", "--max-restarts", "2",
    )  # fmt: skip
    assert (args.key, args.name, args.max_restarts) == ("abc", "n", 2)  # --key is the API key, not a config key
    assert config_from_args(args) == {
        "n_layer": 2,
        "compile": False,
        "learning_rate": 1e6,
        "sample_prompts": ["a", "b"],
        "dataset": "shakespeare_char",
        "tokenizer": None,
        "out_dir": "123",  # a text option stays text
    }


def test_a_config_key_named_like_a_client_flag_is_config_dot_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "FIELDS", {**client.FIELDS, "name": client.FIELDS["dataset"]})
    args = _parse("submit", "--name=label", "--config.name=value")
    assert args.name == "label" and config_from_args(args)["name"] == "value"


def test_config_files_then_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    py = tmp_path / "train_tiny.py"  # as nanoGPT's config/ files are written, expressions and all
    py.write_text(
        "import time\nout_dir = 'out-tiny'\nwandb_log = False\nwandb_run_name = 'r' + str(time.time())\n"
        "gradient_accumulation_steps = 5 * 8\nn_layer = 6  # overridden below\n"
    )
    js = tmp_path / "more.json"
    js.write_text(json.dumps({"n_head": 2, "n_embd": 64}))
    args = _parse("submit", str(py), str(js), "--n_layer=2")
    assert config_from_args(args) == {
        "out_dir": "out-tiny",
        "gradient_accumulation_steps": 40,
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 64,
    }
    assert "ignoring nanoGPT options this service does not use: wandb_log, wandb_run_name" in capsys.readouterr().err

    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ClientError, match="expected a JSON object") as e:
        config_from_args(_parse("submit", str(bad)))
    assert e.value.code == 2
    with pytest.raises(ClientError, match="cannot read config file"):
        config_from_args(_parse("submit", str(tmp_path / "missing.py")))


def _ev(seq: int, type_: str, **fields: Any) -> dict[str, Any]:
    return {"seq": seq, "type": type_, "ts": 1000.0 + seq, **fields}


def test_the_bar_goes_back_on_a_resume_and_ends_with_the_status_line() -> None:
    out = io.StringIO()
    bar = Bar({"status": "queued", "config": {"max_iters": 100}}, out)
    bar.event(_ev(1, "status", status="running", iter=0), "")
    for i in range(60):
        bar.event(_ev(2 + i, "iter", iter=i, loss=3.0, step_ms=10.0, mfu=None), "")
    assert bar.done == 60 and "60/100" in bar.text() and "mfu n/a" in bar.text()
    bar.event(_ev(62, "status", status="recovering", iter=60, reason="worker lost"), "")
    bar.event(_ev(63, "status", status="running", iter=40, from_iter=40), "")
    assert bar.done == 40 and "running" not in bar.text() and bar.text().startswith("40/100")
    assert all(i < 40 for _, i in bar.recent)  # the ETA forgets the redone iterations
    bar.event(_ev(64, "eval", iter=100, train_loss=2.0, val_loss=2.5, eval_ms=5.0), "")
    bar.event(_ev(65, "status", status="succeeded", iter=100, reason="trained 100 iterations"), "")
    bar.note("late note")
    bar.close()
    screen = out.getvalue()
    assert "run running (resuming from iter 40)" in screen and "step 100: train loss 2.0000, val loss 2.5000" in screen
    last_bar, status = screen.rstrip("\n").split("\n")[-2:]
    assert "100/100" in last_bar.rsplit("\r", 1)[-1] and "val 2.5000" in last_bar
    assert status == "run succeeded: trained 100 iterations"  # the last line, with no bar after it

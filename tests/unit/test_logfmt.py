from gpt.logfmt import format_event


def test_iter_line_matches_nanogpt() -> None:
    ev = {"type": "iter", "iter": 4980, "loss": 0.80101, "step_ms": 33.2211, "mfu": 0.1107}
    assert format_event(ev) == ["iter 4980: loss 0.8010, time 33.22ms, mfu 11.07%"]


def test_unknown_mfu_is_not_a_number() -> None:
    ev = {"type": "iter", "iter": 3, "loss": 4.2, "step_ms": 8.0, "mfu": None}
    assert format_event(ev) == ["iter 3: loss 4.2000, time 8.00ms, mfu n/a"]


def test_eval_lines_keep_eval_time_apart() -> None:
    ev = {"type": "eval", "iter": 5000, "train_loss": 0.62241, "val_loss": 1.70444, "eval_ms": 4446.1}
    assert format_event(ev) == ["step 5000: train loss 0.6224, val loss 1.7044", "eval time 4446.10ms"]


def test_status_with_resume() -> None:
    ev = {"type": "status", "status": "running", "reason": "resumed", "from_iter": 250}
    assert format_event(ev) == ["run running (resuming from iter 250): resumed"]

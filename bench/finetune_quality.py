"""Does starting from pretrained weights help? A tiny GPT-2 fine-tuned on `shakespeare` for
100 iterations against the same shape trained from scratch for 100 iterations.

    python bench/finetune_quality.py [--pretrain-iters 600] [--iters 100]

No pretrained GPT-2 can be downloaded here, so the bench makes one: a GPT-2-shaped model
(2 layers, 2 heads, 64 wide, GPT-2's BPE) trained from scratch on the first half of tiny
Shakespeare (a text file: the `shakespeare` dataset's val split, its last tenth, is not in
it), exported in Hugging Face's layout (gpt.hf.to_hf) into a temporary Hub cache as
openai-community/gpt2, and loaded from there by `init_from: gpt2`, as a real one would be
(HF_HUB_OFFLINE=1). Then both runs train on `shakespeare` with the same keys but init_from,
and the bench prints each one's val loss at iterations 0, 50 and 100.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrain-iters", type=int, default=600)
    ap.add_argument("--iters", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gptjobs-finetune-") as d:
        hub = Path(d) / "hf" / "hub"
        os.environ.update(HF_HOME=str(Path(d) / "hf"), HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1")
        import torch
        from safetensors.torch import save_file

        from gpt import checkpoint as ckpt
        from gpt import hf
        from gpt.config import make_config
        from gpt.tokenizers import ASSETS
        from gpt.train import train

        torch.set_num_threads(2)
        text = (ASSETS / "tinyshakespeare.txt").read_text()
        half = Path(d) / "first-half.txt"
        half.write_text(text[: len(text) // 2])
        shape = {"n_layer": 2, "n_head": 2, "n_embd": 64, "bias": True, "dropout": 0.0}
        common = {"device": "cpu", "compile": False, "block_size": 64, "batch_size": 8, "gradient_accumulation_steps": 1,
                  "eval_iters": 40, "log_interval": 1000, "warmup_iters": 20, "learning_rate": 6e-4}  # fmt: skip

        def val_losses(overrides: dict) -> dict[int, float]:
            cfg = make_config({**common, **overrides})
            return {e["iter"]: e["val_loss"] for e in train(cfg, data_dir=Path(d) / "data") if e["type"] == "eval"}

        n = args.pretrain_iters
        pre = val_losses({**shape, "dataset": str(half), "tokenizer": "gpt2", "max_iters": n, "lr_decay_iters": n,
                          "eval_interval": n, "out_dir": str(Path(d) / "pretrain")})  # fmt: skip
        print(f"pretrained {n} iterations on the first half: val loss (of that text's own split) {pre[n]:.4f}")
        saved = ckpt.load(Path(d) / "pretrain" / ckpt.LATEST)
        config, tensors = hf.to_hf(saved["model_args"], saved["model"], "exact", 50257)
        snap = hub / "models--openai-community--gpt2" / "snapshots" / ("0" * 40)
        snap.mkdir(parents=True)
        save_file(tensors, str(snap / "model.safetensors"))
        (snap / "config.json").write_text(json.dumps(config))
        (hub / "models--openai-community--gpt2" / "refs").mkdir()
        (hub / "models--openai-community--gpt2" / "refs" / "main").write_text("0" * 40)
        assert hf.cached("gpt2") == snap

        k = args.iters
        # The keys both runs share, so that they differ only in init_from (the `shakespeare`
        # recipes, from scratch and for fine-tuning, set other ones).
        run = {"dataset": "shakespeare", "max_iters": k, "lr_decay_iters": k, "eval_interval": k // 2, "decay_lr": True,
               "always_save_checkpoint": False, "beta2": 0.99, "min_lr": 6e-5, "dropout": 0.0}  # fmt: skip
        tuned = val_losses({**run, "init_from": "gpt2", "out_dir": str(Path(d) / "tuned")})
        scratch = val_losses({**run, **shape, "out_dir": str(Path(d) / "scratch")})
    print(f"{'iter':>6}  {'fine-tuned':>10}  {'scratch':>10}")
    for it in sorted(tuned):
        print(f"{it:>6}  {tuned[it]:>10.4f}  {scratch[it]:>10.4f}")
    better = tuned[k] < scratch[k]
    print(f"after {k} iterations: fine-tuned {tuned[k]:.4f} against scratch {scratch[k]:.4f}: "
          f"{'lower' if better else 'NOT lower'} (bar: lower)")  # fmt: skip
    return 0 if better else 1


if __name__ == "__main__":
    sys.exit(main())

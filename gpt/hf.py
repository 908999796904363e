"""GPT-2 weights in Hugging Face's layout, in and out: a `transformers` GPT-2 directory
(config.json + model.safetensors) to our model's state, and back.

Knows the two layouts and the Hub's cache; nothing of runs, owners or HTTP. Only
safetensors are read: a `pytorch_model.bin` is a pickle, and a pickle from elsewhere is not
unpickled here. Hugging Face keeps GPT-2's linear layers as Conv1D, whose weights are the
transpose of a Linear's; its GELU is the tanh approximation (`gelu_new`), which a model
loaded from it keeps (`gelu="tanh"`), so that its logits are transformers' own.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt.tokenizers import ASSETS

if TYPE_CHECKING:
    import torch

# nanoGPT's names for the Hub's GPT-2 checkpoints, and their shapes (n_layer, n_head, n_embd).
PRETRAINED = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
FILES = ("config.json", "model.safetensors")
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}
MAX_CONFIG_BYTES = 1 << 20


class WeightsError(ValueError):
    """Weights that cannot be used; the message says why (for a 4xx or a failed run)."""


@dataclass
class Weights:
    """A model to start from: its architecture (nanoGPT's model_args), its state in our
    parameter names, and the GELU it was trained with."""

    model_args: dict[str, Any]
    state: dict[str, torch.Tensor] = field(repr=False)
    gelu: str = "exact"
    tokenizer: dict[str, Any] = field(default_factory=lambda: {"kind": "gpt2"})


# --- the Hub's cache ---------------------------------------------------------------------------


def repo_of(name: str) -> str:
    return PRETRAINED[name]


def cached(name: str) -> Path | None:
    """The directory holding both files of a pretrained GPT-2 in the Hub's cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    paths = [try_to_load_from_cache(repo_of(name), f) for f in FILES]
    if all(isinstance(p, str) for p in paths):
        return Path(str(paths[0])).parent
    return None


def how_to_get(name: str) -> str:
    return (
        f"the weights of {name} ({repo_of(name)}) are not in this server's Hugging Face cache "
        f"(HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}) and cannot be downloaded here"
        + (" (HF_HUB_OFFLINE is set)" if offline() else "")
        + ": download them where there is network (`huggingface-cli download "
        f"{repo_of(name)} config.json model.safetensors`) and copy the cache over, or upload them as "
        "a Hugging Face directory in a tar with POST /runs/import and start from that run (init_from: run:<id>)"
    )


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def fetch(name: str) -> Path:
    """The local directory of a pretrained GPT-2: the cache's, or downloaded into it (unless
    offline). Raises WeightsError saying how to get them when neither works."""
    if (d := cached(name)) is not None:
        return d
    if offline():
        raise WeightsError(how_to_get(name))
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_of(name), allow_patterns=list(FILES)))
    except Exception as e:  # no network, no such repo, a proxy's refusal: all say the same to a user
        raise WeightsError(f"{how_to_get(name)} ({type(e).__name__})") from None


# --- in -----------------------------------------------------------------------------------------


def read_config(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise WeightsError(f"config.json is over {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise WeightsError(f"config.json is not JSON: {e}") from None
    if not isinstance(config, dict) or config.get("model_type") != "gpt2":
        raise WeightsError("config.json does not describe a GPT-2 model (model_type must be gpt2)")
    return config


def model_args_of(config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """nanoGPT's model_args (and the GELU) of a transformers GPT2Config."""
    try:
        args = {
            "n_layer": int(config["n_layer"]),
            "n_head": int(config["n_head"]),
            "n_embd": int(config["n_embd"]),
            "block_size": int(config["n_positions"]),
            "vocab_size": int(config["vocab_size"]),
            "bias": True,  # GPT-2 has biases everywhere
            "dropout": 0.0,
        }
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"config.json lacks a GPT-2 size: {e}") from None
    if not all(0 < args[k] <= 1 << 20 for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")):
        raise WeightsError(f"config.json has an impossible size: {args}")
    if args["n_embd"] % args["n_head"]:
        raise WeightsError(f"config.json: n_embd {args['n_embd']} is not a multiple of n_head {args['n_head']}")
    act = config.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise WeightsError(f"config.json: activation_function {act!r} is not one of {', '.join(ACTIVATIONS)}")
    if config.get("n_inner") not in (None, 4 * args["n_embd"]):
        raise WeightsError("config.json: n_inner other than 4 x n_embd is not GPT-2's shape")
    return args, ACTIVATIONS[act]


def load_dir(d: Path) -> Weights:
    """A transformers GPT-2 directory (config.json + model.safetensors), checked: every
    tensor of the architecture, of the right shape, and nothing else but the buffers
    transformers keeps (attn.bias, attn.masked_bias)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if (d / "pytorch_model.bin").exists() and not (d / "model.safetensors").exists():
        raise WeightsError("pytorch_model.bin is a pickle, which is not loaded here: save the model as safetensors")
    for f in FILES:
        if not (d / f).is_file():
            raise WeightsError(f"the directory has no {f}")
    args, gelu = model_args_of(read_config(d / "config.json"))
    try:
        tensors = load_file(str(d / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"model.safetensors is not readable: {e}") from None
    state: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # transformers' causal-mask buffers, not weights
        if name == "lm_head.weight":
            continue  # tied to wte
        if name.endswith(CONV1D):
            t = t.t()
        state[name if name.startswith("lm_head") else f"transformer.{name}"] = t.float().contiguous()
    state["lm_head.weight"] = state.get("transformer.wte.weight", torch.empty(0))
    check_state(state, args)
    return Weights(args, state, gelu, {"kind": "gpt2"} if args["vocab_size"] >= 50257 else {"kind": "unknown"})


def check_state(state: dict[str, Any], model_args: dict[str, Any]) -> None:
    """Every parameter of the architecture, with its shape, and no other: the message names
    the first that is missing, extra or of the wrong shape."""
    import torch

    from gpt.model import GPT, GPTConfig

    with torch.device("meta"):  # shapes only: no memory for a 1.5B model's check
        want = {k: tuple(v.shape) for k, v in GPT(GPTConfig(**model_args)).state_dict().items()}
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing:
        raise WeightsError(
            f"the weights lack {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    if extra:
        raise WeightsError(f"the weights have {extra[0]}, which a GPT-2 of this shape has not")
    for k, shape in want.items():
        if tuple(state[k].shape) != shape:
            raise WeightsError(f"{k} is {tuple(state[k].shape)}, not {shape}, for a model of {model_args}")


def pretrained(name: str) -> Weights:
    return load_dir(fetch(name))


# --- out ----------------------------------------------------------------------------------------


def to_hf(
    model_args: dict[str, Any], state: dict[str, torch.Tensor], gelu: str, vocab: int
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """transformers' config.json and safetensors tensors of our model. Biases our model has
    not (bias=False) are zeros there, which computes the same; `vocab` rows of the
    embedding are kept (GPT-2's 50257, not the 50304 we pad to for speed)."""
    import torch

    n_embd, n_layer = model_args["n_embd"], model_args["n_layer"]
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if name == "lm_head.weight":
            continue
        key = name.removeprefix("transformer.")
        if key == "wte.weight":
            t = t[:vocab]
        if key.endswith(CONV1D):
            t = t.t()
        out[f"transformer.{key}"] = t.detach().float().contiguous().clone()
    zeros = {"ln_1.bias": n_embd, "ln_2.bias": n_embd, "attn.c_attn.bias": 3 * n_embd, "attn.c_proj.bias": n_embd}
    zeros |= {"mlp.c_fc.bias": 4 * n_embd, "mlp.c_proj.bias": n_embd}
    for i in range(n_layer):
        for k, n in zeros.items():
            out.setdefault(f"transformer.h.{i}.{k}", torch.zeros(n))
    out.setdefault("transformer.ln_f.bias", torch.zeros(n_embd))
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_layer": n_layer,
        "n_head": model_args["n_head"],
        "n_embd": n_embd,
        "n_positions": model_args["block_size"],
        "n_ctx": model_args["block_size"],
        "vocab_size": vocab,
        "activation_function": "gelu_new" if gelu == "tanh" else "gelu",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "tie_word_embeddings": True,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
    }
    return config, out


def gpt2_tokenizer_files() -> dict[str, Path]:
    """GPT-2's tokenizer as transformers reads it (vocab.json, merges.txt), shipped with gpt/."""
    return {"vocab.json": ASSETS / "gpt2_encoder.json", "merges.txt": ASSETS / "gpt2_vocab.bpe"}

"""Model FLOPs utilisation: FLOPs the model needs, over what the device could do.

FLOPs per token follow the PaLM appendix as nanoGPT counts them: 6N for the matmuls with
the weights (forward 2N, backward 4N) plus 12*L*H*Q*T for attention, N without position
embeddings. The peak is the dense (no sparsity) tensor-core figure of the device in use for
the dtype in use. An unknown device gives None: a guess would be a wrong number.
"""

from __future__ import annotations

import re

# Dense peak FLOP/s by device and dtype. float32 matmuls run on TF32 tensor cores (we
# enable them), so the float32 column is the TF32 figure where the device has one.
# GeForce cards accumulate fp16/bf16 in fp32 at half rate: those are the figures here.
_PEAKS: list[tuple[str, dict[str, float]]] = [
    # (regex on torch.cuda.get_device_name(), {dtype: FLOP/s}); first match wins.
    (r"\bB200\b", {"bfloat16": 2250e12, "float16": 2250e12, "float32": 1100e12}),
    (r"\bH200\b", {"bfloat16": 989e12, "float16": 989e12, "float32": 494.7e12}),
    (r"\bH100\b.*\bPCIe\b", {"bfloat16": 756e12, "float16": 756e12, "float32": 378e12}),
    (r"\bH100\b.*\bNVL\b", {"bfloat16": 835e12, "float16": 835e12, "float32": 417.5e12}),
    (r"\bH100\b", {"bfloat16": 989e12, "float16": 989e12, "float32": 494.7e12}),  # SXM
    (r"\bA100\b", {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12}),
    (r"\bL40S\b", {"bfloat16": 362.05e12, "float16": 362.05e12, "float32": 183.2e12}),
    (r"\bL4\b", {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12}),
    (r"\bA10\b", {"bfloat16": 125e12, "float16": 125e12, "float32": 62.5e12}),
    (r"\bRTX 4090\b", {"bfloat16": 165.2e12, "float16": 165.2e12, "float32": 82.6e12}),
    (r"\bRTX 3090\b", {"bfloat16": 71e12, "float16": 71e12, "float32": 35.6e12}),
    (r"\bV100\b", {"float16": 125e12, "float32": 15.7e12}),  # no bf16 tensor cores
    (r"\bT4\b", {"float16": 65e12, "float32": 8.1e12}),
]


def peak_flops(device_name: str | None, dtype: str) -> float | None:
    """Dense peak FLOP/s of one device for dtype, or None when we do not know it."""
    if not device_name:
        return None
    for pattern, by_dtype in _PEAKS:
        if re.search(pattern, device_name):
            return by_dtype.get(dtype)
    return None


def flops_per_token(n_params: int, n_layer: int, n_head: int, head_dim: int, seq_len: int) -> int:
    """Training FLOPs (forward + backward) per token; n_params excludes position embeddings."""
    return 6 * n_params + 12 * n_layer * n_head * head_dim * seq_len

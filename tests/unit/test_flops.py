from __future__ import annotations

import pytest

from gpt.flops import flops_per_token, peak_flops


def test_flops_per_token_by_hand() -> None:
    # 4 layers, 4 heads of 32, block 64, 100 non-embedding params (a toy number):
    # 6*100 + 12*4*4*32*64 = 600 + 393216
    assert flops_per_token(100, 4, 4, 32, 64) == 393816


@pytest.mark.parametrize(
    "name, dtype, want",
    [
        ("NVIDIA A100-SXM4-80GB", "bfloat16", 312e12),
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
        ("NVIDIA H100 PCIe", "bfloat16", 756e12),
        ("NVIDIA H200", "float32", 494.7e12),
        ("NVIDIA A10", "bfloat16", 125e12),  # must not match A100
        ("NVIDIA L4", "float16", 121e12),
        ("NVIDIA GeForce RTX 4090", "bfloat16", 165.2e12),
        ("Tesla V100-SXM2-16GB", "bfloat16", None),
        ("Some Future GPU", "bfloat16", None),
        (None, "float32", None),
    ],
)
def test_peak_table(name: str | None, dtype: str, want: float | None) -> None:
    assert peak_flops(name, dtype) == want

from __future__ import annotations

import torch

from gpt.model import GPT, GPTConfig, sample_next


def _model(block_size: int = 16) -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=block_size, vocab_size=50, n_layer=2, n_head=2, n_embd=16, bias=True))
    return m.double().eval()  # float64: no near-ties between the two paths' rounding


def _greedy_full(model: GPT, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Reference decoding: recompute the whole (cropped) context for every token."""
    for _ in range(n):
        logits, _ = model(idx[:, -model.config.block_size :])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def test_kv_cache_greedy_matches_full_recomputation_past_block_size() -> None:
    model = _model(block_size=16)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])  # batched: two samples at once
    want = _greedy_full(model, prompt, 30)  # 3 + 30 tokens: well past block_size
    got = model.generate(prompt, 30, top_k=1, use_cache=True)
    assert torch.equal(got, want)
    assert torch.equal(model.generate(prompt, 30, top_k=1, use_cache=False), want)


def test_seeded_sampling_is_reproducible() -> None:
    model = _model()
    prompt = torch.tensor([[1, 2, 3]] * 4)
    a = model.generate(prompt, 10, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(7))
    b = model.generate(prompt, 10, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(7))
    c = model.generate(prompt, 10, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_only_picks_from_the_k_largest() -> None:
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0, 3.0]])
    gen = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, 1.0, 2, gen)) for _ in range(200)}
    assert picks == {1, 2}
    assert int(sample_next(logits, 0.0, None, gen)) == 1  # temperature 0: greedy


def test_parameter_names_match_nanogpt() -> None:
    m = GPT(GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=8, bias=False))
    keys = set(m.state_dict())
    want = {
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_proj.weight",
        "transformer.h.0.ln_2.weight",
        "transformer.h.0.mlp.c_fc.weight",
        "transformer.h.0.mlp.c_proj.weight",
        "transformer.ln_f.weight",
        "lm_head.weight",
    }
    assert keys == want
    assert m.transformer.wte.weight is m.lm_head.weight  # tied

"""The GPT-2 model as nanoGPT has it, plus KV-cache generation.

Parameter names match nanoGPT's model.py exactly, so a state_dict moves between the two.
This module knows tensors only: no tokenizer, no files, no devices chosen here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # True: bias in Linears and LayerNorms, like GPT-2
    # nanoGPT's exact GELU; "tanh" for weights trained with GPT-2's approximation (Hugging
    # Face's gelu_new). Not a nanoGPT model_arg: checkpoints keep it beside them (gpt/checkpoint.py).
    gelu: str = "exact"


class KVCache:
    """Keys and values of every layer for positions [0, pos), preallocated to block_size."""

    def __init__(self, cfg: GPTConfig, batch: int, device: torch.device, dtype: torch.dtype):
        hs = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, batch, cfg.n_head, cfg.block_size, hs)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.pos = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head, self.dropout, self.layer = cfg.n_head, cfg.dropout, layer

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        causal = True
        if cache is not None:
            p = cache.pos
            cache.k[self.layer, :, :, p : p + T] = k
            cache.v[self.layer, :, :, p : p + T] = v
            k = cache.k[self.layer, :, :, : p + T]  # (B, nh, p+T, hs)
            v = cache.v[self.layer, :, :, : p + T]
            # One new query sees every cached key; a prompt chunk after a cached prefix
            # would need an offset mask, which generation never asks for.
            assert T == 1 or p == 0
            causal = T > 1
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU(approximate="tanh" if cfg.gelu == "tanh" else "none")
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class _Trunk(nn.Module):
    """Embeddings, blocks and final norm; a module of its own so the parameter names
    (transformer.wte.weight, ...) are nanoGPT's."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.blocks: list[Block] = list(self.h)  # type: ignore[arg-type]


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.transformer = _Trunk(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        # Weight tying (Press & Wolf): the output projection is the embedding's transpose.
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled down by sqrt(2 * n_layer), since each block
        # adds two of them to the residual stream.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without position embeddings, as MFU counts them.

        The token embedding stays in: it is tied to lm_head, which does real matmul work.
        """
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        _B, T = idx.size()
        start = cache.pos if cache is not None else 0
        assert start + T <= self.config.block_size, f"sequence of {start + T} exceeds block_size"
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.blocks:
            x = block(x, cache)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.pos += T
        if targets is not None:
            logits = self.lm_head(x)  # (B, T, vocab)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
            return logits, loss
        return self.lm_head(x[:, [-1], :]), None  # inference: only the last position's logits

    def crop_block_size(self, block_size: int) -> None:
        """Fewer positions than the weights were trained with (a pretrained GPT-2's 1024, for
        a shorter context): the first block_size position embeddings stay."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def configure_optimizer(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float], device_type: str
    ) -> torch.optim.AdamW:
        # Matrices (matmuls, embeddings) decay; biases and LayerNorm gains do not.
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # On CUDA the fused kernel does the whole update in one launch. On the CPU the update
        # is a rounding error of the step's time, and the default (foreach) keeps the numbers
        # bit-identical to nanoGPT's.
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")

    @torch.no_grad()
    def generate_stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> Iterator[torch.Tensor]:
        """Yield the next token of every row, (B,), max_new_tokens times.

        With the cache each step costs one position instead of the whole context. Once the
        context outgrows block_size we keep nanoGPT's semantics (condition on the last
        block_size tokens, at positions 0..block_size-1): every position shifts by one each
        step, so cached keys no longer apply and each further token costs a full forward
        over block_size tokens, like generation without a cache.
        """
        bs = self.config.block_size
        cache = None
        if use_cache and idx.size(1) <= bs:
            p = next(self.parameters())
            cache = KVCache(self.config, idx.size(0), idx.device, p.dtype)
            logits, _ = self(idx, cache=cache)
        else:
            logits, _ = self(idx[:, -bs:])
        for i in range(max_new_tokens):
            nxt = sample_next(logits[:, -1, :], temperature, top_k, generator)  # (B,)
            yield nxt
            if i == max_new_tokens - 1:
                break
            idx = torch.cat((idx, nxt[:, None]), dim=1)
            if cache is not None and cache.pos < bs:
                logits, _ = self(nxt[:, None], cache=cache)
            else:
                logits, _ = self(idx[:, -bs:])

    def generate(self, idx: torch.Tensor, max_new_tokens: int, **kw: object) -> torch.Tensor:
        """The prompt followed by max_new_tokens sampled tokens, (B, T + max_new_tokens)."""
        new = list(self.generate_stream(idx, max_new_tokens, **kw))  # type: ignore[arg-type]
        return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row from (B, vocab) logits. temperature 0 (or top_k 1) is greedy."""
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)

"""Tokenizers: characters, and GPT-2's BPE built offline from the ranks file we ship.

`tiktoken.get_encoding("gpt2")` downloads its vocabulary on first use; training boxes are
often offline, so the GPT-2 encoding is assembled here from gpt/assets/gpt2.tiktoken.
"""

from __future__ import annotations

import codecs
import functools
from pathlib import Path
from typing import Any, Protocol

ASSETS = Path(__file__).parent / "assets"
# GPT-2's pre-tokenisation pattern (contractions, letters, digits, other, whitespace).
_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"


class Tokenizer(Protocol):
    name: str
    n_vocab: int

    def encode(self, text: str) -> list[int]: ...
    def decode_bytes(self, ids: list[int]) -> bytes: ...
    def meta(self) -> dict[str, Any]: ...


class CharTokenizer:
    """One token per character of a fixed alphabet (nanoGPT's shakespeare_char)."""

    name = "char"

    def __init__(self, chars: str):
        self.chars = chars
        self.n_vocab = len(chars)
        self._stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    def unknown(self, text: str) -> list[str]:
        """Characters of text outside the alphabet, in order of first appearance."""
        return list(dict.fromkeys(c for c in text if c not in self._stoi))

    def encode(self, text: str) -> list[int]:
        missing = self.unknown(text)
        if missing:
            raise ValueError(f"characters not in the vocabulary: {''.join(missing)!r}")
        return [self._stoi[c] for c in text]

    def decode_bytes(self, ids: list[int]) -> bytes:
        return "".join(self.chars[i] for i in ids).encode()

    def meta(self) -> dict[str, Any]:
        return {"kind": "char", "chars": self.chars}


class GPT2Tokenizer:
    name = "gpt2"

    def __init__(self) -> None:
        self.enc = _gpt2_encoding()
        self.n_vocab = self.enc.n_vocab  # 50257

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode_bytes(self, ids: list[int]) -> bytes:
        return self.enc.decode_bytes(ids)

    def meta(self) -> dict[str, Any]:
        return {"kind": "gpt2"}


@functools.cache
def _gpt2_encoding() -> Any:
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(ASSETS / "gpt2.tiktoken"))
    return tiktoken.Encoding(
        name="gpt2", pat_str=_GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: len(ranks)}
    )


def from_meta(meta: dict[str, Any]) -> Tokenizer:
    if meta["kind"] == "char":
        return CharTokenizer(meta["chars"])
    if meta["kind"] == "gpt2":
        return GPT2Tokenizer()
    raise ValueError(f"unknown tokenizer {meta['kind']!r}")


def decode(tok: Tokenizer, ids: list[int]) -> str:
    return tok.decode_bytes(ids).decode("utf-8", errors="replace")


class StreamDecoder:
    """Turns tokens into text as they arrive, never emitting half of a UTF-8 character.

    A BPE token can end in the middle of a multi-byte character; the incremental decoder
    holds those bytes back until the token that completes them arrives.
    """

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: list[int]) -> str:
        return self._dec.decode(self.tok.decode_bytes(ids))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)

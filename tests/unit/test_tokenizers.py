from __future__ import annotations

import pytest

from gpt.tokenizers import CharTokenizer, GPT2Tokenizer, StreamDecoder, decode


def test_gpt2_offline() -> None:
    tok = GPT2Tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.n_vocab == 50257
    text = "ROMEO: thou art — naïve, 日本 🙂\n"
    assert decode(tok, tok.encode(text)) == text


def test_char_round_trip_and_unknown() -> None:
    tok = CharTokenizer.from_text("hello world")
    assert decode(tok, tok.encode("hold")) == "hold"
    assert tok.unknown("hex!") == ["x", "!"]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("hex")


def test_stream_decoder_never_splits_a_character() -> None:
    tok = GPT2Tokenizer()
    text = "🙂日本"
    ids = tok.encode(text)
    assert any("\ufffd" in decode(tok, [i]) for i in ids)  # some token is half a character
    dec = StreamDecoder(tok)
    pieces = [dec.push([i]) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)

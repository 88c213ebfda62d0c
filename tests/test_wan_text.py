"""The umT5 text encoder wrapper with a tiny random UMT5EncoderModel and a word-level tokenizer built in
memory (no files, no network): padding rows are exactly zero, lengths count EOS, truncation keeps EOS,
prompts are cleaned as Wan cleans them, and a saved directory loads offline."""

from __future__ import annotations

import logging

import pytest
import torch

from ca2vdm_cli.errors import InputError, WeightsError
from ca2vdm_cli.models.wan.text import UMT5TextEncoder, clean_prompt, fix_text_lite

WORDS = ["a", "cat", "sits", "on", "the", "mat", "dog", "runs", "fast", "red", "blue", "sky", "&", '"', "'"]
MAX_LEN = 8


def tiny_tokenizer():
    """A T5-like tokenizer: whitespace words, `<pad>` 0, `</s>` 1 appended to every sequence."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_umt5(d_model: int = 16, seed: int = 0):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=32, d_model=d_model, d_kv=4, d_ff=32, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
    )  # fmt: skip
    return UMT5EncoderModel(config).eval()


@pytest.fixture(scope="module")
def encoder() -> UMT5TextEncoder:
    return UMT5TextEncoder(tiny_tokenizer(), tiny_umt5(), max_length=MAX_LEN)


def test_padding_rows_are_zero_and_lengths_count_eos(encoder) -> None:
    context, lengths = encoder.encode(["a cat sits on the mat", "dog"])
    assert context.shape == (2, MAX_LEN, 16) and context.dtype == torch.float32
    assert lengths.tolist() == [7, 2]  # words + EOS
    for row, n in enumerate(lengths.tolist()):
        assert torch.equal(context[row, n:], torch.zeros(MAX_LEN - n, 16))
        assert (context[row, :n].abs().sum(-1) > 0).all()
    # the valid rows are the encoder's output under the attention mask
    ids = torch.tensor([[WORDS.index("dog") + 3, 1, 0, 0, 0, 0, 0, 0]])  # "dog </s>" padded
    mask = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        ref = encoder.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(context[1, :2], ref[0, :2])
    # a prompt's rows do not depend on the other prompts of the batch
    alone, _ = encoder.encode(["dog"])
    torch.testing.assert_close(alone[0], context[1])


def test_truncation_keeps_eos_and_warns(encoder, caplog) -> None:
    long = " ".join(["red"] * 20)
    with caplog.at_level(logging.WARNING, logger="ca2vdm_cli.models.wan.text"):
        context, lengths = encoder.encode([long])
    assert lengths.tolist() == [MAX_LEN]
    assert "prompt 0 has 21 tokens; only the first 8" in caplog.text
    ids = encoder.tokenizer([long], max_length=MAX_LEN, truncation=True)["input_ids"][0]
    assert ids[-1] == 1  # EOS survives truncation


def test_device_and_dtype_of_the_result(encoder) -> None:
    context, lengths = encoder.encode(["a cat"], device="cpu", dtype=torch.bfloat16)
    assert context.dtype == torch.bfloat16 and lengths.dtype == torch.int64
    assert torch.equal(context[0, 3:], torch.zeros(MAX_LEN - 3, 16, dtype=torch.bfloat16))
    with pytest.raises(InputError, match="non-empty list"):
        encoder.encode([])


def test_cleaning() -> None:
    assert clean_prompt("  a   cat\n\tsits  ") == "a cat sits"
    assert clean_prompt("red &amp;amp; blue") == "red & blue"  # unescaped twice
    assert clean_prompt("“a” ‘cat’") == "\"a\" 'cat'"
    assert clean_prompt("ﬁne ＡＢＣ\u3000x") == "fine ABC x"
    assert clean_prompt("a\x1b[31mred\x1b[0m\u200b\ufeff cat\x00") == "ared\u200b cat"
    assert fix_text_lite("e\u0301") == "é"  # NFC
    assert fix_text_lite("Ã©") == "Ã©"  # mojibake is not repaired (documented)


def test_cleaned_prompt_is_what_is_encoded(encoder) -> None:
    a, la = encoder.encode(["  a &amp;amp;   cat  "])
    b, lb = encoder.encode(["a & cat"])
    assert la.tolist() == lb.tolist() == [4]  # a & cat </s>
    assert torch.equal(a, b)


def test_load_from_a_directory(tmp_path) -> None:
    tiny_umt5().save_pretrained(tmp_path / "text_encoder")
    tiny_tokenizer().save_pretrained(tmp_path / "text_encoder")
    loaded = UMT5TextEncoder.load(
        tmp_path / "text_encoder", dtype=torch.float32, text_dim=16, max_length=MAX_LEN
    )
    assert loaded.dim == 16 and loaded.dtype == torch.float32
    ref = UMT5TextEncoder(tiny_tokenizer(), tiny_umt5(), max_length=MAX_LEN)
    got, _ = loaded.encode(["the sky"])
    want, _ = ref.encode(["the sky"])
    assert torch.equal(got, want)
    bf16 = UMT5TextEncoder.load(tmp_path / "text_encoder", max_length=MAX_LEN)
    assert bf16.dtype == torch.bfloat16
    with pytest.raises(WeightsError, match="has width 16, the model expects 4096"):
        UMT5TextEncoder.load(tmp_path / "text_encoder", text_dim=4096)
    with pytest.raises(WeightsError):
        UMT5TextEncoder.load(tmp_path / "missing")

"""The umT5-XXL text encoder of the Wan family (spec §3): cleaning, tokenising to 512 tokens, encoding.

`UMT5TextEncoder.encode(prompts)` returns the fixed (B, 512, 4096) context the DiT takes, with every row at
or past a prompt's token count (EOS included) set to exactly 0, as Wan does, plus the valid lengths. The
DiT then attends to all 512 rows without a mask, so those zeros are part of the model's input.

Cleaning (`clean_prompt`) follows Wan's order: ftfy's `fix_text`, HTML-unescape twice, strip, collapse
whitespace runs, strip. ftfy is not a dependency; `fix_text_lite` is our own subset of its default fixes
(NFC, straight quotes, Latin ligatures, full-width characters, terminal escapes and invisible control
characters). It does *not* repair mojibake (UTF-8 decoded as Latin-1/cp1252, ftfy's `fix_encoding`), so
a prompt with mojibake tokenises differently from upstream; clean prompts give identical text.
"""

from __future__ import annotations

import html
import logging
import re
import unicodedata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ca2vdm_cli.errors import InputError, WeightsError
from ca2vdm_cli.media.text import encode_text, load_tokenizer

logger = logging.getLogger(__name__)

TEXT_LEN = 512  # tokens per prompt (EOS included), the DiT's text_len

_TERMINAL_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")  # ʼ ‘ ’ ‚ ‛
_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")  # “ ” „ ‟
# Characters folded by compatibility normalisation (NFKC) one by one: Latin ligatures (ﬀ ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ, Ĳ ĳ)
# and the half-/full-width forms block plus the ideographic space (ＡＢＣ → ABC, ｶ → カ).
_FOLD = re.compile("[\ufb00-\ufb06\u0132\u0133\uff01-\uffef\u3000]")
# Invisible controls: C0 except tab/newlines, DEL, C1, deprecated format characters, BOM, interlinear
# annotation marks, musical-symbol formatting and Unicode tag characters.
_CONTROLS = re.compile(
    "[\x00-\x08\x0b\x0e-\x1f\x7f\x80-\x84\x86-\x9f\u206a-\u206f\ufeff\ufff9-\ufffc"
    "\U0001d173-\U0001d17a\U000e0000-\U000e007f]"
)
_WHITESPACE = re.compile(r"\s+")


def fix_text_lite(text: str) -> str:
    """Our subset of ftfy's default `fix_text` (see the module docstring for what it leaves out)."""
    text = _TERMINAL_ESCAPE.sub("", text)
    text = _SINGLE_QUOTES.sub("'", text)
    text = _DOUBLE_QUOTES.sub('"', text)
    text = _FOLD.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROLS.sub("", text)
    return unicodedata.normalize("NFC", text)


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: fix the text, HTML-unescape twice, strip, collapse whitespace, strip."""
    text = html.unescape(html.unescape(fix_text_lite(text))).strip()
    return _WHITESPACE.sub(" ", text).strip()


class UMT5TextEncoder:
    """A tokenizer and a transformers `UMT5EncoderModel` → the zero-padded context the causal Wan DiT takes.

    The encoder stays where it was put (`to` moves it, e.g. to the CPU after encoding); `encode` returns
    its result on the device and in the dtype asked for, so it can run on the CPU for a GPU DiT."""

    def __init__(self, tokenizer: Any, encoder: Any, max_length: int = TEXT_LEN) -> None:
        self.tokenizer, self.encoder, self.max_length = tokenizer, encoder.eval(), max_length

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        tokenizer_dir: str | Path | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        text_dim: int | None = None,
        max_length: int = TEXT_LEN,
    ) -> UMT5TextEncoder:
        """From a saved `UMT5EncoderModel` directory (and its tokenizer's, default the same), offline.

        `text_dim`: the DiT's text width (4096); a different encoder width is refused here, not mid-run."""
        from transformers import UMT5EncoderModel

        tokenizer = load_tokenizer("files", tokenizer_dir or directory)
        try:
            encoder = UMT5EncoderModel.from_pretrained(str(directory), dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise WeightsError(f"cannot load the umT5 encoder from {directory}: {exc}") from None
        if text_dim is not None and encoder.config.d_model != text_dim:
            raise WeightsError(
                f"the text encoder in {directory} has width {encoder.config.d_model}, the model expects "
                f"{text_dim}; the card's text_encoder source is not umT5-XXL"
            )
        return cls(tokenizer, encoder.to(device), max_length)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    @property
    def dim(self) -> int:
        return int(self.encoder.config.d_model)

    def to(self, device: torch.device | str) -> UMT5TextEncoder:
        """Move the encoder (e.g. to the CPU once the prompts are encoded, to free accelerator memory)."""
        self.encoder.to(device)
        return self

    def _warn_truncation(self, prompts: list[str]) -> None:
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        for i, n in enumerate(lengths):
            if n > self.max_length:
                logger.warning(
                    "prompt %d has %d tokens; only the first %d (EOS included) are used",
                    i,
                    n,
                    self.max_length,
                )

    def encode(
        self,
        prompts: list[str],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Cleaned, tokenised, encoded prompts → context (B, max_length, D) with padding rows exactly 0, and
        the valid token counts (B,) int64 (EOS included), both on `device` (default the encoder's); the
        context in `dtype` (default the encoder's)."""
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise InputError("encode needs a non-empty list of prompt strings")
        cleaned = [clean_prompt(p) for p in prompts]
        self._warn_truncation(cleaned)
        out_device = torch.device(device) if device is not None else self.device
        context, mask = encode_text(self.tokenizer, self.encoder, cleaned, self.max_length, out_device)
        # context (B, N, D) float32, mask (B, N) 1 = token: zero every row past the prompt (Wan's padding)
        context = context.masked_fill(mask.unsqueeze(-1) == 0, 0.0)
        return context.to(dtype or self.dtype), mask.sum(dim=1).long()

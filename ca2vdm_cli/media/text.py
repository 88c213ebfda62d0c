"""Caption encoding: a tokenizer plus a transformers `T5EncoderModel` -> (y, mask) for cross-attention.

The null caption for classifier-free guidance is not produced here: it is the model's own
`y_embedding` (see `CausalSTDiT.null_caption`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ca2vdm_cli.errors import WeightsError


def load_tokenizer(kind: str, directory: str | Path | None = None) -> Any:
    """`byt5`: the file-free byte-level ByT5Tokenizer; `files`: a tokenizer saved in `directory`."""
    if kind == "byt5":
        from transformers import ByT5Tokenizer

        return ByT5Tokenizer()
    from transformers import AutoTokenizer

    if directory is None:
        raise WeightsError(
            "this model's tokenizer is stored with its text encoder, but no directory was given"
        )
    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot load the tokenizer from {directory}: {exc}") from None


@torch.inference_mode()
def encode_text(
    tokenizer: Any,
    text_encoder: Any,
    prompts: list[str],
    max_length: int,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Tokenise (padded/truncated to max_length) and encode. Returns y (B, N, C_text) float32 and the token
    mask (B, N) (1 = valid), both on `device` (default: the encoder's device)."""
    tokens = tokenizer(
        prompts,
        max_length=max_length,
        padding="max_length",
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    enc_device = next(text_encoder.parameters()).device
    ids = tokens["input_ids"].to(enc_device)  # (B, N)
    mask = tokens["attention_mask"].to(enc_device)  # (B, N)
    y = text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, N, C_text)
    out_device = enc_device if device is None else torch.device(device)
    return y.float().to(out_device), mask.to(out_device)

"""Load and save model directories (layout in `card.py`). Loading never touches the network: every
`from_pretrained` call is local-files-only."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ca2vdm_cli.errors import WeightsError
from ca2vdm_cli.models import family
from ca2vdm_cli.store.card import (
    CARD_FILE,
    TEXT_ENCODER_DIR,
    TRANSFORMER_FILE,
    VAE_DIR,
    ModelCard,
    read_card,
    write_card,
)

logger = logging.getLogger(__name__)


@dataclass
class Components:
    """A loaded model directory: the card and the three networks (text parts are None without text)."""

    card: ModelCard
    model: Any  # the family's transformer (CausalSTDiT, CausalWan)
    vae: Any  # diffusers AutoencoderKL
    text_encoder: Any | None  # transformers T5EncoderModel
    tokenizer: Any | None
    path: Path


def check_model_dir(path: str | Path) -> ModelCard:
    """Read the card and check that every file the card needs is present; WeightsError names what is not."""
    path = Path(path)
    if not path.is_dir():
        raise WeightsError(f"model directory {path} does not exist")
    card = read_card(path)
    needed = [TRANSFORMER_FILE, VAE_DIR] + ([TEXT_ENCODER_DIR] if card.model.has_text else [])
    missing = [name for name in needed if not (path / name).exists()]
    if missing:
        raise WeightsError(
            f"model directory {path} is incomplete: missing {', '.join(missing)} (expected {CARD_FILE}, "
            f"{TRANSFORMER_FILE}, {VAE_DIR}/, {TEXT_ENCODER_DIR}/)"
        )
    return card


def load_transformer(
    path: str | Path, card: ModelCard, device: torch.device | str, dtype: torch.dtype
) -> Any:
    """Build the family's transformer on the meta device and load the safetensors weights (official key
    names, strict) in place of the meta tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path) / TRANSFORMER_FILE if Path(path).is_dir() else Path(path)
    try:
        state = load_file(str(file), device=str(device))
    except (OSError, SafetensorError) as exc:
        raise WeightsError(f"cannot read {file}: {exc}; re-download or re-export the model") from None
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with torch.device("meta"):
        model = family(card.family).build_model(card.model)
    model.load_official_state_dict(state)  # meta-built: takes the tensors as they are
    return model.eval().requires_grad_(False)


def load_model_dir(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    vae_dtype: torch.dtype | None = None,
    text_device: torch.device | str | None = None,
    text_dtype: torch.dtype | None = None,
) -> Components:
    """Load a model directory. The VAE and text encoder default to the transformer's device; their dtype
    defaults to `dtype` on CUDA and float32 on the CPU (half-precision convolutions are slow there).
    `card.vae_kind` picks AutoencoderKL or AutoencoderKLWan; `card.text_encoder` T5 or umT5."""
    from diffusers import AutoencoderKL, AutoencoderKLWan

    path = Path(path)
    card = check_model_dir(path)
    device = torch.device(device)
    model = load_transformer(path, card, device, dtype)
    default_aux = dtype if device.type == "cuda" else torch.float32
    vae_class = AutoencoderKLWan if card.vae_kind == "wan" else AutoencoderKL
    try:
        vae = vae_class.from_pretrained(
            str(path / VAE_DIR),
            torch_dtype=vae_dtype or default_aux,
            local_files_only=True,
            low_cpu_mem_usage=False,
        )
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot load the VAE from {path / VAE_DIR}: {exc}") from None
    vae = vae.to(device).eval().requires_grad_(False)
    text_encoder = tokenizer = None
    if card.text_encoder == "umt5":
        from ca2vdm_cli.models.wan.text import UMT5TextEncoder

        text_device = torch.device(text_device) if text_device is not None else device
        text_encoder = UMT5TextEncoder.load(
            path / TEXT_ENCODER_DIR,
            device=text_device,
            dtype=text_dtype or (dtype if text_device.type == "cuda" else torch.float32),
            text_dim=card.model.text_dim,
            max_length=card.text_max_length,
        )
        tokenizer = text_encoder.tokenizer
    elif card.model.has_text:
        from transformers import T5EncoderModel

        from ca2vdm_cli.media.text import load_tokenizer

        text_device = torch.device(text_device) if text_device is not None else device
        try:
            text_encoder = T5EncoderModel.from_pretrained(
                str(path / TEXT_ENCODER_DIR), torch_dtype=text_dtype or default_aux, local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise WeightsError(
                f"cannot load the text encoder from {path / TEXT_ENCODER_DIR}: {exc}"
            ) from None
        text_encoder = text_encoder.to(text_device).eval().requires_grad_(False)
        tokenizer = load_tokenizer(card.tokenizer, path / TEXT_ENCODER_DIR)
    logger.info("loaded model %s from %s (%s, %s)", card.name, path, device, dtype)
    return Components(card, model, vae, text_encoder, tokenizer, path)


def save_model_dir(
    path: str | Path,
    card: ModelCard,
    model: Any,
    vae: Any,
    text_encoder: Any | None = None,
    tokenizer: Any | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a model directory; `dtype` (e.g. float16) shrinks the transformer file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_card(path, card)
    state = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    save_file(
        state, str(path / TRANSFORMER_FILE), metadata={"format": "ca2vdm", "card": json.dumps(card.to_dict())}
    )
    vae.save_pretrained(str(path / VAE_DIR))
    if card.model.has_text:
        if text_encoder is None:
            raise WeightsError(f"model {card.name!r} uses text, but no text encoder was given to save")
        # a UMT5TextEncoder holds its model (a transformers model's own `.encoder` is its stack)
        encoder = text_encoder if isinstance(text_encoder, torch.nn.Module) else text_encoder.encoder
        encoder.save_pretrained(str(path / TEXT_ENCODER_DIR))
        if card.tokenizer == "files":
            if tokenizer is None:
                raise WeightsError(f"model {card.name!r} stores its tokenizer, but none was given to save")
            tokenizer.save_pretrained(str(path / TEXT_ENCODER_DIR))
    return path

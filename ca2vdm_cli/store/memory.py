"""Memory planning before anything is loaded: the family's parameter count from the architecture alone, its
KV-cache size (one formula per family) and a rough activation estimate (`models.spec(family).memory_parts`),
the VAE / text encoder from their files, and a check against the free memory of a CUDA device.

Pure Python except `check_fits`, which asks torch for the device's free memory.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from ca2vdm_cli.errors import Ca2VDMError
from ca2vdm_cli.store.card import TEXT_ENCODER_DIR, VAE_DIR, ModelCard

GIB = 1024**3
DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}


class MemoryPlanError(Ca2VDMError):
    """The estimated memory does not fit on the chosen device."""


def dtype_bytes(dtype: Any) -> int:
    """Bytes per element of "fp32" | "bf16" | "fp16" or a torch.dtype."""
    if isinstance(dtype, str):
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of fp32, bf16, fp16")
        return DTYPE_BYTES[dtype]
    return int(dtype.itemsize)


def safetensors_numel(files: list[Path], prefixes: tuple[str, ...] | None = None) -> int:
    """Elements stored in safetensors files, read from their headers only (nothing is loaded)."""
    total = 0
    for file in files:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for key, info in header.items():
            if key == "__metadata__" or (prefixes and not key.startswith(prefixes)):
                continue
            numel = 1
            for dim in info["shape"]:
                numel *= dim
            total += numel
    return total


def _part_params(card: ModelCard, role: str, model_dir: Path | None) -> int:
    """Parameters of the VAE or text encoder: from local weights when present, else from the card."""
    if model_dir is not None:
        folder = model_dir / (VAE_DIR if role == "vae" else TEXT_ENCODER_DIR)
        files = sorted(folder.glob("*.safetensors"))
        if files:
            # a T5 checkpoint may hold the decoder too; only the encoder is loaded
            prefixes = ("shared.", "encoder.") if role == "text_encoder" else None
            n = safetensors_numel(files, prefixes)
            if n:
                return n
    return int(card.sources.get(role, {}).get("params") or 0)


# ----------------------------------------------------------------------------- the estimate
def estimate_memory(
    card: ModelCard,
    dtype: Any,
    *,
    batch: int = 1,
    text_encoder_on_cpu: bool = False,
    cfg: bool = False,
    free_text_encoder: bool = False,
    model_dir: str | Path | None = None,
    sampling: Any = None,
) -> dict[str, int]:
    """Estimated peak device memory in bytes, by part, for generating with `card`.

    `cfg`: classifier-free guidance doubles the rows of the transformer and its cache. The text encoder is
    not on the device when `text_encoder_on_cpu`; with `free_text_encoder` it is freed after encoding, so the
    peak is the larger of the two phases. `activations` is an order-of-magnitude estimate (one denoising
    forward of a chunk plus one VAE-decoded frame), not a measurement. `sampling` replaces the card's
    defaults (chunk, cache frames) when the user overrides them; `model_dir` gives exact VAE/T5 sizes.
    """
    b = dtype_bytes(dtype)
    m, s = card.model, sampling or card.sampling
    local = Path(model_dir) if model_dir is not None else None
    rows = batch * (2 if cfg else 1)
    parts = card.spec.memory_parts(m, s, rows, card.latent_size, b)
    transformer, kv, act = parts["transformer"], parts["kv_cache"], parts["activations"]
    vae = _part_params(card, "vae", local) * b
    text = 0 if text_encoder_on_cpu or not m.has_text else _part_params(card, "text_encoder", local) * b
    act += card.height * card.width * 128 * 8 * b  # one decoded frame through the VAE's last up block
    generating = transformer + vae + kv + act
    # freed after encoding: the text encoder and the generation phase never overlap
    total = max(text + transformer + vae, generating) if free_text_encoder else generating + text
    return {
        "transformer": transformer,
        "text_encoder": text,
        "vae": vae,
        "kv_cache": kv,
        "activations": act,
        "total": total,
    }


def describe_estimate(estimate: dict[str, int]) -> str:
    """One line: "12.3 GiB (transformer 1.7, text_encoder 9.5, ...)"."""
    parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in estimate.items() if k != "total")
    return f"{estimate['total'] / GIB:.2f} GiB ({parts} GiB)"


def check_fits(
    estimate: dict[str, int],
    device: Any,
    available: int | None = None,
    cache_knob: str = "lower --cache-frames or --chunk",
) -> None:
    """Raise MemoryPlanError when the estimate exceeds the free memory of a CUDA device (no-op elsewhere).

    `available` overrides the free bytes (for tests and for callers that reserve memory themselves);
    `cache_knob` says how this family's cache shrinks.
    """
    if available is None:
        import torch

        device = torch.device(device)
        if device.type != "cuda":
            return
        available, _ = torch.cuda.mem_get_info(device)
    if estimate["total"] <= available:
        return
    knobs = ["keep the text encoder on the CPU"] if estimate.get("text_encoder") else []
    knobs += [
        "use --dtype bf16 instead of fp32",
        cache_knob,
        "generate fewer videos at once",
    ]
    raise MemoryPlanError(
        f"the model needs an estimated {describe_estimate(estimate)} but only "
        f"{available / GIB:.2f} GiB are free on {device}; " + ", or ".join(knobs)
    )

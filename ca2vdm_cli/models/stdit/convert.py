"""Checkpoint conversion to `transformer.safetensors` (official CausalSTDiT2 key names), done once per model.

Pickled checkpoints are read with `torch.load(weights_only=True, mmap=True)` (no code runs, nothing is
copied until needed) and unwrapped from the usual containers (`ema`, `model`, `state_dict`, `module.`).
Open-Sora v1.0 STDiT keys go through one table (`OPENSORA_RULES`); the modules Open-Sora lacks
are created by `NEW_MODULES` so that they are exact no-ops. The result is checked by loading it
strictly into a CausalSTDiT built on the meta device (`assign=True`, so nothing is allocated twice).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ca2vdm_cli.errors import WeightsError
from ca2vdm_cli.fileio import atomic_path
from ca2vdm_cli.models.stdit.config import ModelConfig
from ca2vdm_cli.models.stdit.model import CausalSTDiT

logger = logging.getLogger(__name__)

# Containers a state dict is commonly saved under, most useful for inference first (EMA weights win).
WRAPPER_KEYS = (
    "ema",
    "ema_state_dict",
    "model_ema",
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile

# Open-Sora v1.0 STDiT key -> action. "copy": same name and shape; "drop": regenerated from the config;
# "text": copied when the target has text conditioning, else dropped; "caption_table": the null caption,
# cut or extended (last row repeated) to the target's model_max_length.
OPENSORA_RULES: tuple[tuple[str, str], ...] = (
    (r"pos_embed", "drop"),  # 2-D sin-cos of Open-Sora's grid; recomputed for the target resolution
    (r"pos_embed_temporal", "drop"),  # 16 rows; the target's M-row table has the same first 16 rows
    (r"x_embedder\.proj\.(weight|bias)", "copy"),
    (r"t_embedder\.mlp\.[02]\.(weight|bias)", "copy"),
    (r"t_block\.1\.(weight|bias)", "copy"),
    (r"final_layer\.(scale_shift_table|linear\.weight|linear\.bias)", "copy"),
    (r"blocks\.\d+\.scale_shift_table", "copy"),
    (r"blocks\.\d+\.(attn|attn_temp)\.(qkv|proj)\.(weight|bias)", "copy"),
    (r"blocks\.\d+\.mlp\.fc[12]\.(weight|bias)", "copy"),
    (r"blocks\.\d+\.cross_attn\.(q_linear|kv_linear|proj)\.(weight|bias)", "text"),
    (r"y_embedder\.y_proj\.fc[12]\.(weight|bias)", "text"),
    (r"y_embedder\.y_embedding", "caption_table"),
)

# CausalSTDiT keys Open-Sora does not have -> initialiser. The prefix-enhanced branch adds proj(...) = 0
# and the mask-channel merge is [I | 0], so the converted model computes exactly what Open-Sora computes.
NEW_MODULES: tuple[tuple[str, str], ...] = (
    (r"blocks\.\d+\.attn_cf\.qkv\.weight", "xavier"),
    (r"blocks\.\d+\.attn_cf\.(qkv\.bias|proj\.weight|proj\.bias)", "zeros"),
    (r"blocks\.\d+\.attn_temp_pre_merge\.weight", "identity_merge"),
    (r"blocks\.\d+\.attn_temp_pre_merge\.bias", "zeros"),
    (r"bov_token", "bov"),  # never used in a forward pass
)


# ----------------------------------------------------------------------------- reading
def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a .safetensors file, or of a .pt/.pth/.bin/.ckpt pickle unwrapped to its state dict."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"checkpoint {path} does not exist; pass --weights with a .pt, .pth or .safetensors file"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as exc:  # noqa: BLE001  (a corrupt header raises several types)
            raise WeightsError(f"{path} is not a readable safetensors file: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise WeightsError(f"{path} is not a readable PyTorch checkpoint: {exc}") from None
        # legacy (pre-zipfile) format cannot be memory-mapped
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (UnpicklingError names the refused global)
        first = str(exc).strip().splitlines()[0]
        raise WeightsError(
            f"{path} cannot be loaded safely ({first}); ca2vdm only reads tensors (weights_only=True). "
            "Re-save just the state dict with torch.save(state_dict, path) in a trusted environment"
        ) from None
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj: object, where: str) -> dict[str, Tensor]:
    """Find the state dict inside common checkpoint containers and strip DDP/compile prefixes."""
    for _ in range(4):  # containers nest at most a few levels (e.g. {"model": {"module": ...}})
        if not isinstance(obj, dict):
            raise WeightsError(f"{where} holds a {type(obj).__name__}, not a state dict")
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            break
        inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
            if not tensors:
                keys = ", ".join(map(str, list(obj)[:10]))
                raise WeightsError(
                    f"no state dict found in {where}: top-level keys are [{keys}]; "
                    f"expected tensors or one of {', '.join(WRAPPER_KEYS)}"
                )
            obj = tensors
            break
        logger.info("%s: using the state dict under %r", where, inner)
        obj = obj[inner]
    sd: dict[str, Tensor] = dict(obj)  # type: ignore[arg-type]
    for prefix in WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


# ----------------------------------------------------------------------------- Open-Sora mapping
def remap_opensora(
    sd: dict[str, Tensor], target: dict[str, torch.Size], config: ModelConfig, seed: int = 0
) -> dict[str, Tensor]:
    """Map an Open-Sora v1.0 STDiT state dict onto CausalSTDiT keys `target` (name -> shape)."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in sd.items():
        action = next((a for pattern, a in OPENSORA_RULES if re.fullmatch(pattern, key)), None)
        if action is None:
            unknown.append(key)
        elif action == "copy" or (action == "text" and config.has_text):
            out[key] = value
        elif action == "caption_table" and config.has_text:
            out[key] = _resize_rows(value, config.model_max_length)
    if unknown:
        raise WeightsError(
            f"{len(unknown)} keys are not Open-Sora v1.0 STDiT keys: {', '.join(sorted(unknown)[:10])} "
            "(likely cause: this is not an Open-Sora v1.0 checkpoint; for an official Ca2-VDM checkpoint use "
            "a ca2vdm-official-* preset)"
        )
    ref = out.get("x_embedder.proj.weight")
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None else torch.float32
    generator = torch.Generator().manual_seed(seed)
    for key, shape in target.items():
        if key in out or key in ("pos_embed", "pos_embed_temporal"):
            continue
        init = next((i for pattern, i in NEW_MODULES if re.fullmatch(pattern, key)), None)
        if init is not None and device.type == "meta":  # shape-only conversion (tests, planning)
            out[key] = torch.empty(tuple(shape), device=device, dtype=dtype)
        elif init is not None:
            out[key] = _INITIALISERS[init](tuple(shape), generator).to(device=device, dtype=dtype)
    return out


def _resize_rows(table: Tensor, rows: int) -> Tensor:
    """Cut a (N, C) table to `rows`, or extend it by repeating its last row."""
    if table.shape[0] >= rows:
        return table[:rows]
    return torch.cat([table, table[-1:].expand(rows - table.shape[0], -1)])


def _xavier(shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    bound = (6.0 / (shape[0] + shape[1])) ** 0.5
    return (torch.rand(shape, generator=g) * 2 - 1) * bound


def _identity_merge(shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    out, inp = shape  # (C, C + 1): identity on the features, zero on the mask scalar
    return torch.cat([torch.eye(out), torch.zeros(out, inp - out)], dim=1)


_INITIALISERS: dict[str, Callable[[tuple[int, ...], torch.Generator], Tensor]] = {
    "xavier": _xavier,
    "zeros": lambda shape, g: torch.zeros(shape),
    "identity_merge": _identity_merge,
    "bov": lambda shape, g: torch.randn(shape, generator=g) / 2,
}


# ----------------------------------------------------------------------------- convert and check
def build_meta(config: ModelConfig) -> CausalSTDiT:
    with torch.device("meta"):
        return CausalSTDiT(config)


def load_into_meta(sd: dict[str, Tensor], config: ModelConfig, what: str) -> CausalSTDiT:
    """Strictly load `sd` into a meta-built model (assign=True); WeightsError says what likely went wrong."""
    model = build_meta(config)
    try:
        model.load_official_state_dict(sd, assign=True)
    except WeightsError as exc:
        raise WeightsError(f"{what}: {exc}{_suggestion(sd, config)}") from None
    return model


def _suggestion(sd: dict[str, Tensor], config: ModelConfig) -> str:
    keys = set(sd)
    if "pos_embed" in keys and "bov_token" not in keys and not any(".attn_cf." in k for k in keys):
        return "; it looks like an Open-Sora v1.0 STDiT checkpoint: use the opensora-v1-256 or -512 preset"
    text = any(k.startswith("y_embedder.") for k in keys)
    if text and not config.has_text:
        return "; the checkpoint is text-conditioned: try ca2vdm-official-text-image"
    if not text and config.has_text:
        return "; the checkpoint has no text conditioning: try ca2vdm-official-sky"
    return ""


def convert_checkpoint(src: str | Path, config: ModelConfig, fmt: str, out: str | Path) -> Path:
    """Read `src` (format "opensora-v1" or "ca2vdm-official"), check it against `config` and write `out`."""
    from safetensors.torch import save_file

    src, out = Path(src), Path(out)
    sd = read_checkpoint(src)
    if fmt == "opensora-v1":
        shapes = {k: v.shape for k, v in build_meta(config).state_dict().items()}
        sd = remap_opensora(sd, shapes, config)
    elif fmt != "ca2vdm-official":
        raise ValueError(f"cannot convert format {fmt!r}")
    model = load_into_meta(sd, config, src.name)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "ca2vdm_config": json.dumps(config.to_dict()), "converted_from": fmt}
    logger.info("writing %s", out)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return out

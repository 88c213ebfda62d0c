"""Conversion of the released causal Wan generators to one safetensors file, done once per model directory.

The Self-Forcing, CausVid, Causal-Forcing and LongLive files are torch pickles of a training wrapper
(spec §7.1, §7.3). Conversion:

1. `load_pickle`: `torch.load(weights_only=True, mmap=True)`, so no pickled code ever runs and nothing is
   copied until it is read; what `weights_only` refuses is refused with the global it named.
2. `select_sub_dict`: the card's sub-dict (`generator_ema`, `generator`, ...), never a silent fallback; a
   wrong or missing name lists the top-level keys found.
3. `strip_wrappers`: drop a leading `model.` and every torch wrapper segment (`_fsdp_wrapped_module.`,
   `_checkpoint_wrapped_module.`, `_orig_mod.`); any other prefix is refused.
4. `merge_lora` (LongLive): W ← W + (α/r)·B·A in float32, then cast (§7.4). The key layout is PEFT's
   (`base_model.model.blocks.{i}.<module>.lora_A[.default].weight`); the spec marks it unverified, so the
   parser is strict: exactly one A/B pair per block Linear, or an error naming the first bad keys.
5. `check_keys`: names and shapes strictly against `CausalWan(cfg)` built on the meta device (825 tensors
   for Wan2.1-1.3B), one error naming the first bad keys (models/keys.py) and the likely fix.
6. Write `out` (bf16 by default) through `atomic_path`: a failed conversion leaves no file, and an existing
   file is only replaced by a complete one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ca2vdm_cli.errors import WeightsError
from ca2vdm_cli.fileio import atomic_path
from ca2vdm_cli.models.keys import describe_key_mismatch, key_mismatch
from ca2vdm_cli.models.wan.config import WanConfig
from ca2vdm_cli.models.wan.model import CausalWan

logger = logging.getLogger(__name__)

GENERATOR_KEYS = ("generator_ema", "generator")  # sub-dicts that hold a usable generator, EMA first
LORA_SUB_DICT = "generator_lora"  # LongLive's lora.pt (it may also hold `critic_lora`, ignored)
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")
LORA_PREFIX = "base_model.model."  # PEFT's PeftModel → LoraModel → wrapped module
LORA_ADAPTER = "default"  # PEFT's adapter name, present in an in-memory state dict
# The LongLive LoRA targets every Linear inside a block (§7.4): 10 per block, 300 for 30 blocks.
LORA_TARGET = re.compile(r"blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.[qkvo]|ffn\.[02])")
_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<ab>[AB])\.weight")


@dataclass
class ConversionReport:
    """What a conversion found and wrote, for the model directory's record and the first-download report."""

    out: Path
    sub_dict: str | None
    top_level_keys: list[str]
    tensors: int
    source_dtypes: list[str]
    dtype: str
    lora_modules: int = 0
    lora_rank: int | None = None
    lora_scale: float | None = None
    ignored: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- reading a pickle safely
def load_pickle(path: str | Path) -> object:
    """The object in a torch pickle, loaded with weights_only=True (no code runs) and mmap where possible."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist; download it again or pass the right path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001  (UnpicklingError, RuntimeError, EOFError, ...)
        if "mmap can only be used" not in str(exc):
            raise _unreadable(path, exc) from None
    # A legacy (pre-zip) pickle cannot be memory-mapped; it is still read with weights_only=True.
    logger.warning("%s is a legacy pickle: reading it without mmap (it is held in memory once)", path.name)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (UnpicklingError, RuntimeError, EOFError, ...)
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: BaseException) -> WeightsError:
    text = str(exc)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)|unsupported GLOBAL (\S+)", text)
    if isinstance(exc, pickle.UnpicklingError) and refused:
        name = refused.group(1) or refused.group(2)
        return WeightsError(
            f"{path} was refused: loading it would run code ({name}); ca2vdm reads only tensors "
            "(weights_only=True). Use the official file, or re-save its state dict in a trusted environment"
        )
    if "central directory" in text or isinstance(exc, EOFError):
        return WeightsError(
            f"{path} is truncated or corrupt ({text.splitlines()[0][:120]}); delete it and download it again"
        )
    first = text.strip().splitlines()[0][:160] if text.strip() else type(exc).__name__
    return WeightsError(f"{path} is not a readable PyTorch checkpoint ({first}); download it again")


def _describe(obj: dict) -> str:
    """`key (N tensors)`, `key (int)` ... for the first top-level keys of a pickle."""
    items = []
    for key, value in list(obj.items())[:12]:
        if isinstance(value, dict):
            n = sum(isinstance(v, Tensor) for v in value.values())
            items.append(f"{key} ({n} tensors)")
        else:
            items.append(f"{key} ({type(value).__name__})")
    more = f", … {len(obj) - 12} more" if len(obj) > 12 else ""
    return ", ".join(items) + more


def select_sub_dict(obj: object, key: str | None, where: str) -> tuple[str | None, dict[str, Tensor]]:
    """The state dict under top-level `key`; with None, a plain state dict or the only generator present."""
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{where} holds a {type(obj).__name__}, not a training wrapper or state dict")
    flat = all(isinstance(v, Tensor) for v in obj.values())
    if flat:
        if key is not None:
            raise WeightsError(
                f"{where} is a plain state dict ({len(obj)} tensors), not a training wrapper with "
                f"{key!r}; set the card's sub-dict to null"
            )
        return None, dict(obj)
    if key is None:
        present = [k for k in GENERATOR_KEYS if isinstance(obj.get(k), dict)]
        if len(present) != 1:
            raise WeightsError(
                f"{where} holds {'both ' + ' and '.join(present) if present else 'no generator'}; top-level "
                f"keys: {_describe(obj)}; name the sub-dict to use in the card"
            )
        key = present[0]
        logger.info("%s: using its only generator sub-dict %r", where, key)
    value = obj.get(key)
    if not isinstance(value, dict):
        raise WeightsError(
            f"{where} has no sub-dict {key!r}; top-level keys: {_describe(obj)}; set the card's sub-dict "
            f"to the generator one ({' or '.join(GENERATOR_KEYS)})"
        )
    not_tensors = [k for k, v in value.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise WeightsError(f"{where}[{key!r}] is not a state dict: {not_tensors[:3]} are not tensors")
    return key, dict(value)


# ----------------------------------------------------------------------------- key names
def _drop_wrappers(key: str) -> str:
    return ".".join(p for p in key.split(".") if p not in WRAPPER_SEGMENTS)


def strip_wrappers(sd: dict[str, Tensor], roots: set[str], where: str) -> dict[str, Tensor]:
    """Keys without a leading `model.` and torch wrapper segments; every key must then start with one of
    `roots` (the model's top-level modules), else an error lists the offending keys."""
    out: dict[str, Tensor] = {}
    bad = []
    for key, value in sd.items():
        name = _drop_wrappers(key).removeprefix("model.")
        if name.split(".", 1)[0] not in roots or name in out:
            bad.append(key)
        out[name] = value
    if bad:
        raise WeightsError(
            f"{len(bad)} keys of {where} have an unknown prefix or collide after stripping `model.` and "
            f"wrapper segments: {', '.join(sorted(bad)[:5])}; expected keys like "
            f"`model.blocks.0.ffn.0.weight` (likely cause: {_layout_hint(bad)})"
        )
    return out


def _layout_hint(keys: list[str]) -> str:
    """What a set of foreign keys most likely is."""
    if any(".lora_" in k for k in keys):
        return "this is a LoRA file; pass it as the LoRA beside its base checkpoint"
    if any(
        k.startswith(("condition_embedder.", "scale_shift_table", "proj_out")) or ".attn1." in k for k in keys
    ):
        return "a diffusers WanTransformer3DModel layout; use the original (training-wrapper) checkpoint"
    return "not a causal Wan2.1 generator, or a wrapper this converter does not know"


def expected_shapes(cfg: WanConfig) -> dict[str, torch.Size]:
    """Name → shape of every tensor of CausalWan(cfg), built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = CausalWan(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def _block_count_hint(cfg: WanConfig, missing: list[str], unexpected: list[str]) -> bool:
    """Whether the mismatch looks like a checkpoint with another number of blocks."""
    extra = [m for k in unexpected if (m := re.match(r"blocks\.(\d+)\.", k)) and int(m[1]) >= cfg.num_layers]
    last = cfg.num_layers - 1
    fewer = f"blocks.{last}.modulation" in missing and "blocks.0.modulation" not in missing
    return bool(extra) or fewer


def _hint(cfg: WanConfig, missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    if any(".lora_" in k for k in unexpected):
        return _layout_hint(unexpected)
    if _block_count_hint(cfg, missing, unexpected):
        return f"another number of blocks than the card's WanConfig ({cfg.num_layers}); check the card"
    if wrong:
        return "a different model size (e.g. Wan2.1-14B) or the wrong WanConfig in the card"
    if missing and not unexpected:
        return "an incomplete checkpoint (a failed save, or the wrong sub-dict); download it again"
    return "not a causal Wan2.1 generator for this WanConfig"


def check_keys(sd: dict[str, Tensor], cfg: WanConfig, where: str) -> None:
    """Strict name and shape check against CausalWan(cfg); one WeightsError naming the first bad keys."""
    expected = expected_shapes(cfg)
    missing, unexpected, wrong = key_mismatch(sd, expected)
    if missing or unexpected or wrong:
        message = describe_key_mismatch(
            missing, unexpected, wrong, sd, expected, functools.partial(_hint, cfg)
        )
        raise WeightsError(f"{where}: {message}")


# ----------------------------------------------------------------------------- LoRA
def lora_pairs(
    lora: dict[str, Tensor], cfg: WanConfig, where: str
) -> tuple[dict[str, tuple[Tensor, Tensor]], int]:
    """PEFT LoRA tensors → {module: (A (r, in), B (out, r))} for exactly the block Linears, and the rank r."""
    found: dict[str, dict[str, Tensor]] = {}
    bad = []
    for key, value in lora.items():
        name = _drop_wrappers(key).removeprefix(LORA_PREFIX).replace(f".{LORA_ADAPTER}.", ".")
        m = _LORA_KEY.fullmatch(name)
        if m is None or not LORA_TARGET.fullmatch(m["module"]) or m["ab"] in found.get(m["module"], {}):
            bad.append(key)
            continue
        found.setdefault(m["module"], {})[m["ab"]] = value
    shapes = expected_shapes(cfg)
    targets = sorted(
        k.removesuffix(".weight") for k in shapes if LORA_TARGET.fullmatch(k.removesuffix(".weight"))
    )
    missing = [f"{t}.lora_{ab}.weight" for t in targets for ab in "AB" if ab not in found.get(t, {})]
    unknown = sorted(set(found) - set(targets))
    if bad or missing or unknown:
        parts = []
        if bad:
            parts.append(
                f"{len(bad)} keys not of the form `{LORA_PREFIX}blocks.N.<linear>.lora_A.weight`: "
                + ", ".join(sorted(bad)[:5])
            )
        if missing:
            parts.append(f"{len(missing)} missing: {', '.join(missing[:5])}")
        if unknown:
            parts.append(f"{len(unknown)} modules the model does not have: {', '.join(unknown[:5])}")
        raise WeightsError(
            f"LoRA {where} does not fit: {'; '.join(parts)} (expected one A/B pair for each of the "
            f"{len(targets)} block Linears; is this LongLive's lora.pt for this model?)"
        )
    ranks = {found[t]["A"].shape[0] for t in targets}
    wrong = []
    for t in targets:
        (out_f, in_f), (a, b) = shapes[t + ".weight"], (found[t]["A"], found[t]["B"])
        if a.shape[1] != in_f or b.shape != (out_f, a.shape[0]):
            wrong.append(f"{t} A {tuple(a.shape)} B {tuple(b.shape)} for W {(out_f, in_f)}")
    if wrong or len(ranks) != 1:
        detail = ", ".join(wrong[:3]) if wrong else f"ranks {sorted(ranks)}"
        raise WeightsError(f"LoRA {where} has mis-shaped factors: {detail}; it belongs to another model")
    return {t: (found[t]["A"], found[t]["B"]) for t in targets}, ranks.pop()


def merge_lora(
    sd: dict[str, Tensor],
    pairs: dict[str, tuple[Tensor, Tensor]],
    scale: float,
    dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """W ← W + scale·B·A for each module in float32, the result cast to `dtype` (default W's); biases
    unchanged. Casting per module keeps the peak memory at one module in float32, not the whole model."""
    out = dict(sd)
    for module, (a, b) in pairs.items():
        w = sd[module + ".weight"]  # (out, in)
        merged = w.float() + scale * (b.float() @ a.float())  # (out, r) @ (r, in)
        out[module + ".weight"] = merged.to(dtype or w.dtype)
    return out


# ----------------------------------------------------------------------------- convert
def read_generator(
    src: str | Path, cfg: WanConfig, sub_dict: str | None
) -> tuple[dict[str, Tensor], str | None, list[str]]:
    """The stripped generator state dict of a wrapper pickle (or .safetensors), the sub-dict used and the
    top-level keys found. Keys are not checked here."""
    src = Path(src)
    roots = {k.split(".", 1)[0] for k in expected_shapes(cfg)}
    if src.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: object = load_file(src)
        except Exception as exc:  # noqa: BLE001  (a corrupt header raises several types)
            raise WeightsError(
                f"{src} is not a readable safetensors file ({exc}); download it again"
            ) from None
    else:
        obj = load_pickle(src)
    top = [str(k) for k in obj] if isinstance(obj, dict) else []
    key, sd = select_sub_dict(obj, sub_dict, src.name)
    return strip_wrappers(sd, roots, src.name), key, top


def convert_checkpoint(
    src: str | Path,
    cfg: WanConfig,
    out: str | Path,
    *,
    sub_dict: str | None = None,
    lora: str | Path | None = None,
    lora_sub_dict: str | None = LORA_SUB_DICT,
    lora_alpha: float | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> ConversionReport:
    """Convert a released generator (plus LongLive's LoRA) to `out` in `dtype`, checked strictly.

    Args:
        sub_dict: the card's top-level key (`generator_ema`, `generator`); None accepts a plain state dict
            or a wrapper holding exactly one of them (reported in the result, never a guess between two).
        lora: a PEFT LoRA pickle to merge; `lora_alpha` None means α = r (scale 1, LongLive's 256/256).
    """
    src, out = Path(src), Path(out)
    sd, key, top = read_generator(src, cfg, sub_dict)
    source_dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in sd.values()})
    check_keys(sd, cfg, src.name)
    report = ConversionReport(out, key, top, len(sd), source_dtypes, str(dtype).removeprefix("torch."))
    if lora is not None:
        lora = Path(lora)
        lora_obj = load_pickle(lora)
        if isinstance(lora_obj, dict):
            report.ignored = [str(k) for k in lora_obj if k != lora_sub_dict]
        _, lora_sd = select_sub_dict(lora_obj, lora_sub_dict, lora.name)
        pairs, rank = lora_pairs(lora_sd, cfg, lora.name)
        scale = (rank if lora_alpha is None else lora_alpha) / rank
        sd = merge_lora(sd, pairs, scale, dtype)
        report.lora_modules, report.lora_rank, report.lora_scale = len(pairs), rank, scale
        logger.info("merged %d LoRA modules (rank %d, scale %g) from %s", len(pairs), rank, scale, lora.name)
    tensors = {k: v.to(dtype).contiguous() for k, v in sd.items()}  # (copies; the mmap'd source stays)
    metadata = {
        "format": "pt",
        "ca2vdm_config": json.dumps(dataclasses.asdict(cfg)),
        "converted_from": src.name,
        "sub_dict": key or "",
        "lora": lora.name if lora is not None else "",
    }
    from safetensors.torch import save_file

    logger.info("writing %s (%d tensors, %s)", out, len(tensors), report.dtype)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return report


def load_converted(path: str | Path, cfg: WanConfig, device: torch.device | str = "cpu") -> CausalWan:
    """A CausalWan built on the meta device and given the tensors of a converted file (mmap'd on the CPU,
    or read straight onto `device`), in the file's dtype."""
    from safetensors.torch import load_file

    try:
        sd = load_file(str(path), device=str(device))
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"{path} is not a readable safetensors file ({exc}); convert it again") from None
    check_keys(sd, cfg, Path(path).name)
    with torch.device("meta"):
        model = CausalWan(cfg)
    model.load_official_state_dict(sd)
    return model.eval()

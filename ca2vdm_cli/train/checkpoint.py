"""Resumable training checkpoints in one safetensors file (no pickles).

Tensors: `module.<key>` (the trained module's state dict), `ema.<key>` (EMA copies of the trainable
parameters) and `optim.<i>.<key>` (AdamW state of parameter i). Metadata: the format tag, the step, the
optimizer's param groups and the run's settings as JSON. Files are written to a temporary name and renamed,
so a crash never leaves a half-written `step-XXXXXXX.safetensors`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ca2vdm_cli.errors import WeightsError
from ca2vdm_cli.fileio import atomic_path

FORMAT = "ca2vdm-train-checkpoint/1"
_NAME = re.compile(r"step-(\d{7})\.safetensors")


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:07d}.safetensors"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.fullmatch(p.name))]
    return sorted(found)


def _own(t: Tensor) -> Tensor:
    """A contiguous CPU copy that shares memory with nothing (safetensors rejects tied tensors)."""
    return t.detach().to("cpu", copy=True).contiguous()


def save_checkpoint(
    path: Path,
    *,
    step: int,
    module_state: dict[str, Tensor],
    ema_state: dict[str, Tensor],
    optimizer_state: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    tensors = {f"module.{k}": _own(v) for k, v in module_state.items()}
    tensors.update({f"ema.{k}": _own(v) for k, v in ema_state.items()})
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            value = value if isinstance(value, Tensor) else torch.tensor(value)
            tensors[f"optim.{index}.{key}"] = _own(value)
    metadata = {
        "format": FORMAT,
        "step": str(step),
        "param_groups": json.dumps(optimizer_state["param_groups"]),
        "extra": json.dumps(extra or {}),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """-> {step, module, ema, optimizer (a torch optimizer state dict), extra}; WeightsError if unusable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise WeightsError(
                    f"{path} is not a ca2vdm training checkpoint (format {metadata.get('format')!r})"
                )
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no items())
    except WeightsError:
        raise
    except Exception as exc:  # safetensors raises its own error types for truncated or corrupt files
        raise WeightsError(
            f"cannot read checkpoint {path}: {exc}; delete it to resume from an older one"
        ) from None
    module = {k[len("module.") :]: v for k, v in tensors.items() if k.startswith("module.")}
    ema = {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")}
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    groups = json.loads(metadata["param_groups"])
    for group in groups:  # JSON turned tuples into lists; Adam keeps betas as a tuple
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    return {
        "step": int(metadata["step"]),
        "module": module,
        "ema": ema,
        "optimizer": {"state": state, "param_groups": groups},
        "extra": json.loads(metadata.get("extra", "{}")),
    }


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for _, path in list_checkpoints(directory)[: max(0, len(list_checkpoints(directory)) - keep)]:
        path.unlink(missing_ok=True)

"""`ca2vdm info`: the environment report users paste into bug reports — versions, torch/CUDA/GPUs, video
encoders, cache directories, relevant environment variables and where the default model comes from.
Never prints secrets: HF_TOKEN is reported as set or unset."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from typing import Annotated, Any

import typer

from ca2vdm_cli.cli import app

PACKAGES = (
    "torch",
    "diffusers",
    "transformers",
    "huggingface_hub",
    "safetensors",
    "av",
    "numpy",
    "pillow",
    "typer",
    "rich",
    "platformdirs",
)
ENV_VARS = (
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    "CA2VDM_CACHE_DIR",
    "CUDA_VISIBLE_DEVICES",
)


@app.command()
def info(
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Report versions, torch/CUDA/GPU, codecs and cache directories (for bug reports)."""
    report = collect_info()
    if json_output:
        print(json.dumps(report, indent=None), flush=True)
        return
    for key, value in report.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for sub, v in value.items():
                print(f"  {sub}: {_text(v)}")
        elif isinstance(value, list):
            print(f"{key}:" + ("" if value else " none"))
            for item in value:
                print(f"  - {_text(item)}")
        else:
            print(f"{key}: {_text(value)}")


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_text(v)}" for k, v in value.items())
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else str(value)


def collect_info() -> dict[str, Any]:
    import torch

    from ca2vdm_cli import __version__

    return {
        "ca2vdm": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "torch": {
            "version": torch.__version__,
            "cuda_build": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
            "cpu_threads": torch.get_num_threads(),
        },
        "gpus": _gpus(torch),
        "ffmpeg": _ffmpeg(),
        "encoders": _encoders(),
        "cache_dirs": _cache_dirs(),
        "environment": {name: os.environ.get(name) for name in ENV_VARS}
        | {"HF_TOKEN": "set" if os.environ.get("HF_TOKEN") else "unset"},
        "default_model": _default_model(),
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _gpus(torch: Any) -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append(
            {
                "index": i,
                "name": p.name,
                "memory_gib": round(p.total_memory / 2**30, 1),
                "compute_capability": f"{p.major}.{p.minor}",
            }
        )
    return gpus


def _ffmpeg() -> dict[str, str]:
    import av

    return {lib: ".".join(str(x) for x in version) for lib, version in av.library_versions.items()}


def _encoders() -> dict[str, str]:
    import av

    from ca2vdm_cli.media.video import CODECS

    found = {}
    for name, spec in CODECS.items():
        try:
            av.codec.Codec(spec.encoder, "w")
            found[name] = f"{spec.encoder} available"
        except Exception:
            found[name] = f"{spec.encoder} MISSING"
    return found


def _cache_dirs() -> dict[str, str]:
    import platformdirs
    from huggingface_hub import constants

    return {
        "huggingface_hub": constants.HF_HUB_CACHE,
        "ca2vdm": str(platformdirs.user_cache_path("ca2vdm")),
    }


def _default_model() -> str:
    from ca2vdm_cli.cli.settings import resolve_model_dir
    from ca2vdm_cli.errors import Ca2VDMError
    from ca2vdm_cli.store.presets import DEFAULT_MODEL

    try:
        return f"{DEFAULT_MODEL}: {resolve_model_dir(DEFAULT_MODEL, consent=lambda _: False)}"
    except Ca2VDMError as exc:
        return f"{DEFAULT_MODEL}: not available ({exc})"

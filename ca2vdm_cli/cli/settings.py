"""Where a command's settings come from: flags > `--config file.toml` > the model card's defaults; and which
model directory `--model` names. Pure Python (stdlib `tomllib`), so it is cheap to import.

The TOML file holds flat keys named like the flags (`cfg_scale` or `cfg-scale`), e.g.

    prompt = "a red circle moving right"
    frames = 240
    steps = 50
    image = "first.png"          # or a list of paths
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ca2vdm_cli.errors import ConfigError

# key -> (accepted Python types, description for errors)
GENERATE_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "prompt": ((str, list), "a string, or a list of strings with `at`"),
    "image": ((str, list), "a path or a list of paths"),
    "frames": ((int,), "an integer"),
    "out": ((str,), "a path"),
    "model": ((str,), "a preset name or a model directory"),
    "text_encoder": ((str,), "device, cpu or free"),
    "seed": ((int,), "an integer"),
    "steps": ((int,), "an integer"),
    "sampler": ((str,), "iddpm or ddim"),
    "cfg_scale": ((int, float), "a number"),
    "chunk": ((int,), "an integer"),
    "cache_frames": ((int,), "an integer"),
    "window": ((int,), "an integer (latent frames; -1 = global)"),
    "sink_frames": ((int,), "an integer"),
    "positions": ((str,), "absolute or relative"),
    "kv_compress": ((str,), "none or tempcache"),
    "tempcache_threshold": ((int, float), "a number in (0, 1]"),
    "tempcache_budget": ((int,), "an integer (frames)"),
    "tempcache_max_count": ((int,), "an integer"),
    "sparse_cross": ((str,), "none, pad or topk"),
    "cross_topk": ((int,), "an integer"),
    "sparse_self": ((str,), "none, lsh or topk-blocks"),
    "topk_density": ((int, float), "a number in (0, 1]"),
    "lsh_bits": ((int,), "an integer"),
    "prefix_perturb_t": ((int,), "an integer"),
    "device": ((str,), "auto, cpu, cuda or cuda:<index>"),
    "dtype": ((str,), "auto, fp32, bf16 or fp16"),
    "fps": ((int, float), "a number"),
    "crf": ((int,), "an integer"),
    "codec": ((str,), "h264, av1 or mpeg4"),
    "frames_dir": ((str,), "a directory path"),
    "compile": ((bool,), "true or false"),
    "cuda_graphs": ((bool,), "true or false"),
    "at": ((list,), "a list of frame numbers, one per prompt after the first"),
}

# `ca2vdm batch --config`: the same keys minus what each item gives (prompt, out) or batch cannot do
BATCH_KEYS = {k: v for k, v in GENERATE_KEYS.items() if k not in ("prompt", "at", "out", "frames_dir")}
BATCH_KEYS["image"] = ((str,), "a path")


def load_config_file(path: str | Path, keys: dict[str, tuple[tuple[type, ...], str]] = GENERATE_KEYS) -> dict:
    """Read a flat TOML file of settings. ConfigError: missing/invalid file, unknown keys, wrong types."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    unknown = []
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        if key not in keys:
            unknown.append(raw_key)
            continue
        types, description = keys[key]
        bad_list = isinstance(value, list) and not all(isinstance(v, str) for v in value)
        if isinstance(value, bool) or not isinstance(value, types) or bad_list:
            raise ConfigError(f"--config {path}: {raw_key} = {value!r} must be {description}")
        values[key] = value
    if unknown:
        raise ConfigError(
            f"--config {path}: unknown keys {', '.join(sorted(unknown))}; valid keys: {', '.join(keys)}"
        )
    return values


def merge_settings(flags: dict[str, Any], file_values: dict[str, Any]) -> dict[str, Any]:
    """Flags win over the file; a key set in neither stays None (the model card's default then applies)."""
    merged = {key: value for key, value in file_values.items()}
    merged.update({key: value for key, value in flags.items() if value is not None})
    return merged


def as_paths(value: str | list[str] | list[Path] | None) -> tuple[Path, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, Path)):
        return (Path(value),)
    return tuple(Path(v) for v in value)


# ----------------------------------------------------------------------------- models
def consent_prompt(yes: bool) -> Callable[[str], bool]:
    """The download-consent callback: yes with `--yes`; else ask on a terminal; else refuse."""

    def consent(question: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            return False
        import typer

        return typer.confirm(question, default=False, err=True)

    return consent


def resolve_model_dir(name_or_path: str, consent: Callable[[str], bool] | None = None) -> Path:
    """A local model directory for `--model` (a directory, `sprites`, a preset or a card file); presets are
    downloaded only with consent."""
    from ca2vdm_cli.store.weights import resolve_model

    return Path(resolve_model(name_or_path, consent=consent))

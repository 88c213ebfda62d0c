"""One folder per model family. Each has two faces:

- `spec(name)`: pure Python, what a model card needs before anything loads — `CONFIG` and `SAMPLING`
  (the card's `model` and `sampling` tables), `ENGINES`, `WHOLE_BLOCKS` (AR steps are whole trained
  blocks), `model_rows`, `check_card`, `check_frames`, `cache_bytes`, `memory_parts`;
- `family(name)`: the engine-facing module (imports torch) — the spec's names plus `build_model`,
  `make_denoiser` and `sample_video` (its latent-space generation over `engine.loop`).

Adding a family is a folder and a branch in each function below, never an edit of the loop or the
pipeline.
"""

from __future__ import annotations

from types import ModuleType

from ca2vdm_cli.errors import ConfigError

FAMILY_NAMES = ("stdit", "wan")


def _unknown(name: str) -> ConfigError:
    return ConfigError(f"model family {name!r} is not one of {', '.join(FAMILY_NAMES)}")


def spec(name: str) -> ModuleType:
    """The card-facing part of family `name` (no torch)."""
    if name == "stdit":
        from ca2vdm_cli.models.stdit import spec as stdit

        return stdit
    if name == "wan":
        from ca2vdm_cli.models.wan import spec as wan

        return wan
    raise _unknown(name)


def family(name: str) -> ModuleType:
    """The engine-facing module of family `name` (imported on demand: it imports torch)."""
    if name == "stdit":
        from ca2vdm_cli.models.stdit import family as stdit

        return stdit
    if name == "wan":
        from ca2vdm_cli.models.wan import family as wan

        return wan
    raise _unknown(name)

"""One folder per model family; `family(card.family)` is the part of a family the engine calls.

A family module provides `ENGINES` (the denoisers it can run), `make_denoiser`, `model_rows`,
`sample_video` (its latent-space generation over `engine.loop`) and `kv_cache_bytes`. Adding a family is
a folder and a branch below, never an edit of the loop or the pipeline.
"""

from __future__ import annotations

from types import ModuleType

from ca2vdm_cli.errors import ConfigError

FAMILY_NAMES = ("stdit",)


def family(name: str) -> ModuleType:
    """The engine-facing module of family `name` (imported on demand: it imports torch)."""
    if name == "stdit":
        from ca2vdm_cli.models.stdit import family as stdit

        return stdit
    raise ConfigError(f"model family {name!r} is not one of {', '.join(FAMILY_NAMES)}")

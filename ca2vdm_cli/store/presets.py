"""Presets: the model cards shipped in the package (`ca2vdm_cli.bundled_weights`, the repository's
`weights/`), the `sources` table of a downloadable card, and where downloads and converted models live.

The `sources` schema is in card.py's docstring, plus: `revision` null (pinned on first download, below);
transformer `format: "wan-wrapper"` (a causal Wan training-wrapper pickle, `models.wan.convert`) with
`sub_dict` (the generator's top-level key) and an optional `lora` {path (one of the part's files),
sub_dict, alpha (null: alpha = rank)} merged at conversion.

A source's `revision` is a 40-hex commit sha, or null: "pin the repo's current commit on first download".
What the first download found (the commit, each file's size and sha256) is kept in the preset's lock file
(`pins.py`) and applied here, so from then on only that pin is trusted.

Pure Python (no torch, no network), so `ca2vdm models` stays instant.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.store.card import CARD_FILE, ModelCard, read_card
from ca2vdm_cli.units import format_bytes

PACKAGE = "ca2vdm_cli.bundled_weights"
DEFAULT_MODEL = "sprites"  # the embedded default model (weights/sprites/), used without --model
EMBEDDED_DEFAULT = "sprites"
ROLES = ("transformer", "vae", "text_encoder", "tokenizer")
# transformer formats: how `transformer` files become transformer.safetensors
FORMATS = ("opensora-v1", "ca2vdm-official", "ca2vdm", "wan-wrapper")
FAMILY_FORMATS = {"stdit": FORMATS[:3], "wan": ("wan-wrapper", "ca2vdm")}
_SOURCE_KEYS = {"repo", "revision", "files", "license", "format", "params", "notes", "sub_dict", "lora"}
_LORA_KEYS = {"path", "sub_dict", "alpha"}
_FILE_KEYS = {"path", "size", "approx_size", "sha256", "note"}
_SHA1_OR_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


# ----------------------------------------------------------------------------- the sources table
@dataclass(frozen=True)
class SourceFile:
    path: str  # path inside the Hub repo
    size: int | None  # exact bytes, when known
    approx_size: int | None  # bytes as shown on the Hub page ("3.04 GB"), for planning only
    sha256: str | None  # pinned content hash, when known
    origin: str = "the model card"  # who pinned size/sha256: the card, or the lock file of a first download

    @property
    def planned_size(self) -> int:
        return self.size or self.approx_size or 0


@dataclass(frozen=True)
class LoraSource:
    """A LoRA merged into the transformer at conversion (`wan-wrapper`): one of the part's files."""

    path: str
    sub_dict: str | None = "generator_lora"
    alpha: float | None = None  # None: alpha = rank (scale 1)


@dataclass(frozen=True)
class Source:
    """One part of a model (transformer, vae, text_encoder, tokenizer) and where its files come from."""

    role: str
    repo: str | None  # Hub repo id; None for a local-only part (`--weights PATH`)
    revision: str | None  # pinned commit sha; None (Hub repo): pinned on first download (pins.py)
    files: tuple[SourceFile, ...]
    license: str
    format: str | None = None  # transformer only
    params: int | None = None  # parameter count, for memory planning when the files are not local
    notes: str = ""
    sub_dict: str | None = None  # wan-wrapper: the pickle's top-level key holding the generator
    lora: LoraSource | None = None  # wan-wrapper: a LoRA file among `files`, merged at conversion

    @property
    def local(self) -> bool:
        return self.repo is None

    @property
    def planned_size(self) -> int:
        return sum(f.planned_size for f in self.files)

    @property
    def checkpoint(self) -> SourceFile:
        """The transformer file to convert (the one that is not the LoRA)."""
        lora = self.lora.path if self.lora else None
        return next(f for f in self.files if f.path != lora)


def parse_sources(card: ModelCard) -> dict[str, Source]:
    """Validate a card's `sources` table (schema in card.py's docstring); ConfigError names the bad entry."""
    out: dict[str, Source] = {}
    for role, raw in card.sources.items():
        where = f"card {card.name!r}: sources.{role}"
        if role not in ROLES:
            raise ConfigError(f"{where}: unknown part; valid parts: {', '.join(ROLES)}")
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a table")
        unknown = sorted(set(raw) - _SOURCE_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; valid: {sorted(_SOURCE_KEYS)}")
        repo, revision = raw.get("repo"), raw.get("revision")
        if (
            repo is not None
            and revision is not None
            and not (isinstance(revision, str) and _SHA1_OR_COMMIT.fullmatch(revision))
        ):
            raise ConfigError(
                f"{where}: revision {revision!r} must be a pinned 40-hex commit sha, or null to pin the "
                "repo's current commit on first download"
            )
        files = []
        for entry in raw.get("files", []):
            if "path" not in entry or set(entry) - _FILE_KEYS:
                raise ConfigError(f"{where}: a file entry needs 'path' and may have {sorted(_FILE_KEYS)}")
            sha = entry.get("sha256")
            if sha is not None and not _SHA256.fullmatch(sha):
                raise ConfigError(f"{where}: sha256 {sha!r} of {entry.get('path')!r} is not 64 hex digits")
            files.append(SourceFile(entry["path"], entry.get("size"), entry.get("approx_size"), sha))
        if repo is not None and not files:
            raise ConfigError(f"{where}: a Hub source needs at least one file")
        fmt = raw.get("format")
        if role == "transformer":
            allowed = FAMILY_FORMATS.get(card.family, FORMATS)
            if fmt not in allowed:
                raise ConfigError(
                    f"{where}: format {fmt!r} is not one of {allowed} (for family {card.family!r})"
                )
        lora = _parse_lora(raw, fmt, files, where)
        if ("sub_dict" in raw or lora) and (role != "transformer" or fmt != "wan-wrapper"):
            raise ConfigError(f"{where}: sub_dict and lora apply only to a 'wan-wrapper' transformer")
        out[role] = Source(
            role,
            repo,
            revision,
            tuple(files),
            raw.get("license", ""),
            fmt,
            raw.get("params"),
            raw.get("notes", ""),
            raw.get("sub_dict"),
            lora,
        )
    return out


def _parse_lora(raw: dict, fmt: str | None, files: list[SourceFile], where: str) -> LoraSource | None:
    """`lora`: {path (one of the part's files), sub_dict, alpha}; a wan-wrapper needs one other file."""
    lora = raw.get("lora")
    if lora is not None:
        if not isinstance(lora, dict) or "path" not in lora or set(lora) - _LORA_KEYS:
            raise ConfigError(f"{where}.lora needs 'path' and may have {sorted(_LORA_KEYS)}")
        if raw.get("repo") is not None and lora["path"] not in {f.path for f in files}:
            raise ConfigError(f"{where}.lora: path {lora['path']!r} is not one of the part's files")
        alpha = lora.get("alpha")
        lora = LoraSource(lora["path"], lora.get("sub_dict", "generator_lora"), alpha)
    if fmt == "wan-wrapper" and raw.get("repo") is not None:
        others = [f for f in files if lora is None or f.path != lora.path]
        if len(others) != 1:
            raise ConfigError(
                f"{where}: a wan-wrapper part needs exactly one checkpoint file besides its LoRA, got "
                f"{[f.path for f in others]}"
            )
    return lora


def download_size(card: ModelCard) -> int:
    """Bytes to download for a card (exact sizes where known, else the Hub page's rounded sizes)."""
    return sum(s.planned_size for s in parse_sources(card).values())


def needs_local_weights(card: ModelCard) -> bool:
    src = parse_sources(card).get("transformer")
    return src is not None and src.local


# ----------------------------------------------------------------------------- finding cards
def packaged_weights() -> Path:
    """The packaged `weights/` directory (inside the wheel, or the repo's `weights/` when editable)."""
    root = importlib.resources.files(PACKAGE)
    if not isinstance(root, Path):  # a zipped install; model directories must be real folders
        raise ConfigError(
            f"the {PACKAGE} package is not on the file system ({root}); reinstall ca2vdm unzipped"
        )
    return root


def preset_names() -> list[str]:
    """Every packaged preset: `<name>.json` cards and embedded model directories `<name>/ca2vdm.json`."""
    root = packaged_weights()
    names = {p.stem for p in root.glob("*.json")}
    names |= {p.parent.name for p in root.glob(f"*/{CARD_FILE}")}
    return sorted(names)


def embedded_dir(name: str) -> Path | None:
    directory = packaged_weights() / name
    return directory if (directory / CARD_FILE).is_file() else None


def load_preset(name: str) -> ModelCard:
    """The card of a packaged preset; ConfigError listing the presets when the name is unknown."""
    directory = embedded_dir(name)
    if directory is not None:
        return read_card(directory)
    file = packaged_weights() / f"{name}.json"
    if file.is_file():
        return read_card(file)
    variants = [n for n in preset_names() if n.startswith(name + "-")]
    if variants:
        raise ConfigError(
            f"{name!r} names several models (architecture variants): use one of {', '.join(variants)}"
        )
    if name == EMBEDDED_DEFAULT:
        raise ConfigError(
            f"the embedded default model {name!r} is not in this build (no weights/{name}/{CARD_FILE}); "
            "pass --model with a preset or a model directory"
        )
    raise ConfigError(f"unknown model {name!r}; presets: {', '.join(preset_names())}, or a model directory")


# ----------------------------------------------------------------------------- where things live
def ca2vdm_cache(cache_dir: str | Path | None) -> Path:
    """Root for ca2vdm's own artefacts (converted models, verification records)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from platformdirs import user_cache_path

    return user_cache_path("ca2vdm")


def hub_cache(cache_dir: str | Path | None) -> Path:
    """Hub download cache: `<cache_dir>/hub` when given, else the shared Hugging Face cache (HF_HUB_CACHE)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def card_digest(card: ModelCard, pins: dict[str, str] | None = None) -> str:
    """Identity of a card as built: its dict, plus the commits pinned on first download (`pins.py`)."""
    data: Any = card.to_dict()
    if pins:
        data = {"card": data, "pins": dict(sorted(pins.items()))}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def model_dir(card: ModelCard, cache_dir: str | Path | None, key: str) -> Path:
    """Where the assembled model directory of `card` lives; `key` separates revisions or local checkpoints."""
    return ca2vdm_cache(cache_dir) / "models" / card.name / key


def card_summary(card: ModelCard) -> dict[str, Any]:
    """The facts `ca2vdm models` shows about one card (no parameter count: see memory.count_parameters)."""
    return {
        "name": card.name,
        "resolution": f"{card.width}x{card.height}",
        "download": format_bytes(download_size(card), digits=2, decimal=True) if card.sources else "-",
        "license": card.license,
        "use": card.intended_use,
        "family": card.family,
        "parts": {
            role: f"{src.repo}@{src.revision[:7] if src.revision else 'first download'}"
            for role, src in parse_sources(card).items()
            if src.repo is not None
        },
    }

"""From a model name to a local model directory: the one entry point the rest of ca2vdm calls.

`resolve_model` accepts a model directory (returned as is), the embedded default (`sprites`, shipped in the
package), a preset name or a card file. A preset is downloaded (after asking `consent`), verified
(hub.py), converted once to `transformer.safetensors` (convert.py) and assembled in the cache as

    <cache>/models/<preset>/<revision or checkpoint key>/
        ca2vdm.json  transformer.safetensors  vae/  text_encoder/  manifest.json

where `vae/` and `text_encoder/` hold links to the Hub cache's files. `manifest.json` is written last and
records the size and mtime of every file, so a later run trusts the directory only if nothing changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ca2vdm_cli.errors import ConfigError, DownloadError
from ca2vdm_cli.fileio import atomic_write
from ca2vdm_cli.store import pins
from ca2vdm_cli.store.card import (
    TEXT_ENCODER_DIR,
    TRANSFORMER_FILE,
    VAE_DIR,
    ModelCard,
    read_card,
    write_card,
)
from ca2vdm_cli.store.presets import (
    Source,
    ca2vdm_cache,
    card_digest,
    embedded_dir,
    hub_cache,
    load_preset,
    model_dir,
    parse_sources,
)
from ca2vdm_cli.units import format_bytes

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_COMMIT = re.compile(r"[0-9a-f]{40}")
Consent = Callable[[str], bool]


@dataclass
class Prepared:
    """A ready model directory and the verified source files it was made from."""

    directory: Path
    files: list[Path] = field(default_factory=list)


def resolve_model(
    name_or_path: str,
    *,
    weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    consent: Consent | None = None,
) -> Path:
    """A local model directory (card.py layout) for a model directory, `sprites`, a preset or a card file.

    `weights`: the local official checkpoint for the `ca2vdm-official-*` presets. `consent(message)` is asked
    before anything is downloaded; with None, a missing download is an error telling the user to run
    `ca2vdm download NAME` or pass `--yes`. Raises Ca2VDMError subclasses with the fix in the message.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        _no_weights(weights, name_or_path)
        read_card(path)  # ConfigError when it is not a model directory
        return path
    if path.suffix == ".json" and path.is_file():
        card = read_card(path)
    elif os.sep in name_or_path or name_or_path.startswith("."):
        raise ConfigError(
            f"model directory {name_or_path} does not exist; pass a preset name or a model directory"
        )
    else:
        embedded = embedded_dir(name_or_path)
        if embedded is not None:
            _no_weights(weights, name_or_path)
            return embedded
        card = load_preset(name_or_path)
    return prepare(card, weights=weights, cache_dir=cache_dir, consent=consent).directory


def _no_weights(weights: str | Path | None, name: str) -> None:
    if weights is not None:
        raise ConfigError(f"--weights is only used with the ca2vdm-official-* presets, not with {name!r}")


# ----------------------------------------------------------------------------- preparing a card
def prepare(
    card: ModelCard,
    *,
    weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    consent: Consent | None = None,
    revision: str | None = None,
) -> Prepared:
    """Download, verify, convert and assemble `card`; reuse the cached directory when it is intact.

    `revision` replaces the transformer repo's pinned revision (its pinned sha256 then no longer applies;
    the Hub's checksum is used instead). A source whose revision is null is pinned on its first download
    (pins.py): the repo's current commit is looked up once, recorded in the preset's lock file, and used
    from then on, with every file's size and sha256 recorded as it verifies.
    """
    from filelock import FileLock

    sources = parse_sources(card)
    if "transformer" not in sources:
        raise ConfigError(f"card {card.name!r} has no sources.transformer; it cannot be downloaded")
    trans = sources["transformer"]
    if trans.local:
        if weights is None:
            raise ConfigError(
                f"{card.name} loads a local checkpoint: pass --weights PATH (.pt, .pth or .safetensors)"
            )
        key = _checkpoint_key(Path(weights))
    else:
        _no_weights(weights, card.name)
        if revision is not None:
            logger.warning(
                "using revision %s of %s instead of the pinned one; pinned sha256s do not apply",
                revision,
                trans.repo,
            )
            files = tuple(dataclasses.replace(f, sha256=None, size=None) for f in trans.files)
            sources["transformer"] = dataclasses.replace(trans, revision=revision, files=files)
    lock = pins.Lock.load(pins.lock_path(card, cache_dir))
    asked = False
    if pins.unpinned_repos(pins.apply(sources, lock)):
        remote = [s for s in sources.values() if not s.local]
        _ask(card, [(s, f) for s in remote for f in s.files], consent)  # a first download: all of it
        asked = True
        lock = pins.pin_first_download(card, sources, lock)
    sources = pins.apply(sources, lock)
    trans = sources["transformer"]
    if not trans.local:
        key = trans.revision[:12] if len(trans.revision) == 40 else trans.revision.replace("/", "_")
    digest = card_digest(card, pins.first_download_pins(card, sources))
    directory = model_dir(card, cache_dir, key)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory.parent / f"{key}.lock")):
        files = _intact(directory, digest)
        if files is not None:
            return Prepared(directory, files)
        return _build(card, sources, directory, weights, cache_dir, consent, asked, lock, digest)


def _checkpoint_key(weights: Path) -> str:
    """Identify a local checkpoint by path, size and mtime (hashing 4 GB on every run would be slow)."""
    if not weights.is_file():
        raise ConfigError(
            f"--weights {weights} is not a file; pass the official .pt, .pth or .safetensors checkpoint"
        )
    st = weights.stat()
    ident = f"{weights.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _intact(directory: Path, digest: str) -> list[Path] | None:
    """The files of a finished directory if its manifest matches the card and every file is unchanged."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("card") != digest:
        return None
    for rel, (size, mtime_ns) in manifest["files"].items():
        try:
            st = os.stat(directory / rel)  # follows the links into the Hub cache
        except OSError:
            return None
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            logger.warning("%s changed since it was verified; checking it again", directory / rel)
            return None
    return [Path(p) for p in manifest["sources"]]


def _build(
    card: ModelCard,
    sources: dict[str, Source],
    directory: Path,
    weights: str | Path | None,
    cache_dir: str | Path | None,
    consent: Consent | None,
    asked: bool,
    lock: pins.Lock,
    digest: str,
) -> Prepared:
    from ca2vdm_cli.store import hub as hub

    hub_dir = hub_cache(cache_dir)
    record = hub.HashRecord(ca2vdm_cache(cache_dir) / "verified.json")
    remote = [s for s in sources.values() if not s.local]
    missing = [(s, f) for s in remote for f in s.files if hub.is_ready(s, f, hub_dir, record) is None]
    if missing and not asked:
        _ask(card, missing, consent)
    paths: dict[str, list[Path]] = {}
    for s in remote:
        paths[s.role] = []
        for f in s.files:
            path = hub.fetch(s, f, hub_dir, record)
            paths[s.role].append(path)
            if _COMMIT.fullmatch(s.revision or ""):  # recorded per commit; never for a branch name
                size, sha256 = os.stat(path).st_size, record.digest(path, "sha256")
                lock.record_file(s.repo, s.revision, f.path, size, sha256)

    if directory.exists():  # a failed or outdated attempt; links only, so the Hub cache is untouched
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    try:  # a failure leaves no directory: nothing half-built is trusted later (the manifest comes last)
        conversion = _make_transformer(card, sources["transformer"], paths, weights, directory, lock)
        _link_parts(sources, paths, directory)
        write_card(directory, pins.card_with_pins(card, sources))
        tracked = [p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST]
        manifest = {
            "card": digest,
            "files": {str(p.relative_to(directory)): _stat(p) for p in tracked},
            "sources": [str(p) for ps in paths.values() for p in ps]
            + ([str(Path(weights).resolve())] if weights else []),
            "revisions": {s.role: s.revision for s in remote},
            "conversion": conversion,
        }
        atomic_write(directory / MANIFEST, json.dumps(manifest, indent=1))  # last: the directory is complete
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    logger.info("model ready: %s", directory)
    return Prepared(directory, [Path(p) for p in manifest["sources"]])


def _ask(card: ModelCard, missing: list, consent: Consent | None) -> None:
    size = format_bytes(sum(f.planned_size for _, f in missing), digits=2, decimal=True)
    repos = ", ".join(sorted({s.repo for s, _ in missing}))
    if consent is None:
        raise DownloadError(
            f"model {card.name!r} is not downloaded yet ({size} from {repos}); "
            f"run `ca2vdm download {card.name}` first, or pass --yes to download it now"
        )
    if not consent(
        f"{card.name} needs {size} of downloads from the Hugging Face Hub ({repos}). Download now?"
    ):
        raise DownloadError(
            f"download of {card.name!r} declined; run `ca2vdm download {card.name}` when ready"
        )


def _make_transformer(
    card: ModelCard,
    trans: Source,
    paths: dict[str, list[Path]],
    weights: str | Path | None,
    directory: Path,
    lock: pins.Lock,
) -> dict | None:
    """Write DIR/transformer.safetensors: linked when already converted, else converted once."""
    out = directory / TRANSFORMER_FILE
    by_path = dict(zip([f.path for f in trans.files], paths.get("transformer", []), strict=False))
    if trans.local:
        src = Path(weights)  # type: ignore[arg-type]
    elif trans.format == "ca2vdm":
        _link(by_path[trans.files[0].path], out)
        return None
    else:
        src = by_path[trans.checkpoint.path]
    if trans.format != "wan-wrapper":
        from ca2vdm_cli.models.stdit.convert import convert_checkpoint

        logger.info("converting %s to %s (once)", src.name, out.name)
        convert_checkpoint(src, card.model, trans.format or "", out)
        return None
    lora = by_path.get(trans.lora.path) if trans.lora and not trans.local else None
    report = _convert_wan(card, trans, src, lora, out)
    if not trans.local:
        key = pins.file_key(trans.repo, trans.revision, trans.checkpoint.path)
        if key not in lock.data["conversions"]:  # what a card cannot know before: reported once
            logger.info("first conversion of %s/%s: %s", trans.repo, trans.checkpoint.path, _found(report))
            lock.record_conversion(key, report)
    return report


def _convert_wan(card: ModelCard, trans: Source, src: Path, lora: Path | None, out: Path) -> dict:
    """A causal Wan training-wrapper pickle (+ LoRA) to safetensors; one error naming the bad keys."""
    from ca2vdm_cli.errors import WeightsError
    from ca2vdm_cli.models.wan.convert import LORA_SUB_DICT, convert_checkpoint

    logger.info("converting %s%s to %s (once)", src.name, f" + LoRA {lora.name}" if lora else "", out.name)
    try:
        report = convert_checkpoint(
            src,
            card.model,
            out,
            sub_dict=trans.sub_dict,
            lora=lora,
            lora_sub_dict=trans.lora.sub_dict if trans.lora else LORA_SUB_DICT,
            lora_alpha=trans.lora.alpha if trans.lora else None,
        )
    except WeightsError as exc:
        where = f"{trans.repo}@{(trans.revision or '')[:7]}" if trans.repo else "--weights"
        raise WeightsError(
            f"model {card.name!r} ({where}) cannot be converted: {exc}; nothing was kept, fix the card's "
            "sources.transformer (sub_dict, lora) or model table and run the command again"
        ) from None
    found = dataclasses.asdict(report)
    found["out"] = out.name
    return found


def _found(report: dict) -> str:
    text = (
        f"top-level keys {report['top_level_keys']}, used {report['sub_dict']!r} ({report['tensors']} "
        f"tensors, {'/'.join(report['source_dtypes'])} -> {report['dtype']})"
    )
    if report["lora_modules"]:
        text += (
            f", merged {report['lora_modules']} LoRA modules (rank {report['lora_rank']}, scale "
            f"{report['lora_scale']:g})"
        )
    if report["ignored"]:
        text += f", ignored {report['ignored']}"
    return text


def _link_parts(sources: dict[str, Source], paths: dict[str, list[Path]], directory: Path) -> None:
    """vae/ and text_encoder/ (with the tokenizer files) as links to the verified Hub files."""
    seen: dict[Path, str] = {}
    folders = (("vae", VAE_DIR), ("text_encoder", TEXT_ENCODER_DIR), ("tokenizer", TEXT_ENCODER_DIR))
    for role, folder in folders:
        if role not in sources:
            continue
        for src, file in zip(paths.get(role, []), sources[role].files, strict=True):
            dst = directory / folder / Path(file.path).name
            if dst in seen:
                raise ConfigError(
                    f"sources.{role}: {file.path} and {seen[dst]} would both be {folder}/{dst.name}"
                )
            seen[dst] = file.path
            _link(src, dst)


def _link(src: Path, dst: Path) -> None:
    """Symlink `dst` to a cached file; hard link or copy where symlinks are not allowed."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        dst.symlink_to(src.absolute())
    except OSError:
        try:
            os.link(os.path.realpath(src), dst)
        except OSError:
            shutil.copy2(src, dst)


def _stat(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns

"""First-download pinning: what a model card cannot know yet is found on the first download, recorded,
and from then on trusted alone.

A card may leave a Hub source's `revision` null (its repo's commit was not known when the card was
written) and a file's `size` / `sha256` null. On the first download ca2vdm

1. asks the Hub for the repo's current commit of `main` and records it (before any file is fetched, so an
   interrupted download resumes at the same commit, never at a newer `main`);
2. downloads each file at that commit, verifies it (hub.py: the Hub's own checksum) and records its exact
   size and sha256;
3. records what the conversion found in the checkpoint (its top-level keys, the sub-dict used, dtypes).

All of it goes to the preset's lock file, `<ca2vdm cache>/models/<preset>/pins.json`, next to the model
directories built from it. Later runs apply the lock to the card (`apply`), so every file is checked
against the recorded sha256 and only the recorded commit is downloaded. Deleting the lock file pins
again on the next download. Sizes and hashes of sources the card pins itself (a 40-hex revision) are
recorded too; a value the card gives always wins over the lock.

Pure Python (no torch); only `pin_first_download` asks the Hub (hub.resolve_commit).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.fileio import atomic_write
from ca2vdm_cli.store.card import ModelCard
from ca2vdm_cli.store.presets import (
    Source,
    ca2vdm_cache,
    card_digest,
    model_dir,
    needs_local_weights,
    parse_sources,
)

LOCK_FILE = "pins.json"
logger = logging.getLogger(__name__)
_COMMIT = re.compile(r"[0-9a-f]{40}")


def lock_path(card: ModelCard, cache_dir: str | Path | None) -> Path:
    return ca2vdm_cache(cache_dir) / "models" / card.name / LOCK_FILE


@dataclass
class Lock:
    """The lock file of one preset: `repos` {repo: {revision, pinned_at, requested}}, `files`
    {"repo@revision/path": {size, sha256}}, `conversions` {"repo@revision/path": what conversion found}."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Lock:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            data = {}
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(
                f"cannot read the lock file {path} ({exc}); delete it to pin the preset again on the next "
                "download"
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"lock file {path} is not a JSON object; delete it to pin the preset again")
        for key in ("repos", "files", "conversions"):
            data.setdefault(key, {})
        return cls(path, data)

    def reload(self) -> Lock:
        return Lock.load(self.path)

    # ------------------------------------------------------------------ reading
    def revision(self, repo: str) -> str | None:
        return self.data["repos"].get(repo, {}).get("revision")

    def file(self, repo: str, revision: str, path: str) -> dict[str, Any] | None:
        return self.data["files"].get(file_key(repo, revision, path))

    # ------------------------------------------------------------------ writing (read, change, save)
    def pin(self, repo: str, revision: str, requested: str = "main") -> None:
        if not _COMMIT.fullmatch(revision):
            raise ValueError(f"not a commit sha: {revision!r}")
        self._update(
            lambda d: d["repos"].__setitem__(
                repo,
                {
                    "revision": revision,
                    "requested": requested,
                    "pinned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
            )
        )

    def record_file(self, repo: str, revision: str, path: str, size: int, sha256: str) -> None:
        entry = {"size": size, "sha256": sha256}
        key = file_key(repo, revision, path)
        if self.data["files"].get(key) != entry:
            self._update(lambda d: d["files"].__setitem__(key, entry))

    def record_conversion(self, key: str, report: dict[str, Any]) -> None:
        self._update(lambda d: d["conversions"].__setitem__(key, report))

    def _update(self, change: Any) -> None:
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            fresh = Lock.load(self.path).data  # another process may have recorded something meanwhile
            change(fresh)
            atomic_write(self.path, json.dumps(fresh, indent=1, sort_keys=True) + "\n")
            self.data = fresh


def file_key(repo: str, revision: str, path: str) -> str:
    return f"{repo}@{revision}/{path}"


# ----------------------------------------------------------------------------- the card with its pins
def unpinned_repos(sources: dict[str, Source]) -> list[str]:
    """Hub repos a card leaves unpinned (revision null) and the lock does not pin yet."""
    repos = [s.repo for s in sources.values() if s.repo is not None and s.revision is None]
    return list(dict.fromkeys(repos))  # in the card's order: the transformer's repo first


def apply(sources: dict[str, Source], lock: Lock) -> dict[str, Source]:
    """The sources with the lock's commits for null revisions, and its recorded sizes and sha256s where
    the card gives none (`SourceFile.origin` then names the lock file)."""
    out = {}
    origin = f"the lock file {lock.path}"
    for role, src in sources.items():
        if src.repo is None:
            out[role] = src
            continue
        revision = src.revision or lock.revision(src.repo)
        files = []
        for f in src.files:
            got = lock.file(src.repo, revision, f.path) if revision else None
            if got and (f.size is None or f.sha256 is None):
                f = dataclasses.replace(
                    f, size=f.size or got["size"], sha256=f.sha256 or got["sha256"], origin=origin
                )
            files.append(f)
        out[role] = dataclasses.replace(src, revision=revision, files=tuple(files))
    return out


def first_download_pins(card: ModelCard, sources: dict[str, Source]) -> dict[str, str]:
    """{repo: commit} for the repos the card leaves unpinned (what makes two lock states differ)."""
    null = {s.repo for s in parse_sources(card).values() if s.repo is not None and s.revision is None}
    return {s.repo: s.revision for s in sources.values() if s.repo in null and s.revision}


def pin_first_download(card: ModelCard, sources: dict[str, Source], lock: Lock) -> Lock:
    """Look up and record the current commit of every repo the card leaves unpinned (once per preset)."""
    from filelock import FileLock

    from ca2vdm_cli.store import hub

    lock.path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock.path) + ".pin-lock"):  # two first downloads at once agree on one commit
        lock = lock.reload()
        for repo in unpinned_repos(apply(sources, lock)):
            sha = hub.resolve_commit(repo)
            lock.pin(repo, sha)
            logger.info(
                "pinned %s to %s@%s on first download (recorded in %s; delete it to pin again)",
                card.name,
                repo,
                sha,
                lock.path,
            )
    return lock


def card_with_pins(card: ModelCard, sources: dict[str, Source]) -> ModelCard:
    """The card with the commits its first download pinned, so the directory says what it was built from."""
    table = json.loads(json.dumps(card.sources))
    for role, src in sources.items():
        if role in table and src.repo is not None and table[role].get("revision") is None:
            table[role]["revision"] = src.revision
    return dataclasses.replace(card, sources=table)


# ----------------------------------------------------------------------------- the cache as pinned
def pinned_sources(card: ModelCard, cache_dir: str | Path | None) -> dict[str, Source]:
    """The card's sources with what its lock file recorded on a first download (null revisions filled)."""
    return apply(parse_sources(card), Lock.load(lock_path(card, cache_dir)))


def default_key(card: ModelCard, cache_dir: str | Path | None = None) -> str | None:
    src = pinned_sources(card, cache_dir).get("transformer")
    return None if src is None or src.revision is None else src.revision[:12]


def cache_status(card: ModelCard, cache_dir: str | Path | None = None) -> str:
    """ "built-in", "yes", "no", or "needs --weights" (a local checkpoint is needed) for `ca2vdm models`."""
    if not card.sources:
        return "built-in"
    if needs_local_weights(card):
        return "needs --weights"
    try:
        sources = pinned_sources(card, cache_dir)
    except ConfigError:  # an unreadable lock file: `download` says so
        return "no"
    trans = sources.get("transformer")
    if trans is None or trans.revision is None:
        return "no"
    manifest = model_dir(card, cache_dir, trans.revision[:12]) / "manifest.json"
    digest = card_digest(card, first_download_pins(card, sources))
    try:
        done = json.loads(manifest.read_text()).get("card") == digest
    except (OSError, json.JSONDecodeError):
        done = False
    return "yes" if done else "no"

"""Downloads from the Hugging Face Hub with our own integrity checks.

`hf_hub_download` honours HF_TOKEN, HF_ENDPOINT (mirrors) and HF_HUB_OFFLINE, but it accepts a same-size
corrupt body, returns a truncated cached blob as it is, never resumes across processes and leaves stale
`*.incomplete` files behind (environment.md §6). So every file is checked before it is trusted, on download
and again whenever it changed on disk since it was last checked:

* against the sha256 pinned in the model card when there is one;
* else against the checksum the Hub reported, which the Hub cache keeps as the blob's name (the sha256 of an
  LFS file, the git blob sha1 of a small one);
* else by size only, with a warning.

A file that fails is deleted (blob and snapshot link), so it is never used again. Hash results are kept in
`verified.json`, keyed by path, size and mtime, so a 10 GB file is hashed once, not on every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

from ca2vdm_cli.errors import DownloadError
from ca2vdm_cli.fileio import atomic_write
from ca2vdm_cli.store.presets import Source, SourceFile
from ca2vdm_cli.units import format_bytes

logger = logging.getLogger(__name__)

_HASH_CHUNK = 8 * 1024 * 1024


# ----------------------------------------------------------------------------- hashing with a record
class HashRecord:
    """sha256 / git-sha1 of files, remembered by (path, size, mtime) in a JSON file."""

    def __init__(self, file: Path) -> None:
        self.file = file
        try:
            self.data: dict[str, dict] = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError):
            self.data = {}

    def digest(self, path: Path, kind: str) -> str:
        real = os.path.realpath(path)
        st = os.stat(real)
        entry = self.data.get(real, {})
        if entry.get("size") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns:
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if kind not in entry:
            if st.st_size > 100_000_000:
                logger.info(
                    "checking %s of %s (%s)",
                    kind,
                    Path(path).name,
                    format_bytes(st.st_size, digits=2, decimal=True),
                )
            entry[kind] = _hash_file(Path(real), kind)
            self.data[real] = entry
            self._save()
        return entry[kind]

    def forget(self, path: Path) -> None:
        if self.data.pop(os.path.realpath(path), None) is not None:
            self._save()

    def _save(self) -> None:
        atomic_write(self.file, json.dumps(self.data, indent=1))


def _hash_file(path: Path, kind: str) -> str:
    if kind == "sha256":
        h = hashlib.sha256()
    else:  # git blob sha1: what the Hub reports as the ETag of a small (non-LFS) file
        h = hashlib.sha1()
        h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- cache inspection
def cached_path(source: Source, file: SourceFile, hub_dir: Path) -> Path | None:
    """The snapshot path of a file in the Hub cache, or None when it is not there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source.repo, file.path, cache_dir=hub_dir, revision=source.revision)
    return Path(found) if isinstance(found, str) else None


def remove_cached(path: Path) -> None:
    """Delete a snapshot link and the blob it points to."""
    blob = Path(os.path.realpath(path))
    for p in {blob, Path(path)}:
        p.unlink(missing_ok=True)


def verify(source: Source, file: SourceFile, path: Path, record: HashRecord) -> None:
    """Check a downloaded or cached file; on failure delete it and raise DownloadError."""
    name = f"{source.repo}/{file.path}"
    actual_size = os.stat(path).st_size
    problem = None
    if file.size is not None and actual_size != file.size:
        problem = f"has {actual_size} bytes, {file.origin} says {file.size}"
    else:
        hub_sum = Path(os.path.realpath(path)).name  # the Hub cache names blobs by their ETag
        if file.sha256:
            got = record.digest(path, "sha256")
            if got != file.sha256:
                problem = f"has sha256 {got}, {file.origin} pins {file.sha256}"
        elif re.fullmatch(r"[0-9a-f]{64}", hub_sum):
            got = record.digest(path, "sha256")
            if got != hub_sum:
                problem = f"has sha256 {got}, the Hub reported {hub_sum}"
        elif re.fullmatch(r"[0-9a-f]{40}", hub_sum):
            got = record.digest(path, "sha1")
            if got != hub_sum:
                problem = f"has git sha1 {got}, the Hub reported {hub_sum}"
        else:
            logger.warning(
                "%s: no checksum to verify against (no sha256 in the card, none from the Hub)", name
            )
    if problem is None:
        return
    record.forget(path)
    remove_cached(path)
    raise DownloadError(f"{name} is corrupt: it {problem}; the file was deleted, run the command again")


def is_ready(source: Source, file: SourceFile, hub_dir: Path, record: HashRecord) -> Path | None:
    """The verified cached path, or None when the file must be downloaded (a corrupt copy is deleted)."""
    path = cached_path(source, file, hub_dir)
    if path is None:
        return None
    try:
        verify(source, file, path, record)
    except DownloadError as exc:
        logger.warning("%s; it will be downloaded again", str(exc).split(";")[0])
        return None
    return path


# ----------------------------------------------------------------------------- downloading
def remove_stale_partials(source: Source, hub_dir: Path) -> None:
    """Delete `blobs/*.incomplete` files that no running download holds the Hub's lock for."""
    from filelock import FileLock, Timeout
    from huggingface_hub.file_download import repo_folder_name

    folder = repo_folder_name(repo_id=source.repo, repo_type="model")
    for partial in (hub_dir / folder / "blobs").glob("*.incomplete"):
        etag = partial.name.split(".")[0]
        lock = FileLock(str(hub_dir / ".locks" / folder / f"{etag}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # another process is downloading it right now
        try:
            size = partial.stat().st_size
            partial.unlink(missing_ok=True)
            logger.info(
                "removed a stale partial download %s (%s)",
                partial.name,
                format_bytes(size, digits=2, decimal=True),
            )
        finally:
            lock.release()


def fetch(source: Source, file: SourceFile, hub_dir: Path, record: HashRecord) -> Path:
    """Return the verified local path of one file, downloading it if needed. DownloadError otherwise."""
    path = is_ready(source, file, hub_dir, record)
    if path is not None:
        return path
    from huggingface_hub import constants, hf_hub_download

    name = f"{source.repo}/{file.path}"
    if constants.HF_HUB_OFFLINE:
        raise DownloadError(
            f"{name} (revision {source.revision}) is not in the cache {hub_dir} and HF_HUB_OFFLINE is set; "
            "unset HF_HUB_OFFLINE to download it, or copy the cache from a machine that has it"
        )
    size = _preflight(source, file)  # fails fast (no retries) when the Hub is unreachable or says 404
    remove_stale_partials(source, hub_dir)
    logger.info(
        "downloading %s (%s) from %s",
        name,
        format_bytes(size or file.planned_size, digits=2, decimal=True),
        constants.ENDPOINT,
    )
    try:
        local = hf_hub_download(source.repo, file.path, revision=source.revision, cache_dir=hub_dir)
    except Exception as exc:  # noqa: BLE001  (every Hub/HTTP failure becomes one line)
        raise _download_error(exc, source, file) from None
    verify(source, file, Path(local), record)
    return Path(local)


def resolve_commit(repo: str, requested: str = "main") -> str:
    """The commit sha `requested` (a branch) of `repo` points to now: one API call, no retries."""
    from huggingface_hub import HfApi, constants

    probe = Source("transformer", repo, requested, (), "")
    if constants.HF_HUB_OFFLINE:
        raise DownloadError(
            f"{repo} is not pinned yet (its first download records the commit of {requested!r}) and "
            "HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE for the first download"
        )
    try:
        sha = HfApi(endpoint=constants.ENDPOINT).model_info(repo, revision=requested).sha
    except Exception as exc:  # noqa: BLE001  (every Hub/HTTP failure becomes one line)
        what = f"look up the current commit of {repo} (its first download pins it)"
        if _is_connection_error(exc):  # no cached copy can help: nothing is pinned yet
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DownloadError(
                f"cannot reach {constants.ENDPOINT} to {what} ({first}); check the network or HF_ENDPOINT"
            ) from None
        raise _download_error(exc, probe, SourceFile(requested, None, None, None), what) from None
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{40}", sha):
        raise DownloadError(f"{constants.ENDPOINT} gave no commit sha for {repo}@{requested} ({sha!r})")
    return sha


def _preflight(source: Source, file: SourceFile) -> int | None:
    """One HEAD request without retries: maps 401/404/unreachable to a clear error; returns the size."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(source.repo, file.path, revision=source.revision)
    try:
        return get_hf_file_metadata(url).size
    except Exception as exc:  # noqa: BLE001
        raise _download_error(exc, source, file) from None


def _download_error(
    exc: Exception, source: Source, file: SourceFile, what: str | None = None
) -> DownloadError:
    """One line for a Hub failure; `what` names the request (default: downloading the file)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, rev, endpoint = source.repo, source.revision, constants.ENDPOINT
    what = what or f"download {repo}/{file.path}"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, GatedRepoError):
        msg = (
            f"{repo} on {endpoint} needs authorisation (gated or private); accept its terms on the Hub and "
            "set HF_TOKEN (or run `hf auth login`)"
        )
    elif isinstance(exc, RepositoryNotFoundError):
        msg = f"repository {repo} was not found on {endpoint}; check HF_ENDPOINT, or set HF_TOKEN if private"
    elif isinstance(exc, RevisionNotFoundError):
        msg = f"revision {rev} of {repo} was not found on {endpoint}; check --revision or the model card"
    elif isinstance(exc, RemoteEntryNotFoundError):
        msg = f"{file.path} was not found in {repo} at revision {rev} on {endpoint}"
    elif isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError)):
        msg = f"{repo}/{file.path} is not cached and {endpoint} cannot be used ({first_line})"
    elif sizes := re.search(r"should be of size (\d+) but has size (\d+)", str(exc)):
        got, want = sizes.group(2), sizes.group(1)
        msg = f"the download of {repo}/{file.path} was cut short (got {got} of {want} bytes); run it again"
    elif _is_connection_error(exc):
        msg = (
            f"cannot reach {endpoint} to {what} ({first_line}); check the network or "
            "HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use cached files only"
        )
    else:
        msg = f"{endpoint} failed to {what}: {first_line}"
    return DownloadError(msg)


def _is_connection_error(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"ConnectError", "TimeoutException", "ConnectionError", "TransportError"})

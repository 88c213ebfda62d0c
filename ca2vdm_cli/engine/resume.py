"""Resume sidecars: per finished chunk, the clean latents needed to rebuild the KV cache.

A render of `out.mp4` keeps `out.mp4.parts/` beside it while it runs:

    manifest.json        {"version", "fingerprint", "chunks": n}  (rewritten atomically after each chunk)
    chunk-00000.safetensors, …   tensor "latents" (B, c, l, h, w) float32, written atomically

The fingerprint hashes everything that decides the frames (model, prompt, image bytes, seed, frame count,
sampling settings, device type, dtype); a sidecar with another fingerprint is never used. Resuming replays
the saved chunks into the cache (`Pipeline.generate(replay=...)`) and re-decodes them into a fresh MP4, so the
final file has every frame exactly once. The sidecar is removed when the render completes.

`inspect_output` decides what a resumable run does with an output path: resume it (a usable sidecar), skip
it (complete: decodes to the expected frame count and size, no sidecar), or render it from scratch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ca2vdm_cli.errors import OutputError
from ca2vdm_cli.fileio import atomic_write

logger = logging.getLogger(__name__)

VERSION = 1


def fingerprint(settings: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the settings that decide the frames."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_identity(model_dir: str | Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file of a model directory: cheap to take, and it changes
    when any weight file is replaced (hashing gigabytes of weights per render would not be)."""
    root = Path(model_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def sidecar_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


class Sidecar:
    """The resume state of one output file."""

    def __init__(self, out: str | Path, fingerprint: str) -> None:
        self.dir = sidecar_dir(out)
        self.fingerprint = fingerprint
        self.chunks = 0

    def exists(self) -> bool:
        return (self.dir / "manifest.json").exists()

    def load(self) -> list[Tensor]:
        """The saved chunks, oldest first; empty when there is no usable sidecar for this fingerprint."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            manifest = json.loads((self.dir / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError):
            return []
        if manifest.get("version") != VERSION or manifest.get("fingerprint") != self.fingerprint:
            logger.info("ignoring %s: it belongs to different settings", self.dir)
            return []
        chunks = []
        for k in range(int(manifest.get("chunks", 0))):
            try:
                chunks.append(load_file(str(self._chunk_path(k)))["latents"])
            except (OSError, SafetensorError, KeyError):
                logger.warning("chunk %d of %s is unreadable; resuming from chunk %d", k, self.dir, k)
                break
        self.chunks = len(chunks)
        return chunks

    def start(self) -> None:
        """Begin a fresh sidecar (any old one is discarded)."""
        self.remove()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.chunks = 0
            self._write_manifest()
        except OSError as exc:
            raise OutputError(
                f"cannot keep the resume data of this render in {self.dir} ({exc.strerror or exc}); "
                "choose an --out in a writable directory"
            ) from None

    def append(self, latents: Tensor) -> None:
        """Save the next chunk's clean latents, then advance the manifest (a crash between leaves the
        manifest pointing at complete chunks only)."""
        from safetensors.torch import save

        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(
            self._chunk_path(self.chunks), save({"latents": latents.detach().float().contiguous().cpu()})
        )
        self.chunks += 1
        self._write_manifest()

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _chunk_path(self, k: int) -> Path:
        return self.dir / f"chunk-{k:05d}.safetensors"

    def _write_manifest(self) -> None:
        data = {"version": VERSION, "fingerprint": self.fingerprint, "chunks": self.chunks}
        atomic_write(self.dir / "manifest.json", json.dumps(data).encode())


@dataclass
class OutputState:
    """What to do with an output path: "render" (from scratch), "resume" (replay `chunks`) or "skip"."""

    action: str
    reason: str
    chunks: list[Tensor] = field(default_factory=list)


def inspect_output(out: str | Path, sidecar: Sidecar, frames: int, width: int, height: int) -> OutputState:
    """Resume from a usable sidecar; skip a finished video (verified by decoding it, not just present);
    otherwise render from scratch (missing, partial or corrupt output, or a sidecar of other settings)."""
    out = Path(out)
    if sidecar.exists():
        chunks = sidecar.load()
        if chunks:
            return OutputState("resume", f"{len(chunks)} finished chunk(s) saved in {sidecar.dir}", chunks)
        return OutputState("render", f"{sidecar.dir} holds no usable chunk for these settings")
    if not out.exists():
        return OutputState("render", "new")
    problem = video_problem(out, frames, width, height)
    if problem is None:
        return OutputState("skip", f"{out} is complete ({frames} frames, {width}x{height})")
    return OutputState("render", f"{out} {problem}")


def video_problem(path: Path, frames: int, width: int, height: int) -> str | None:
    """Why `path` is not a finished video of `frames` frames at width x height (None: it is)."""
    from ca2vdm_cli.media.video import probe_video

    try:
        info = probe_video(path)
    except Exception as exc:  # PyAV raises several error types for broken files; all mean "not finished"
        return f"cannot be decoded ({type(exc).__name__})"
    if (info.width, info.height) != (width, height):
        return f"is {info.width}x{info.height}, not {width}x{height}"
    if info.frames != frames:
        return f"holds {info.frames} of {frames} frames"
    return None

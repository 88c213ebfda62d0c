"""Training clips as cached VAE latents + captions.

Sources: the procedural sprites world (`sprites.sample_scene(seed)` for seeds 0..videos-1), or a folder of
videos with captions in a JSONL (`{"path": ..., "caption": ...}` per line) or CSV (`path,caption`) file,
decoded with PyAV, resized (shorter side) and center-cropped, cut into clips of `clip_frames` frames taken
every `stride`-th frame. The latents are encoded once and stored in one safetensors file
(`latents` (N, L, c, h, w) fp16; captions in the metadata), which later runs reuse.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ca2vdm_cli.errors import ConfigError, InputError
from ca2vdm_cli.sprites import world as sprites

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif"}
# encode(frames uint8 (B, T, H, W, 3)) -> latents (B, c, T, h, w), already multiplied by the scaling factor
Encoder = Callable[[np.ndarray], Tensor]


@dataclass
class LatentClips:
    """N clips of L latent frames each; `start_is_described`: the caption describes frame 0 of each clip
    (true for the sprites world, whose prompt gives the initial direction)."""

    latents: Tensor  # (N, L, c, h, w) float16
    captions: list[str]
    start_is_described: bool
    foreground: Tensor | None = None  # (N, L, h, w) uint8: latent pixels touching foreground (see below)

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def clip_frames(self) -> int:
        return self.latents.shape[1]

    def sample(
        self, gen: torch.Generator, batch: int, length: int, from_start: bool
    ) -> tuple[Tensor, list[str]]:
        """`batch` random windows of `length` frames -> (B, c, length, h, w) float32 and their captions.
        Windows start at frame 0 when `from_start` (a clip that begins the video), else anywhere."""
        clips, captions, _ = self.sample_with_foreground(gen, batch, length, from_start)
        return clips, captions

    def sample_with_foreground(
        self, gen: torch.Generator, batch: int, length: int, from_start: bool
    ) -> tuple[Tensor, list[str], Tensor | None]:
        """As `sample`, plus the windows' foreground masks (B, length, h, w) float32 (None without masks);
        the same random draws, so a run with and without masks sees the same clips."""
        if length > self.clip_frames:
            raise ConfigError(f"training needs clips of {length} frames, the data has {self.clip_frames}")
        index = torch.randint(0, len(self), (batch,), generator=gen)
        if from_start:
            start = torch.zeros(batch, dtype=torch.long)
        else:
            start = torch.randint(0, self.clip_frames - length + 1, (batch,), generator=gen)
        pairs = list(zip(index, start, strict=True))
        clips = torch.stack([self.latents[i, s : s + length] for i, s in pairs])
        fg = None
        if self.foreground is not None:
            fg = torch.stack([self.foreground[i, s : s + length] for i, s in pairs]).float()
        return clips.float().permute(0, 2, 1, 3, 4), [self.captions[i] for i in index.tolist()], fg


def save_clips(path: Path, clips: LatentClips, fingerprint: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    metadata = {
        "captions": json.dumps(clips.captions),
        "start_is_described": json.dumps(clips.start_is_described),
        "fingerprint": json.dumps(fingerprint, sort_keys=True),
    }
    tensors = {"latents": clips.latents.contiguous()}
    if clips.foreground is not None:
        tensors["foreground"] = clips.foreground.contiguous()
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def load_clips(path: Path, fingerprint: dict[str, Any] | None = None) -> LatentClips | None:
    """The cached clips, or None when the file is missing or was made from other data/VAE settings."""
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if fingerprint is not None and meta.get("fingerprint") != json.dumps(fingerprint, sort_keys=True):
            logger.warning("latent cache %s was made with other settings; rebuilding it", path)
            return None
        latents = f.get_tensor("latents")
        fg = f.get_tensor("foreground") if "foreground" in f.keys() else None  # noqa: SIM118 (not a dict)
    captions, described = json.loads(meta["captions"]), json.loads(meta["start_is_described"])
    return LatentClips(latents, captions, described, fg)


def foreground_masks(pixels: np.ndarray, latent_hw: tuple[int, int], tolerance: int = 48) -> Tensor:
    """uint8 frames (B, T, H, W, 3) -> uint8 (B, T, h, w): 1 on latent pixels whose patch (or one of its
    8 neighbours) holds a pixel farther than `tolerance` (sum of |ΔRGB|) from its frame's median colour.

    For the sprites world (black background) that marks the sprites, with a margin for the VAE's blur;
    the foreground-weighted loss (`train.foreground_weight`) multiplies those latent pixels' error."""
    frames = torch.from_numpy(np.ascontiguousarray(pixels)).to(torch.int16)  # (B, T, H, W, 3)
    B, T, H, W, _ = frames.shape
    median = frames.flatten(2, 3).median(dim=2).values  # (B, T, 3)
    far = (frames - median[:, :, None, None]).abs().sum(-1) > tolerance  # (B, T, H, W)
    h, w = latent_hw
    patches = torch.nn.functional.adaptive_max_pool2d(far.flatten(0, 1)[:, None].float(), (h, w))
    grown = torch.nn.functional.max_pool2d(patches, 3, stride=1, padding=1)  # (B·T, 1, h, w)
    return grown.view(B, T, h, w).to(torch.uint8)


# ----------------------------------------------------------------------------- sprites
def sprite_clips(videos: int, frames: int, encode: Encoder, batch: int = 16) -> LatentClips:
    """Videos of the sprites world for seeds 0..videos-1, `frames` frames each."""
    latents, captions, masks = [], [], []
    for first in range(0, videos, batch):
        scenes = [sprites.sample_scene(seed) for seed in range(first, min(videos, first + batch))]
        pixels = np.stack([sprites.render(scene, frames) for scene in scenes])  # (B, T, 64, 64, 3)
        z = encode(pixels).permute(0, 2, 1, 3, 4).to(torch.float16).cpu()  # (B, T, c, h, w)
        latents.append(z)
        masks.append(foreground_masks(pixels, tuple(z.shape[-2:])))
        captions += [scene.prompt for scene in scenes]
        if (first // batch) % 20 == 0:
            logger.info("latents: encoded %d/%d sprite videos", first + len(scenes), videos)
    return LatentClips(torch.cat(latents), captions, start_is_described=True, foreground=torch.cat(masks))


# ----------------------------------------------------------------------------- video folders
def read_captions(path: Path) -> dict[str, str]:
    """video path (relative to the captions file's folder, as written) -> caption, from JSONL or CSV."""
    if not path.is_file():
        raise InputError(f"captions file {path} does not exist; give a JSONL or CSV with path and caption")
    out: dict[str, str] = {}
    if path.suffix == ".jsonl":
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out[str(row["path"])] = str(row["caption"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InputError(f"{path}:{n}: expected a JSON object with 'path' and 'caption'") from None
    elif path.suffix == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "caption"} <= set(reader.fieldnames):
                raise InputError(f"{path}: the CSV header must have 'path' and 'caption' columns")
            out = {row["path"]: row["caption"] for row in reader}
    else:
        raise InputError(f"captions file {path}: use .jsonl or .csv")
    return out


def resize_center_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (size, size, 3): shorter side to `size` (bicubic), then the centre square."""
    from PIL import Image

    h, w = frame.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    img = Image.fromarray(frame).resize((nw, nh), Image.BICUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(img)[top : top + size, left : left + size]


def video_clips_iter(path: Path, clip_frames: int, stride: int, size: int) -> Iterator[np.ndarray]:
    """Non-overlapping clips (clip_frames, size, size, 3) of every `stride`-th frame of one video."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise InputError(f"cannot open video {path}: {exc}") from None
    with container:
        buf: list[np.ndarray] = []
        for i, frame in enumerate(container.decode(video=0)):
            if i % stride:
                continue
            buf.append(resize_center_crop(frame.to_ndarray(format="rgb24"), size))
            if len(buf) == clip_frames:
                yield np.stack(buf)
                buf = []


def folder_clips(
    directory: Path, captions_file: Path, clip_frames: int, stride: int, size: int, encode: Encoder
) -> LatentClips:
    """Every captioned video under `directory`, cut into clips; videos shorter than one clip are skipped."""
    if not directory.is_dir():
        raise InputError(f"video folder {directory} does not exist")
    captions = read_captions(captions_file)
    latents, texts, masks = [], [], []
    for rel, caption in sorted(captions.items()):
        path = directory / rel
        if path.suffix.lower() not in VIDEO_SUFFIXES or not path.is_file():
            raise InputError(f"{captions_file}: {rel} is not a video file under {directory}")
        for clip in video_clips_iter(path, clip_frames, stride, size):
            z = encode(clip[None]).permute(0, 2, 1, 3, 4).to(torch.float16).cpu()  # (1, T, c, h, w)
            latents.append(z)
            masks.append(foreground_masks(clip[None], tuple(z.shape[-2:])))
            texts.append(caption)
    if not latents:
        raise InputError(f"no video in {directory} has {clip_frames} frames at stride {stride}")
    logger.info("latents: %d clips from %d videos", len(texts), len(captions))
    return LatentClips(torch.cat(latents), texts, start_is_described=False, foreground=torch.cat(masks))

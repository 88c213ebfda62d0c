"""Media I/O with PyAV and PIL: the conditioning image in (`read_image`), the video out (`VideoWriter`, a
fragmented MP4 flushed packet by packet so the file plays while it grows and survives a crash), optional
PNG frames (`FrameDirWriter`), and readers used by tests and resume checks (`read_frames`, `probe_video`).

Durability (measured, shared/docs/environment.md §2): with `frag_every_frame+empty_moov+default_base_moof`,
`flush_packets=1` and an encoder that emits one packet per frame (x264 `tune=zerolatency`, SVT-AV1 low-delay
prediction, mpeg4 without B-frames), every frame but the newest is on disk: the MP4 muxer writes a frame's
fragment when the next packet arrives. A clean close (also on Ctrl-C, SIGTERM or an error) writes all frames.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ca2vdm_cli.errors import InputError, OutputError

logger = logging.getLogger(__name__)

MUXER_OPTIONS = {"movflags": "frag_every_frame+empty_moov+default_base_moof", "flush_packets": "1"}
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov")


@dataclass(frozen=True)
class CodecSpec:
    """An encoder, the meaning and range of `--crf` for it, and its low-latency options."""

    encoder: str
    default_quality: int
    quality_range: tuple[int, int]
    quality_meaning: str
    options: Callable[[int, int], dict[str, str]]  # (quality, keyframe interval) -> encoder options


CODECS: dict[str, CodecSpec] = {
    "h264": CodecSpec(
        "libx264",
        20,
        (0, 51),
        "x264 CRF",
        lambda q, g: {"crf": str(q), "tune": "zerolatency", "preset": "medium", "g": str(g)},
    ),
    "av1": CodecSpec(
        "libsvtav1",
        35,
        (0, 63),
        "SVT-AV1 CRF",
        # pred-struct=1: low-delay prediction, so packets leave the encoder frame by frame
        lambda q, g: {"crf": str(q), "preset": "8", "g": str(g), "svtav1-params": "pred-struct=1"},
    ),
    "mpeg4": CodecSpec(
        "mpeg4",
        3,
        (2, 31),
        "MPEG-4 fixed quantiser",
        lambda q, g: {"qmin": str(q), "qmax": str(q), "g": str(g)},
    ),
}


def check_codec(codec: str, quality: int | None = None) -> tuple[CodecSpec, int]:
    """The codec's spec and the effective quality; OutputError for an unknown/missing codec or bad --crf."""
    import av

    if codec not in CODECS:
        raise OutputError(f"--codec {codec!r} is not one of {', '.join(CODECS)}")
    spec = CODECS[codec]
    try:
        av.codec.Codec(spec.encoder, "w")
    except Exception:
        raise OutputError(
            f"--codec {codec}: the encoder {spec.encoder} is missing from this PyAV/FFmpeg build "
            "(see `ca2vdm info`); use --codec h264"
        ) from None
    q = spec.default_quality if quality is None else quality
    lo, hi = spec.quality_range
    if not lo <= q <= hi:
        raise OutputError(
            f"--crf {q} is out of range for --codec {codec} ({spec.quality_meaning}, {lo}..{hi}; "
            f"lower is better, default {spec.default_quality})"
        )
    return spec, q


def check_frame_size(width: int, height: int) -> None:
    """yuv420p halves the chroma planes, so both sides must be even (FFmpeg fails opaquely otherwise)."""
    if width < 2 or height < 2 or width % 2 or height % 2:
        even = f"{width + width % 2}x{height + height % 2}"
        raise OutputError(
            f"frame size {width}x{height} cannot be encoded: yuv420p video needs an even width and height "
            f"(e.g. {even}); use a model whose resolution is even"
        )


def check_output_path(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing file (unless overwrite), a directory, or a parent that cannot be created/written."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise OutputError(
            f"--out {path}: ca2vdm writes fragmented MP4; use a name ending in {', '.join(VIDEO_SUFFIXES)}"
        )
    if path.is_dir():
        raise OutputError(f"--out {path} is a directory; give a file name such as {path / 'video.mp4'}")
    if path.exists() and not overwrite:
        raise OutputError(
            f"--out {path} already exists; pass --overwrite to replace it or choose another name"
        )
    _ensure_writable_dir(path.parent, f"--out {path}")
    return path


def _ensure_writable_dir(directory: Path, what: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what}: cannot create directory {directory} ({exc.strerror or exc})") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"{what}: directory {directory} is not writable; choose another location")
    try:  # os.access trusts permission bits; root passes it on /proc and read-only mounts, so try for real
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise OutputError(
            f"{what}: cannot write files in {directory} ({exc.strerror or exc}); choose another location"
        ) from None


# ----------------------------------------------------------------------------- image in
def read_image(path: str | Path, width: int, height: int) -> tuple[np.ndarray, list[str]]:
    """Load an image as uint8 (height, width, 3) RGB, converting the mode and resizing + center-cropping to
    the target size. Returns the pixels and the notices saying what was changed. InputError if unreadable."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise InputError(f"--image {path} does not exist; pass the path of a PNG, JPEG or WebP file")
    if path.is_dir():
        raise InputError(f"--image {path} is a directory; pass the path of an image file")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except UnidentifiedImageError:
        raise InputError(
            f"--image {path} is not an image PIL can read (corrupt or unsupported format); "
            "save it as PNG or JPEG"
        ) from None
    except PermissionError:
        raise InputError(f"--image {path} cannot be read: permission denied") from None
    except (OSError, ValueError, SyntaxError) as exc:  # a known format with broken or truncated data
        raise InputError(
            f"--image {path} is corrupt or truncated ({exc}); save it again as PNG or JPEG"
        ) from None
    notices = []
    if image.mode != "RGB":
        dropped = " (alpha dropped)" if "A" in image.getbands() or "transparency" in image.info else ""
        notices.append(f"image {path.name} is {image.mode}, converted to RGB{dropped}")
        image = image.convert("RGB")
    w, h = image.size
    if (w, h) != (width, height):
        scale = max(width / w, height / h)  # cover the target, then crop the overflow evenly
        rw, rh = max(width, round(w * scale)), max(height, round(h * scale))
        image = image.resize((rw, rh), Image.Resampling.LANCZOS)
        left, top = (rw - width) // 2, (rh - height) // 2
        image = image.crop((left, top, left + width, top + height))
        how = "resized" if (rw, rh) == (width, height) else "resized and center-cropped"
        notices.append(f"image {path.name} is {w}x{h}, {how} to the model's {width}x{height}")
    return np.asarray(image, dtype=np.uint8).copy(), notices


# ----------------------------------------------------------------------------- video out
class VideoWriter:
    """Writes uint8 (T, H, W, 3) frame batches to a fragmented MP4. Use as a context manager or call
    `close()`: closing flushes the encoder, so every frame written so far ends up in the file."""

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: float,
        codec: str = "h264",
        quality: int | None = None,
        keyframe_interval: int = 8,
    ) -> None:
        import av

        check_frame_size(width, height)
        spec, q = check_codec(codec, quality)
        if fps <= 0:
            raise OutputError(f"--fps {fps} must be > 0")
        self.path, self.width, self.height = Path(path), width, height
        self.fps = Fraction(fps).limit_denominator(1001)
        self.codec, self.quality = codec, q
        self.frames_written = 0
        try:
            self._container: Any = av.open(str(self.path), "w", format="mp4", options=MUXER_OPTIONS)
        except (OSError, av.FFmpegError) as exc:
            raise OutputError(f"cannot open {self.path} for writing: {exc}") from None
        stream = self._container.add_stream(
            spec.encoder, rate=self.fps, options=spec.options(q, keyframe_interval)
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        self._stream: Any = stream
        self._closed = False

    def write(self, frames: np.ndarray) -> None:
        """Encode and mux frames (T, H, W, 3) uint8; each packet reaches the file as it leaves the encoder."""
        import av

        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3) or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be uint8 (T, {self.height}, {self.width}, 3), got {frames.dtype} {frames.shape}"
            )
        for frame in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = self.frames_written
            vf.time_base = 1 / self.fps
            self._container.mux(self._stream.encode(vf))
            self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and close the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrameDirWriter:
    """Writes each frame as `frame_000000.png`, … (numbered from `start`) into a directory."""

    def __init__(self, directory: str | Path, overwrite: bool = False, start: int = 0) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise OutputError(f"--frames-dir {self.directory} is a file; give a directory")
        if not overwrite and self.directory.is_dir() and any(self.directory.glob("frame_*.png")):
            raise OutputError(
                f"--frames-dir {self.directory} already holds frame_*.png files; pass --overwrite or choose "
                "another directory"
            )
        _ensure_writable_dir(self.directory, f"--frames-dir {self.directory}")
        self.next_index = start

    def write(self, frames: np.ndarray) -> None:
        from PIL import Image

        for frame in frames:
            Image.fromarray(frame).save(self.directory / f"frame_{self.next_index:06d}.png")
            self.next_index += 1


# ----------------------------------------------------------------------------- readers
@dataclass(frozen=True)
class VideoInfo:
    frames: int  # counted by decoding: fragmented MP4 headers report 0
    width: int
    height: int
    fps: float
    codec: str


def read_frames(path: str | Path) -> np.ndarray:
    """Decode every video frame as uint8 (T, H, W, 3) RGB."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise InputError(f"{path} holds no decodable video frames")
    return np.stack(frames)


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count (by decoding), size, frame rate and codec of a video file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        rate = stream.average_rate or stream.base_rate or 0
        return VideoInfo(count, stream.width, stream.height, float(rate), stream.codec_context.name)

"""Media I/O: MP4s written with PyAV and read back, the durability of the growing file, codec/size checks,
PNG frames, and the conditioning image (conversion, resize + center-crop, clear errors)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from ca2vdm_cli.engine.jobs import video_name
from ca2vdm_cli.errors import InputError, OutputError
from ca2vdm_cli.media.video import (
    CODECS,
    FrameDirWriter,
    VideoWriter,
    check_codec,
    check_output_path,
    probe_video,
    read_frames,
    read_image,
)


def moving_gradient(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Smooth frames (T, H, W, 3) uint8 that a lossy codec reproduces closely; each frame differs."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [
        np.stack([(x * 4 + 8 * t) % 256, (y * 4) % 256, np.full_like(x, 40 + 10 * t)], axis=-1)
        for t in range(n)
    ]
    return np.stack(frames).astype(np.uint8)


@pytest.mark.parametrize("codec", list(CODECS))
def test_every_codec_round_trips_count_size_and_rate(tmp_path, codec):
    frames = moving_gradient(10)
    path = tmp_path / f"{codec}.mp4"
    with VideoWriter(path, 64, 48, fps=12, codec=codec, keyframe_interval=4) as writer:
        writer.write(frames[:4])
        writer.write(frames[4:])
    assert writer.frames_written == 10
    info = probe_video(path)
    assert (info.frames, info.width, info.height, info.fps) == (10, 64, 48, 12.0)
    decoded = read_frames(path)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    error = np.abs(decoded.astype(int) - frames.astype(int)).mean()
    assert error < 6, f"{codec}: mean abs error {error:.1f} levels"  # lossy, but the same pictures


def test_quality_setting_changes_the_encoding(tmp_path):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (6, 48, 64, 3), dtype=np.uint8)
    sizes = {}
    for crf in (10, 40):
        with VideoWriter(tmp_path / f"{crf}.mp4", 64, 48, 8, "h264", quality=crf) as writer:
            writer.write(noise)
        sizes[crf] = (tmp_path / f"{crf}.mp4").stat().st_size
    assert sizes[40] < sizes[10] / 2


def test_the_file_is_playable_while_it_grows(tmp_path):
    """Fragmented MP4 flushed per packet: everything but the newest frame is readable before close."""
    path = tmp_path / "growing.mp4"
    writer = VideoWriter(path, 64, 48, 8, "h264", keyframe_interval=4)
    writer.write(moving_gradient(4))
    writer.write(moving_gradient(4))
    assert probe_video(path).frames >= 7  # the muxer writes a frame's fragment when the next packet arrives
    writer.close()
    assert probe_video(path).frames == 8


def test_odd_frame_size_is_refused_before_the_file_exists(tmp_path):
    path = tmp_path / "odd.mp4"
    with pytest.raises(OutputError, match=r"63x48 .*even width and height \(e\.g\. 64x48\)"):
        VideoWriter(path, 63, 48, 8)
    assert not path.exists()


def test_codec_and_quality_errors_name_the_range():
    with pytest.raises(OutputError, match="--crf 60 is out of range for --codec h264.*0..51"):
        check_codec("h264", 60)
    with pytest.raises(OutputError, match="--codec 'vp9' is not one of h264, av1, mpeg4"):
        check_codec("vp9")
    assert check_codec("mpeg4")[1] == CODECS["mpeg4"].default_quality


def test_output_path_checks(tmp_path):
    existing = tmp_path / "a.mp4"
    existing.write_bytes(b"x")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        check_output_path(existing, overwrite=False)
    assert check_output_path(existing, overwrite=True) == existing
    with pytest.raises(OutputError, match=r"ending in \.mp4"):
        check_output_path(tmp_path / "a.avi", overwrite=False)
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        check_output_path(tmp_path / "dir.mp4", overwrite=True)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputError, match="cannot create directory"):
        check_output_path(blocker / "out.mp4", overwrite=False)
    assert check_output_path(tmp_path / "new" / "deep" / "v.mp4", False).parent.is_dir()


def test_default_output_name_is_a_safe_slug():
    assert re.fullmatch(
        r"a-red-circle-moving-right-[0-9a-f]{6}-s7\.mp4", video_name("A red circle, moving right!", [], 7)
    )
    assert re.fullmatch(r"video-[0-9a-f]{6}-s0\.mp4", video_name("", [], 0))
    assert video_name("../../etc/passwd", [], 1).startswith("etc-passwd-")
    assert video_name("a", ["x.png"], 1) != video_name("a", [], 1)  # the image is part of the name


def test_frames_dir_writes_numbered_pngs_and_refuses_to_clobber(tmp_path):
    frames = moving_gradient(3)
    writer = FrameDirWriter(tmp_path / "pngs")
    writer.write(frames[:2])
    writer.write(frames[2:])
    files = sorted((tmp_path / "pngs").glob("*.png"))
    assert [f.name for f in files] == ["frame_000000.png", "frame_000001.png", "frame_000002.png"]
    assert np.array_equal(np.asarray(Image.open(files[2])), frames[2])  # PNG is lossless
    with pytest.raises(OutputError, match="already holds frame_"):
        FrameDirWriter(tmp_path / "pngs")
    FrameDirWriter(tmp_path / "pngs", overwrite=True)


# ----------------------------------------------------------------------------- the conditioning image
def test_image_of_the_right_size_is_unchanged(tmp_path):
    pixels = moving_gradient(1, 32, 32)[0]
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image, notices = read_image(tmp_path / "a.png", 32, 32)
    assert np.array_equal(image, pixels) and notices == []


def test_image_is_resized_and_center_cropped_with_a_notice(tmp_path):
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 20:40] = 255  # a white centre third on black: the crop must keep it centred
    Image.fromarray(wide).save(tmp_path / "wide.png")
    image, notices = read_image(tmp_path / "wide.png", 32, 32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert notices == ["image wide.png is 60x20, resized and center-cropped to the model's 32x32"]
    # 60x20 scaled by 1.6 -> 96x32; the crop keeps columns 32..63, i.e. the white band (32..63) fills it
    assert image[:, 4:28].min() > 200
    _, notices = read_image(_save(tmp_path / "big.png", np.zeros((64, 64, 3), np.uint8)), 32, 32)
    assert notices == ["image big.png is 64x64, resized to the model's 32x32"]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("L", "is L, converted to RGB"), ("RGBA", "is RGBA, converted to RGB (alpha dropped)"), ("P", "is P")],
)
def test_non_rgb_images_are_converted_with_a_notice(tmp_path, mode, expected):
    Image.new(mode, (32, 32)).save(tmp_path / "x.png")
    image, notices = read_image(tmp_path / "x.png", 32, 32)
    assert image.shape == (32, 32, 3)
    assert len(notices) == 1 and expected in notices[0]


def test_bad_images_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="missing.png does not exist"):
        read_image(tmp_path / "missing.png", 32, 32)
    with pytest.raises(InputError, match="is a directory"):
        read_image(tmp_path, 32, 32)
    (tmp_path / "garbage.png").write_bytes(b"this is not an image at all")
    with pytest.raises(InputError, match="not an image PIL can read"):
        read_image(tmp_path / "garbage.png", 32, 32)
    _save(tmp_path / "whole.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut.png is corrupt or truncated \(.*\); save it again as PNG"):
        read_image(tmp_path / "cut.png", 32, 32)


def _save(path, pixels):
    Image.fromarray(pixels).save(path)
    return path

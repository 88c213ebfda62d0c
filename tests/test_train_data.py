"""Training data: caption files, video folders decoded with PyAV (real MP4s), resize/center-crop, the
latent cache on disk, and window sampling."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch

from ca2vdm_cli.errors import InputError
from ca2vdm_cli.sprites import world as sprites
from ca2vdm_cli.train import data


def write_mp4(path, frames: int, width: int, height: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            img = np.full((height, width, 3), (i * 20) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def pooled_encoder(frames: np.ndarray) -> torch.Tensor:
    """Stand-in VAE: uint8 (B, T, H, W, 3) -> (B, 4, T, H/4, W/4) by 4×4 average pooling (+ a channel)."""
    x = torch.from_numpy(frames).float().permute(0, 4, 1, 2, 3) / 127.5 - 1  # (B, 3, T, H, W)
    x = torch.nn.functional.avg_pool3d(x, (1, 4, 4))
    return torch.cat([x, x.mean(1, keepdim=True)], dim=1)


def test_read_captions_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(
        json.dumps({"path": "a.mp4", "caption": "sky"}) + "\n\n" + '{"path": "b.mp4", "caption": "sea"}\n'
    )
    assert data.read_captions(jsonl) == {"a.mp4": "sky", "b.mp4": "sea"}
    csv = tmp_path / "c.csv"
    csv.write_text('path,caption\na.mp4,"sky, blue"\n')
    assert data.read_captions(csv) == {"a.mp4": "sky, blue"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.mp4"}\n')
    with pytest.raises(InputError, match="bad.jsonl:1"):
        data.read_captions(bad)
    with pytest.raises(InputError, match="does not exist"):
        data.read_captions(tmp_path / "missing.csv")


def test_resize_center_crop():
    frame = np.zeros((40, 80, 3), dtype=np.uint8)
    frame[:, 20:60] = 255  # the centre square
    out = data.resize_center_crop(frame, 16)
    assert out.shape == (16, 16, 3) and out.mean() > 250


def test_folder_clips_from_real_videos(tmp_path):
    write_mp4(tmp_path / "a.mp4", 20, 48, 32)
    write_mp4(tmp_path / "b.mp4", 7, 32, 32)
    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"path": "a.mp4", "caption": "first"}\n{"path": "b.mp4", "caption": "second"}\n')
    clips = data.folder_clips(tmp_path, captions, clip_frames=4, stride=2, size=16, encode=pooled_encoder)
    # a.mp4: 10 frames at stride 2 -> 2 clips of 4; b.mp4: 4 frames -> 1 clip
    assert clips.latents.shape == (3, 4, 4, 4, 4) and clips.latents.dtype == torch.float16
    assert clips.captions == ["first", "first", "second"] and not clips.start_is_described
    # frame i has grey level 20·i: the second clip of a.mp4 starts at frame 8
    grey = (clips.latents[1, 0, 0].float().mean() + 1) * 127.5
    assert abs(float(grey) - 160) < 8


def test_latent_cache_round_trip_and_fingerprint(tmp_path):
    clips = data.LatentClips(torch.randn(3, 10, 4, 2, 2).half(), ["a", "b", "c"], True)
    path = tmp_path / "latents.safetensors"
    data.save_clips(path, clips, {"videos": 3})
    loaded = data.load_clips(path, {"videos": 3})
    assert (
        loaded is not None
        and torch.equal(loaded.latents, clips.latents)
        and loaded.captions == clips.captions
    )
    assert data.load_clips(path, {"videos": 4}) is None  # other settings: rebuilt


def test_window_sampling():
    latents = (
        torch.arange(2 * 10, dtype=torch.float16).view(2, 10, 1, 1, 1).expand(2, 10, 4, 2, 2).contiguous()
    )
    clips = data.LatentClips(latents, ["a", "b"], True)
    gen = torch.Generator().manual_seed(0)
    x, caps = clips.sample(gen, 16, 4, from_start=True)
    assert x.shape == (16, 4, 4, 2, 2) and all((x[:, 0, 0, 0, 0] % 10) == 0)
    x, _ = clips.sample(gen, 64, 4, from_start=False)
    starts = (x[:, 0, 0, 0, 0] % 10).long()
    assert starts.max() <= 6 and len(set(starts.tolist())) > 3
    assert torch.equal(x[:, 0, 1:, 0, 0] - x[:, 0, :1, 0, 0], torch.arange(1, 4).float().expand(64, 3))


def test_sprite_clips():
    clips = data.sprite_clips(5, 6, pooled_encoder, batch=2)
    assert clips.latents.shape == (5, 6, 4, 16, 16) and clips.start_is_described
    assert clips.captions == [sprites.sample_scene(i).prompt for i in range(5)]

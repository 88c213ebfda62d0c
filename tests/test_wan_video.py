"""A causal Wan model directory with the real component classes — a tiny `AutoencoderKLWan` (`vae.kind =
"wan"`: 1 + 4·(L − 1) video frames for L latent frames) and a tiny `UMT5EncoderModel` — through the pipeline
and `ca2vdm generate`: the streamed per-chunk decode equals a whole-clip decode, a resumed render rebuilds
the decoder state from the replayed chunks, `--frames` follows the VAE's frame grid, and the frame-wise
model starts from `--image`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ca2vdm_cli.engine.pipeline import Pipeline
from ca2vdm_cli.engine.request import GenerateRequest, check_inputs
from ca2vdm_cli.media.video import probe_video
from ca2vdm_cli.store.card import read_card
from tests.cli_helpers import run_main, save_image
from tests.factories import write_tiny_wan_video_dir


@pytest.fixture(scope="module")
def chunk_dir(tmp_path_factory):
    return write_tiny_wan_video_dir(tmp_path_factory.mktemp("models") / "chunk", frame_wise=False)


@pytest.fixture(scope="module")
def frame_dir(tmp_path_factory):
    return write_tiny_wan_video_dir(tmp_path_factory.mktemp("models") / "frame", frame_wise=True)


@pytest.fixture(scope="module")
def chunk_pipeline(chunk_dir):
    return Pipeline.from_model_dir(chunk_dir)


def test_frames_follow_the_vae_grid_and_whole_blocks(chunk_dir):
    card = read_card(chunk_dir)
    assert card.frames_per_latent == 4
    inputs = check_inputs(card, GenerateRequest(prompt="a red circle", frames=20))
    # 20 frames need 1 + ceil(19 / 4) = 6 latent frames = 3 blocks of 2, which decode to 21 frames
    assert inputs.chunks == [2, 2, 2] and inputs.frames == 20
    assert any("3 blocks (21 frames)" in n and "keeps the first 20" in n for n in inputs.notices)
    exact = check_inputs(card, GenerateRequest(prompt="a", frames=21))
    assert exact.chunks == [2, 2, 2] and not any("blocks" in n for n in exact.notices)


def test_streamed_chunks_equal_a_whole_clip_decode(chunk_pipeline):
    chunks = list(chunk_pipeline.generate(GenerateRequest(prompt="a blue square", frames=21, seed=2)))
    frames = np.concatenate([c.frames for c in chunks])  # (21, 64, 64, 3)
    assert [len(c.frames) for c in chunks] == [5, 8, 8] and [c.start for c in chunks] == [0, 5, 13]
    latents = torch.cat([c.latents for c in chunks], dim=2)  # (1, 16, 6, 8, 8)
    whole = chunk_pipeline.decode(latents)[0]
    assert whole.shape == frames.shape == (21, 64, 64, 3)
    np.testing.assert_array_equal(frames, whole)
    assert frames.std() > 1  # not a constant image


def test_a_resumed_render_decodes_exactly_what_the_uninterrupted_one_did(chunk_pipeline):
    request = GenerateRequest(prompt="a green circle moving left", frames=20, seed=7)
    full = list(chunk_pipeline.generate(request))
    resumed = list(chunk_pipeline.generate(request, replay=[c.latents for c in full[:2]]))
    assert [c.replayed for c in resumed] == [True, True, False]
    for a, b in zip(full, resumed, strict=True):
        np.testing.assert_array_equal(a.frames, b.frames)
        assert a.start == b.start
    assert sum(len(c.frames) for c in full) == 20  # the last block's extra frame is trimmed


def test_umt5_prompts_reach_the_model_with_zero_padding(chunk_pipeline):
    y, mask = chunk_pipeline.encode_prompts(["a red circle", "a blue square moving right"])
    assert y.shape == (2, 16, 32) and mask.sum(dim=1).tolist() == [4, 6]  # words + </s>
    assert torch.all(y[0, 4:] == 0) and torch.all(y[1, 6:] == 0) and y[0, :4].abs().sum() > 0


def test_generate_from_an_image_on_the_frame_wise_model(monkeypatch, capsys, frame_dir, tmp_path):
    first = save_image(tmp_path / "first.png", 64, 64)
    out = tmp_path / "i2v.mp4"
    args = ("generate", "--model", frame_dir, "-p", "a red circle", "-i", first, "--frames", 10,
            "--out", out, "--seed", 4, "--json")  # fmt: skip
    code, stdout, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    result = json.loads(stdout)
    # the image is latent frame 0 (1 video frame); a block of 1 latent = 4 frames: 1 + 3 blocks = 13 -> 10
    assert result["given_frames"] == 1 and result["latent_frames"] == 4 and result["frames"] == 10
    probe = probe_video(out)
    assert probe.frames == 10 and (probe.width, probe.height) == (64, 64)

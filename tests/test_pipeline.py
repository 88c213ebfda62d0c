"""The generate pipeline on a tiny random model directory: frame-count semantics, chunk streaming,
determinism, resume by replay, text-to-video, input validation and the KV-cache size estimate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ca2vdm_cli.engine.pipeline import Pipeline
from ca2vdm_cli.engine.request import GenerateRequest, check_inputs
from ca2vdm_cli.errors import ConfigError, InputError
from ca2vdm_cli.models.stdit.sizes import kv_cache_bytes
from tests.conftest import tiny_config, tiny_model
from tests.factories import tiny_card, write_tiny_model_dir


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return Pipeline.from_model_dir(write_tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny"))


@pytest.fixture
def first_frame(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "first.png"
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def run(pipeline, replay=(), **kw):
    """The chunks of one request, and its progress events of the AR steps (not those of encoding)."""
    events = []
    chunks = list(pipeline.generate(GenerateRequest(**kw), events.append, replay=replay))
    return chunks, [e for e in events if e.stage in ("denoise", "denoised", "chunk")]


def test_frames_counts_the_given_frame_and_chunks_stream_in_order(pipeline, first_frame):
    # 11 frames = 1 given + 10 new; the card's chunk is 4 -> AR steps of 4, 4, 2
    chunks, events = run(pipeline, prompt="a red circle", images=(first_frame,), frames=11, seed=3)
    assert [c.frames.shape for c in chunks] == [(5, 32, 32, 3), (4, 32, 32, 3), (2, 32, 32, 3)]
    assert [(c.index, c.start, c.num_given) for c in chunks] == [(0, 0, 1), (1, 5, 0), (2, 9, 0)]
    assert [tuple(c.latents.shape) for c in chunks] == [(1, 4, 4, 8, 8), (1, 4, 4, 8, 8), (1, 4, 2, 8, 8)]
    assert all(c.frames.dtype == np.uint8 for c in chunks)
    denoise = [e for e in events if e.stage == "denoise"]
    done = [e.frames_done for e in events if e.stage == "chunk"]
    assert len(denoise) == 3 * pipeline.card.sampling.steps and done == [5, 9, 11]
    # the given frame is the VAE round trip of the image: close to it, not a generated frame
    image = np.asarray(Image.open(first_frame)).astype(float)
    assert np.abs(chunks[0].frames[0] - image).mean() < np.abs(chunks[0].frames[1] - image).mean()


def test_same_seed_same_frames_other_seed_other_frames(pipeline, first_frame):
    kw = dict(prompt="a blue square", images=(first_frame,), frames=6)
    a, _ = run(pipeline, seed=1, **kw)
    b, _ = run(pipeline, seed=1, **kw)
    c, _ = run(pipeline, seed=2, **kw)
    assert all(np.array_equal(x.frames, y.frames) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[-1].frames, c[-1].frames)


def test_replaying_finished_chunks_resumes_exactly(pipeline, first_frame):
    """What resume builds on: the latents of chunks already written rebuild the cache and are decoded again
    (marked replayed, without progress events), so the consumer gets the whole video once, equal to the
    uninterrupted run."""
    kw = dict(prompt="a green triangle", images=(first_frame,), frames=14, seed=5)
    full, _ = run(pipeline, **kw)
    resumed, events = run(pipeline, replay=(full[0].latents, full[1].latents), **kw)
    assert [(c.index, c.start, c.num_given, c.replayed) for c in resumed] == [
        (0, 0, 1, True), (1, 5, 0, True), (2, 9, 0, False), (3, 13, 0, False)
    ]  # fmt: skip
    assert all(np.array_equal(x.frames, y.frames) for x, y in zip(full, resumed, strict=True))
    assert all(torch.equal(x.latents, y.latents) for x, y in zip(full, resumed, strict=True))
    assert events[0].frames_done == 9 and {e.chunk for e in events} == {2, 3}
    # every chunk replayed: nothing left to generate, the video comes back whole
    again, events = run(pipeline, replay=tuple(c.latents for c in full), **kw)
    assert all(np.array_equal(x.frames, y.frames) for x, y in zip(full, again, strict=True))
    assert events == []


def test_replayed_chunks_of_another_shape_are_refused(pipeline, first_frame):
    kw = dict(prompt="a", images=(first_frame,), frames=14, seed=5)
    with pytest.raises(InputError, match=r"resumed chunk 0 has shape \(1, 4, 3, 8, 8\).*\(1, 4, 4, 8, 8\)"):
        run(pipeline, replay=(torch.zeros(1, 4, 3, 8, 8),), **kw)


def test_text_to_video_generates_every_frame(pipeline):
    chunks, _ = run(pipeline, prompt="a white circle", frames=6, seed=0)
    assert [c.frames.shape[0] for c in chunks] == [4, 2] and chunks[0].num_given == 0


def test_given_frames_alone_make_the_video(pipeline, first_frame):
    chunks, events = run(pipeline, images=(first_frame, first_frame), frames=2, seed=0)
    assert len(chunks) == 1 and chunks[0].frames.shape == (2, 32, 32, 3) and chunks[0].num_given == 2
    assert events == []


def test_sampling_overrides_reach_the_sampler(pipeline):
    _, events = run(pipeline, prompt="x", frames=3, seed=0, steps=2, sampler="iddpm", chunk=3)
    assert {e.num_steps for e in events} == {2} and events[-1].chunk_frames == 3


# ----------------------------------------------------------------------------- validation (card only)
def test_input_errors_name_the_value_and_the_fix(first_frame):
    card = tiny_card()
    with pytest.raises(InputError, match=r"--frames 0: a video needs at least 1 frame"):
        check_inputs(card, GenerateRequest(frames=0))
    with pytest.raises(InputError, match="--frames 1 is fewer than the 2 given images.*--frames 2 or more"):
        check_inputs(card, GenerateRequest(images=(first_frame, first_frame), frames=1))
    with pytest.raises(InputError, match="--seed -1"):
        check_inputs(card, GenerateRequest(seed=-1))
    with pytest.raises(ConfigError, match="cache_frames \\+ chunk = 30 \\+ 4 exceeds"):
        check_inputs(card, GenerateRequest(cache_frames=30))
    image_only = tiny_card(card_overrides={"text_to_video": False})
    with pytest.raises(InputError, match="cannot start from text alone; pass a first frame with --image"):
        check_inputs(image_only, GenerateRequest(prompt="a red circle", frames=5))
    fixed = tiny_card(tpe_mode="fixed")
    with pytest.raises(InputError, match="fixed temporal positions and can make at most 33 frames"):
        check_inputs(fixed, GenerateRequest(images=(first_frame,), frames=40))


def test_notices_for_prompts_the_model_cannot_use(first_frame):
    no_text = tiny_card(caption_channels=0)
    checked = check_inputs(no_text, GenerateRequest(prompt="a red circle", images=(first_frame,), frames=3))
    assert checked.notices == ["model 'tiny' is not text-conditioned: the prompt is ignored"]
    checked = check_inputs(tiny_card(), GenerateRequest(prompt="", images=(first_frame,), frames=3))
    assert "null caption" in checked.notices[0]
    assert checked.chunks == [2] and checked.num_given == 1


@pytest.mark.parametrize(("pe_mode", "pe_frames", "cfg_scale"), [("prev_frames", 3, 1.0), ("off", 0, 4.0)])
def test_cache_estimate_equals_the_allocated_cache(pe_mode, pe_frames, cfg_scale):
    config = tiny_config(pe_mode=pe_mode, pe_frames=pe_frames)
    model = tiny_model(dtype=torch.bfloat16, pe_mode=pe_mode, pe_frames=pe_frames)
    rows = 2 if cfg_scale != 1.0 else 1
    expected = model.new_cache(rows, 9).nbytes
    assert kv_cache_bytes(config, rows, 9, 2) == expected
    # D·rows·(L + N)·S·2C·bytes, spelled out for the tiny model (D=3, S=16, C=64, bf16)
    assert expected == 3 * rows * (9 + pe_frames) * 16 * 2 * 64 * 2

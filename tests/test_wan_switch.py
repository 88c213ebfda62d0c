"""Prompt timelines (LongLive's prompt switching) on the causal Wan family: at a switch the prompt's cross
K/V are replaced and the newest past frames are re-encoded at t = 0 under the new prompt, the sinks keeping
the first prompt's K/V. Checked: a switch to the same prompt under global attention changes nothing; with a
window the sinks are untouched and the blocks before the switch are those of a one-prompt run; the ring's
`restart`; and the CLI's `--prompt ... --at FRAME` with its errors."""

from __future__ import annotations

import json

import pytest
import torch

from ca2vdm_cli.engine.ring import FrameRing
from ca2vdm_cli.models.wan import family as wan
from ca2vdm_cli.models.wan.spec import WanSampling
from tests.cli_helpers import run_main
from tests.factories import tiny_wan_model, write_tiny_wan_dir

LATENT = (4, 4)


def prompt(seed: int) -> torch.Tensor:
    return torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(seed))


def run(model, sampling, switches=None, denoiser=None, y=None):
    chunks = wan.sample_video(
        model, sampling, num_frames=12, seeds=[0], latent_size=LATENT, y=prompt(1) if y is None else y,
        engine=denoiser or "cache", switches=switches,
    )  # fmt: skip
    return list(chunks)


def test_ring_restart_keeps_the_sinks_and_numbers_frames_from_the_restart():
    ring = FrameRing(capacity=5, sink=2)
    ring.advance(9)  # holds 0, 1 (sinks) and 6, 7, 8
    ring.restart(7)
    assert ring.written == 7 and ring.held_frames() == [0, 1] and ring.num_held == 2
    assert [slot for _, _, slot in ring.write_plan(3)] == [2, 3, 4]  # right after the sinks, contiguous
    ring.advance(3)
    assert ring.held_frames() == [0, 1, 7, 8, 9] and ring.slot_frames() == [0, 1, 7, 8, 9]
    ring.advance(1)
    assert ring.held_frames() == [0, 1, 8, 9, 10] and ring.slot(10) == 2
    with pytest.raises(ValueError, match="restart at frame 12"):
        ring.restart(12)
    ring.reset()
    assert ring.held_frames() == [] and ring.slot(2) == 2


def test_switching_to_the_same_prompt_under_global_attention_changes_nothing():
    model = tiny_wan_model()
    sampling = WanSampling(chunk=2, max_frames=16)
    plain = torch.cat(run(model, sampling), dim=2)
    same = torch.cat(run(model, sampling, switches={2: (prompt(1), None), 4: (prompt(1), None)}), dim=2)
    torch.testing.assert_close(same, plain, atol=1e-5, rtol=1e-5)


def test_a_windowed_switch_keeps_the_sinks_and_the_past_blocks():
    model = tiny_wan_model()
    sampling = WanSampling(chunk=2, window=6, sink_frames=1)
    plain = run(model, sampling)
    denoiser = wan.make_denoiser("cache", model, 1, sampling, LATENT)
    sink_k = {}

    def spy_switch(condition, original=denoiser.switch):
        sink_k["before"] = denoiser.cache.k[:, :, :, :4].clone()  # the sink frame: 2x2 tokens, all layers
        original(condition)
        sink_k["after"] = denoiser.cache.k[:, :, :, :4].clone()

    denoiser.switch = spy_switch
    switched = run(model, sampling, switches={3: (prompt(2), None)}, denoiser=denoiser)
    assert torch.equal(sink_k["before"], sink_k["after"])  # the sink keeps the first prompt's K/V
    for k in range(3):  # before the switch: the one-prompt video
        torch.testing.assert_close(switched[k], plain[k], atol=1e-6, rtol=1e-6)
    assert (switched[3] - plain[3]).abs().max() > 1e-3  # after it: the new prompt shows


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    return write_tiny_wan_dir(tmp_path_factory.mktemp("models") / "wan")


def test_generate_with_a_prompt_timeline(monkeypatch, capsys, wan_dir, tmp_path):
    out = tmp_path / "t.mp4"
    code, stdout, err = run_main(monkeypatch, capsys, "generate", "--model", wan_dir, "-p", "a red circle",
                                 "-p", "a blue square", "--at", 9, "--frames", 16, "--window", 6,
                                 "--sink-frames", 2, "--out", out, "--json", "--seed", 2)  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    assert result["timeline"] == [{"at": 9, "prompt": "a blue square"}]
    assert "--at 9: the prompt switches at frame 10, where the next block starts" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-p", "a", "-p", "b"), "2 prompts and 0 --at frames: give one --at FRAME"),
        (("-p", "a", "-p", "b", "--at", 40), "--at 40: switch frames must increase and lie in 1..15"),
        (("-p", "a", "-p", "b", "-p", "c", "--at", 5, "--at", 6), "two switches land on the AR step"),
    ],
)
def test_bad_timelines_are_one_error_line(monkeypatch, capsys, wan_dir, tmp_path, args, message):
    code, _, err = run_main(monkeypatch, capsys, "generate", "--model", wan_dir, *args, "--frames", 16,
                            "--out", tmp_path / "e.mp4")  # fmt: skip
    assert code == 1 and message in err and err.count("\n") == 1, err


def test_a_ca2vdm_model_refuses_a_timeline(monkeypatch, capsys, tmp_path):
    from tests.factories import write_tiny_model_dir

    model_dir = write_tiny_model_dir(tmp_path / "tiny")
    code, _, err = run_main(monkeypatch, capsys, "generate", "--model", model_dir, "-p", "a red", "-p",
                            "a blue", "--at", 4, "--frames", 9, "--out", tmp_path / "s.mp4")  # fmt: skip
    assert code == 1 and "cannot switch prompts mid-video" in err

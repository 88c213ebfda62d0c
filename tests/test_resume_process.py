"""Resume after a hard kill, with real processes: a render SIGKILLed after 2 chunks is resumed from its
sidecar (`generate --resume`, or re-running the batch) to a video whose decoded frames equal those of an
uninterrupted run with the same seed, and only the missing chunks are generated again."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

from ca2vdm_cli.engine.resume import sidecar_dir
from ca2vdm_cli.media.video import probe_video, read_frames
from tests.cli_helpers import LiveProcess, run_cli, run_main, save_image
from tests.factories import write_tiny_model_dir

CHUNKS = 8  # AR steps: 1 given frame + 8 chunks of 4 (the tiny card's chunk)
FRAMES = 1 + 4 * CHUNKS
SLOW = ("--frames", str(FRAMES), "--steps", "8")  # ~0.1-0.5 s per chunk: the kill lands mid-render


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    return save_image(tmp_path_factory.mktemp("images") / "first.png")


@pytest.fixture(scope="module")
def reference(model_dir, first, tmp_path_factory):
    """The uninterrupted render (seed 4), made in this process with the children's single thread: float sums
    depend on the thread count, nothing else differs from a child process."""
    import torch

    from ca2vdm_cli.cli import main

    out = tmp_path_factory.mktemp("reference") / "reference.mp4"
    args = [*render_args(model_dir, first), "--out", str(out), "--quiet"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "argv", ["ca2vdm", *map(str, args)])
            with pytest.raises(SystemExit) as exit_info:
                main()
    finally:
        torch.set_num_threads(threads)
    assert exit_info.value.code in (0, None)
    return read_frames(out)


def render_args(model_dir, first) -> list:
    return ["generate", "--model", model_dir, "-p", "a red circle", "-i", first, *SLOW, "--seed", 4]


def kill_after_two_chunks(proc: LiveProcess, marker: str) -> None:
    """SIGKILL once the process says its 2nd chunk is in the video (and so in the sidecar)."""
    try:
        proc.wait_for(marker)
        proc.proc.kill()
        code, _, _ = proc.finish()
    finally:
        proc.kill()
    assert code == -9


def saved_chunks(out) -> int:
    return json.loads((sidecar_dir(out) / "manifest.json").read_text())["chunks"]


def generated_steps(stderr: str) -> list[int]:
    """The AR steps a run generated (plain progress prints one line per generated chunk)."""
    return [int(k) for k in re.findall(r"AR step (\d+)/", stderr)]


def assert_same_video(got, expected) -> None:
    assert got.shape == (FRAMES, 32, 32, 3)  # every frame exactly once
    diff = np.abs(got.astype(int) - expected.astype(int)).max()
    print(f"max difference to the uninterrupted render: {diff} (identical: {np.array_equal(got, expected)})")
    assert diff <= 1


def test_killed_generate_resumes_to_the_uninterrupted_video(
    model_dir, first, reference, tmp_path, monkeypatch, capsys
):
    args = render_args(model_dir, first)
    out = tmp_path / "killed.mp4"
    kill_after_two_chunks(LiveProcess(*args, "--out", out), "AR step 2/")
    done = saved_chunks(out)
    assert 2 <= done < CHUNKS, done
    assert probe_video(out).frames < FRAMES  # a partial (playable) video was left behind

    code, _, err = run_main(monkeypatch, capsys, *args, "--out", out)
    assert code == 1 and "its render was interrupted; pass --resume to continue it" in err
    resumed = run_cli(*args, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == f"{out}\n"
    assert f"resuming {out} at frame {1 + 4 * done}" in resumed.stderr
    assert generated_steps(resumed.stderr) == list(range(done + 1, CHUNKS + 1))  # only the missing chunks
    assert not sidecar_dir(out).exists()
    code, stdout, err = run_main(monkeypatch, capsys, *args, "--out", out, "--resume")  # complete already
    assert code == 0 and stdout == f"{out}\n" and "nothing to do" in err
    assert_same_video(read_frames(out), reference)


def test_killed_batch_resumes_its_interrupted_item_and_skips_the_finished_one(
    model_dir, first, reference, tmp_path
):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        json.dumps({"prompt": "a blue square", "frames": 5, "seed": 5})
        + "\n"
        + json.dumps({"prompt": "a red circle", "image": str(first), "seed": 4})  # = the reference
        + "\n"
    )
    args = ["batch", jobs, "--model", model_dir, *SLOW, "--out-dir", tmp_path / "renders"]
    kill_after_two_chunks(LiveProcess(*args), "[2/2] AR step 2/")

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    results = [json.loads(line) for line in rerun.stdout.splitlines()]
    assert [r["status"] for r in results] == ["skipped", "ok"]
    resumed = results[1]["resumed_frames"]
    assert 1 + 4 * 2 <= resumed < FRAMES and (resumed - 1) % 4 == 0
    assert generated_steps(rerun.stderr) == list(range((resumed - 1) // 4 + 1, CHUNKS + 1))
    assert probe_video(results[0]["path"]).frames == 5
    assert_same_video(read_frames(results[1]["path"]), reference)

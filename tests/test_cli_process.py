"""`ca2vdm generate` as a real process: the end-to-end video, stdout hygiene, determinism across
processes, what Ctrl-C / SIGTERM / SIGKILL leave behind, flat peak memory, and a light `--help`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from ca2vdm_cli.media.video import probe_video, read_frames
from tests.cli_helpers import ROOT, LiveProcess, cli_env, run_cli, run_main, save_image
from tests.factories import write_tiny_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny")


def test_end_to_end_video_has_exactly_the_requested_frames(model_dir, tmp_path, monkeypatch, capsys):
    first = save_image(tmp_path / "first.png", height=48, width=40)  # resized + cropped to 32x32
    args = [
        "generate",
        "--model",
        model_dir,
        "--prompt",
        "a red",
        "--image",
        first,
        "--frames",
        10,
        "--seed",
        5,
    ]
    done = run_cli(*args, "--out", tmp_path / "a.mp4")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path / 'a.mp4'}\n"  # stdout carries the result and nothing else
    info = probe_video(tmp_path / "a.mp4")
    assert (info.frames, info.width, info.height, info.fps, info.codec) == (10, 32, 32, 8.0, "h264")
    assert "note: image first.png is 40x48, resized and center-cropped" in done.stderr
    # the same seed in another process (this one, with the child's thread count) gives identical frames
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums are reordered by the thread count; the child runs 1 thread
    try:
        code, _, err = run_main(monkeypatch, capsys, *args, "--out", tmp_path / "b.mp4", "-q")
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    assert np.array_equal(read_frames(tmp_path / "a.mp4"), read_frames(tmp_path / "b.mp4"))


def test_interrupted_renders_leave_playable_videos(model_dir, tmp_path):
    """Ctrl-C and SIGTERM stop at the next denoising step, close the file and report the saved frames.
    SIGKILL (no chance to clean up) right after the first chunk still leaves a decodable video holding at
    least a chunk of frames: the first chunk is the given frame + 4 new ones, and the MP4 muxer writes a
    frame's fragment when the next packet arrives, so all but the newest frame are on disk."""
    chunk, total = 4, 401  # the tiny card's chunk; far more frames than are made before the signal
    first = save_image(tmp_path / "first.png")
    runs = {}
    for name in ("SIGINT", "SIGTERM", "SIGKILL"):
        out = tmp_path / f"{name}.mp4"
        args = ["generate", "--model", model_dir, "-p", "a", "-i", first, "--frames", total, "--out", out]
        runs[name] = (LiveProcess(*args, "--seed", 0), out)  # concurrently: three imports cost one
    try:
        for name, (proc, _) in runs.items():
            proc.wait_for("AR step 1/")  # printed once chunk 0 has been handed to the writer
            proc.proc.send_signal(getattr(signal, name))
        results = {name: proc.finish() for name, (proc, _) in runs.items()}
    finally:
        for proc, _ in runs.values():
            proc.kill()

    for name, code in (("SIGINT", 130), ("SIGTERM", 143)):
        rc, stdout, stderr = results[name]
        out = runs[name][1]
        last = stderr.strip().splitlines()[-1]
        assert rc == code and stdout == "", stderr
        assert last.startswith(f"error: interrupted by {name}: ") and last.endswith(
            f"saved to {out} (playable); continue it with --resume"
        )
        saved = int(last.split(": ")[-1].split(" of ")[0])
        assert saved >= 1 + chunk and (saved - 1) % chunk == 0  # the given frame + whole chunks
        assert saved == probe_video(out).frames
    rc, _, _ = results["SIGKILL"]
    assert rc == -signal.SIGKILL
    assert probe_video(runs["SIGKILL"][1]).frames >= chunk


def _peak_rss(model_dir, out, frames: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ca2vdm_cli", "generate", "--model", str(model_dir), "-p", "a", "-q",
         "--frames", str(frames), "--seed", "0", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=cli_env(),
    )  # fmt: skip


def test_peak_memory_is_flat_in_the_number_of_frames(tmp_path):
    """4x the frames must not grow peak RSS by more than a small constant. The constant is half of what
    keeping the extra 48 frames alive would cost if their KV-cache slots were never evicted and their
    decoded float frames were held (D·S·2C·4 + 3·H·W·4 bytes per frame): a streaming pipeline with a
    bounded cache stays far below it; measured growth is typically < 1 MiB."""
    model_dir = write_tiny_model_dir(tmp_path / "m64", latent_size=(16, 16))  # 64x64 frames, S = 64
    procs = {n: _peak_rss(model_dir, tmp_path / f"{n}.mp4", n) for n in (16, 64)}
    peaks = {}
    for n, proc in procs.items():
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 0, output
        peaks[n] = usage.ru_maxrss * 1024  # KiB on Linux
        assert probe_video(tmp_path / f"{n}.mp4").frames == n
    depth, tokens, hidden, height, width = 3, 64, 64, 64, 64
    leak_per_frame = depth * tokens * 2 * hidden * 4 + 3 * height * width * 4
    allowance = 48 * leak_per_frame / 2  # ≈ 3.4 MiB
    growth = peaks[64] - peaks[16]
    print(f"peak RSS 16 frames {peaks[16] / 2**20:.1f} MiB, 64 frames {peaks[64] / 2**20:.1f} MiB")
    assert growth < allowance, f"peak RSS grew by {growth / 2**20:.2f} MiB for 48 more frames"


@pytest.mark.parametrize("command", [["generate", "--help"], ["batch", "--help"], ["info", "--help"]])
def test_help_does_not_import_heavy_libraries(command):
    code = (
        f"import sys, runpy; sys.argv = ['ca2vdm', *{command!r}]\n"
        "try:\n    runpy.run_module('ca2vdm_cli', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = ('torch', 'diffusers', 'transformers', 'av', 'PIL', 'numpy')\n"
        "print('HEAVY', [m for m in heavy if m in sys.modules])\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    print(f"{' '.join(command)}: {time.perf_counter() - start:.2f} s")
    assert "Usage" in done.stdout and "HEAVY []" in done.stdout

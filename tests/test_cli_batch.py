"""`ca2vdm batch` in-process through `main()`: text / JSONL / stdin sources, one JSON line per item on stdout,
failure isolation (a bad line in the middle), skipping finished outputs on a re-run without loading the
model, re-rendering corrupt or partial ones, duplicate outputs, per-rank result files and batch-level errors.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ca2vdm_cli.engine.jobs import output_name, parse_jobs
from ca2vdm_cli.media.video import VideoWriter, probe_video, read_frames
from tests.cli_helpers import run_main, save_image
from tests.factories import write_tiny_model_dir

FAST = ("--frames", "5", "--steps", "2")  # 1 AR step of 4 + 1 of 1 with the tiny card (chunk 4)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def batch(monkeypatch, capsys, model_dir, tmp_path):
    """`ca2vdm batch ARGS` with the tiny model and --out-dir tmp/renders; returns (code, results, stderr)."""

    def run(*args, stdin: str | None = None):
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code, out, err = run_main(
            monkeypatch, capsys, "batch", *args, "--model", model_dir, "--out-dir", tmp_path / "renders"
        )
        return code, [json.loads(line) for line in out.splitlines()], err

    return run


def name_of(line: str) -> str:
    return output_name(parse_jobs([line])[0])


def test_text_file_comments_and_blank_lines_one_json_line_per_item(batch, tmp_path):
    jobs = tmp_path / "prompts.txt"
    jobs.write_text("# shots for today\n\na red circle moving right\n   \n# skipped too\na blue square\n")
    code, results, err = batch(jobs, *FAST)
    assert code == 0, err
    assert [(r["status"], r["line"], r["prompt"], r["frames"], r["seed"]) for r in results] == [
        ("ok", 3, "a red circle moving right", 5, 0),
        ("ok", 6, "a blue square", 5, 0),
    ]
    for r, prompt in zip(results, ["a red circle moving right", "a blue square"], strict=True):
        assert r["path"] == str(tmp_path / "renders" / name_of(prompt)) and r["error"] is None
        assert probe_video(r["path"]).frames == 5 and r["seconds"] > 0
        assert not (tmp_path / "renders" / f"{name_of(prompt)}.parts").exists()  # sidecar gone when complete
    assert err.count("model tiny (") == 1  # one model load serves every item
    assert err.strip().splitlines()[-1].startswith("batch: 2 of 2 items, 2 ok, 0 skipped, 0 failed")


def test_stdin_jsonl_with_bad_lines_in_the_middle(batch, tmp_path):
    first = save_image(tmp_path / "first.png")
    lines = [
        json.dumps({"prompt": "a red", "image": str(first), "frames": 6, "seed": 3}),
        '{"prompt": "broken", "frames": }',
        json.dumps({"prompt": "a", "colour": "red"}),
        json.dumps({"prompt": "a", "image": str(tmp_path / "missing.png")}),
        json.dumps({"prompt": "zero", "frames": 0}),
        json.dumps({"prompt": "b", "out": str(tmp_path / "own" / "b.mp4"), "steps": 1}),
        "a plain prompt after the bad ones",
    ]
    code, results, err = batch("-", *FAST, stdin="\n".join(lines) + "\n")
    assert code == 1  # some items failed
    assert [(r["line"], r["status"]) for r in results] == [
        (1, "ok"), (2, "failed"), (3, "failed"), (4, "failed"), (5, "failed"), (6, "ok"), (7, "ok")
    ]  # fmt: skip
    errors = {r["line"]: r["error"] for r in results if r["error"]}
    assert "line 2: invalid JSON" in errors[2]
    assert "unknown keys ['colour']" in errors[3]
    assert f"--image {tmp_path / 'missing.png'} does not exist" in errors[4]
    assert "--frames 0: a video needs at least 1 frame" in errors[5]
    ok = {r["line"]: r for r in results if r["status"] == "ok"}
    assert ok[1]["path"].endswith("-s3.mp4") and ok[1]["frames"] == 6 and ok[1]["image"] == str(first)
    assert probe_video(ok[1]["path"]).frames == 6  # the item's frames win over --frames 5
    assert ok[6]["path"] == str(tmp_path / "own" / "b.mp4") and probe_video(ok[6]["path"]).frames == 5
    assert "failed line 2: invalid JSON" in err and "failed line 5: --frames 0" in err
    assert "3 ok, 0 skipped, 4 failed" in err.strip().splitlines()[-1]


def test_rerun_skips_complete_outputs_and_rerenders_corrupt_or_partial_ones(batch, tmp_path):
    jobs = tmp_path / "prompts.txt"
    jobs.write_text("one\ntwo\nthree\n")
    code, first, err = batch(jobs, *FAST)
    assert code == 0, err
    paths = [r["path"] for r in first]
    frames = {p: read_frames(p) for p in paths}
    stamps = {p: (tmp_path / p).stat().st_mtime_ns for p in paths}

    code, again, err = batch(jobs, *FAST)
    assert code == 0 and [r["status"] for r in again] == ["skipped"] * 3
    assert {p: (tmp_path / p).stat().st_mtime_ns for p in paths} == stamps  # nothing was rewritten
    assert "model tiny (" not in err  # nothing to render: the model is never loaded

    # a corrupt file (cut after its header) and a partial one (valid, 3 of 5 frames) are rendered again
    Path(paths[0]).write_bytes(Path(paths[0]).read_bytes()[:300])
    with VideoWriter(paths[1], 32, 32, 8) as video:
        video.write(frames[paths[1]][:3])
    code, third, err = batch(jobs, *FAST)
    assert code == 0 and [r["status"] for r in third] == ["ok", "ok", "skipped"]
    for p in paths:  # same item + seed, same video
        assert np.array_equal(read_frames(p), frames[p])


def test_duplicate_outputs_fail_and_results_go_to_a_per_rank_file(batch, tmp_path, monkeypatch, capsys):
    jobs = tmp_path / "prompts.txt"
    jobs.write_text(
        'same prompt\n{"prompt": "same prompt", "seed": 0}\n{"prompt": "same prompt", "seed": 1}\n'
    )
    results_dir = tmp_path / "results"
    code, stdout_results, err = batch(jobs, *FAST, "--results-dir", results_dir)
    assert code == 1 and stdout_results == []  # with --results-dir, stdout stays empty
    results = [json.loads(line) for line in (results_dir / "results-rank0.jsonl").read_text().splitlines()]
    assert [r["status"] for r in results] == ["ok", "failed", "ok"]
    assert "same output as line 1" in results[1]["error"] and "another seed" in results[1]["error"]


def test_image_flag_config_file_and_per_item_overrides(batch, tmp_path):
    first = save_image(tmp_path / "first.png")
    config = tmp_path / "batch.toml"
    config.write_text(f'image = "{first}"\nframes = 9\nseed = 4\n')
    code, results, err = batch(
        "-", "--config", config, "--frames", 5, stdin='a\n{"prompt": "b", "frames": 2}\n'
    )
    assert code == 0, err
    assert [(r["frames"], r["seed"], r["image"]) for r in results] == [(5, 4, str(first)), (2, 4, str(first))]
    assert [probe_video(r["path"]).frames for r in results] == [5, 2]


def test_batch_level_errors_are_one_line_with_exit_code_1(batch, tmp_path):
    code, results, err = batch(tmp_path / "nope.txt")
    assert code == 1 and results == []
    missing = tmp_path / "nope.txt"
    assert (
        err.strip()
        == f"error: job list {missing} does not exist; pass a text or JSONL file, or - to read stdin"
    )
    code, _, err = batch("-", "--text-encoder", "free", stdin="a\n")
    assert code == 2  # not a choice of batch's flag
    config = tmp_path / "free.toml"
    config.write_text('text_encoder = "free"\n')
    code, _, err = batch("-", "--config", config, stdin="a\n")
    assert code == 1 and "a batch needs device or cpu" in err
    config = tmp_path / "bad.toml"
    config.write_text('prompt = "not per batch"\n')
    code, _, err = batch("-", "--config", config, stdin="a\n")
    assert code == 1 and "unknown keys prompt" in err
    code, results, err = batch("-", stdin="# only a comment\n\n")
    assert code == 0 and results == [] and "batch: 0 of 0 items" in err


def test_an_out_of_memory_item_fails_alone(batch, tmp_path, monkeypatch):
    """Fault injection: the first VAE decode runs out of memory. That item fails with the knobs to turn,
    leaves no empty video behind, and the next item renders."""
    import torch

    from ca2vdm_cli.engine.pipeline import Pipeline

    decode, calls = Pipeline.decode, []

    def failing_once(self, latents, *args):
        calls.append(latents.shape)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return decode(self, latents, *args)

    monkeypatch.setattr(Pipeline, "decode", failing_once)
    code, results, err = batch("-", *FAST, stdin="first\nsecond\n")
    assert code == 1 and [r["status"] for r in results] == ["failed", "ok"]
    assert results[0]["error"].startswith("out of host memory while generating (chunks of 4 frames)")
    assert (
        "--cache-frames 4 (now 8)" in results[0]["error"] and "no frames were written" in results[0]["error"]
    )
    assert not (tmp_path / "renders" / name_of("first")).exists()
    assert probe_video(results[1]["path"]).frames == 5


def test_sigterm_stops_the_batch_cleanly_and_a_rerun_resumes(batch, tmp_path, monkeypatch):
    """SIGTERM (sent to this process while the 2nd chunk of the 1st item is decoded) stops at the next safe
    point: that item's failed line, the summary, exit code 143, its resume data kept; the re-run resumes it
    and renders the item that never started."""
    import os
    import signal

    from ca2vdm_cli.engine.pipeline import Pipeline

    decode, calls = Pipeline.decode, []

    def terminated_once(self, latents, *args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # only recorded by the handler; acted on at the next check
        return decode(self, latents, *args)

    jobs = tmp_path / "prompts.txt"
    jobs.write_text("first\nsecond\n")
    with monkeypatch.context() as patched:
        patched.setattr(Pipeline, "decode", terminated_once)
        code, results, err = batch(jobs, "--frames", 13, "--steps", 2)
    assert code == 128 + signal.SIGTERM
    assert [r["status"] for r in results] == ["failed"]
    assert results[0]["error"].startswith("interrupted by SIGTERM: 8 of 13 frames saved to")
    lines = err.strip().splitlines()
    assert lines[-2].startswith("batch: 1 of 2 items, 0 ok, 0 skipped, 1 failed")
    assert lines[-1] == "error: interrupted by SIGTERM; run the same batch again to resume"

    code, results, err = batch(jobs, "--frames", 13, "--steps", 2)
    assert code == 0 and [(r["status"], r["resumed_frames"]) for r in results] == [("ok", 8), ("ok", 0)]
    assert [probe_video(r["path"]).frames for r in results] == [13, 13]

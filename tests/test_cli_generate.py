"""`ca2vdm generate` / `ca2vdm info` in-process through `main()`: results on stdout, settings precedence,
notes on stderr, and every error case as one stderr line with exit code 1 (usage errors: 2)."""

from __future__ import annotations

import json

import pytest
import torch

from ca2vdm_cli.errors import InputError
from ca2vdm_cli.media.video import probe_video
from ca2vdm_cli.models.stdit.denoisers import CacheDenoiser
from tests.cli_helpers import run_main, save_image
from tests.factories import write_tiny_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def image_only_model_dir(tmp_path_factory):
    return write_tiny_model_dir(
        tmp_path_factory.mktemp("models") / "i2v", card_overrides={"text_to_video": False}
    )


@pytest.fixture
def cli(monkeypatch, capsys):
    return lambda *args: run_main(monkeypatch, capsys, *args)


def test_json_result_describes_the_video(cli, model_dir, tmp_path):
    first = save_image(tmp_path / "first.png")
    out = tmp_path / "v.mp4"
    code, stdout, err = cli("generate", "--model", model_dir, "-p", "a red", "-i", first, "--frames", 10,
                            "--seed", 5, "--out", out, "--json")  # fmt: skip
    assert code == 0, err
    assert stdout.count("\n") == 1  # exactly one JSON object
    result = json.loads(stdout)
    assert result["path"] == str(out) and result["frames"] == 10 and result["given_frames"] == 1
    assert (result["width"], result["height"], result["fps"], result["seed"]) == (32, 32, 8.0, 5)
    assert result["model"] == "tiny" and result["device"] == "cpu" and result["dtype"] == "fp32"
    assert result["cache_bytes"] == 3 * 1 * (8 + 3) * 16 * 2 * 64 * 4  # D·rows·(L+N)·S·2C·fp32, 8 cached
    assert result["peak_rss_bytes"] > 0 and result["peak_gpu_memory_bytes"] is None
    assert result["steps"] == 3 and result["sampler"] == "ddim" and result["codec"] == "h264"
    assert probe_video(out).frames == 10
    assert "model tiny" in err and "AR step 3/3 · 10/10 frames" in err and "saved 10 frames" in err


def test_flags_override_the_config_file_which_overrides_the_card(cli, model_dir, tmp_path):
    config = tmp_path / "shot.toml"
    config.write_text(
        f'model = "{model_dir}"\nprompt = "a red"\nframes = 6\nsteps = 2\nseed = 9\n'
        f'cache-frames = 4\nout = "{tmp_path / "from-config.mp4"}"\n'
    )
    code, stdout, err = cli("generate", "--config", config, "--frames", 7, "--json", "--quiet")
    assert code == 0 and err == ""  # --quiet: nothing on stderr
    result = json.loads(stdout)
    assert (result["frames"], result["steps"], result["seed"], result["cache_frames"]) == (7, 2, 9, 4)
    assert result["chunk"] == 4 and result["prefix_perturb_t"] == 50  # from the card
    assert result["path"] == str(tmp_path / "from-config.mp4")
    config.write_text('frames = 6\nsteps = "many"\n')
    code, _, err = cli("generate", "--config", config)
    assert code == 1 and "steps = 'many' must be an integer" in err
    config.write_text("frames = 6\nbogus = 1\n")
    code, _, err = cli("generate", "--config", config)
    assert code == 1 and "unknown keys bogus; valid keys: prompt, image, frames" in err


def test_frames_dir_codec_and_notes_about_the_image(cli, model_dir, tmp_path):
    rgba = save_image(tmp_path / "wide.png", height=40, width=50, mode="RGBA")
    out = tmp_path / "v.mp4"
    pngs = tmp_path / "pngs"
    code, stdout, err = cli("generate", "--model", model_dir, "-p", "a", "-i", rgba, "--frames", 5,
                            "--out", out, "--frames-dir", pngs, "--codec", "mpeg4", "--fps", 12)  # fmt: skip
    assert code == 0 and stdout == f"{out}\n"
    assert "note: image wide.png is RGBA, converted to RGB (alpha dropped)" in err
    assert "note: image wide.png is 50x40, resized and center-cropped to the model's 32x32" in err
    info = probe_video(out)
    assert (info.frames, info.codec, info.fps) == (5, "mpeg4", 12.0)
    assert len(list(pngs.glob("frame_*.png"))) == 5


def _error_cases(tmp_path, model_dir, image_only_model_dir):
    existing = tmp_path / "exists.mp4"
    existing.write_bytes(b"old")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    m = ["--model", str(model_dir)]
    return {
        "missing image": (m + ["-i", tmp_path / "nope.png"], "--image", "does not exist"),
        "image is a directory": (m + ["-i", tmp_path], "--image", "is a directory"),
        "corrupt image": (m + ["-i", tmp_path / "corrupt.png"], "corrupt.png", "is corrupt or truncated"),
        "zero frames": (m + ["--frames", "0"], "--frames 0", "at least 1 frame"),
        "negative frames": (m + ["--frames", "-3"], "--frames -3", "at least 1 frame"),
        "unknown model": (["--model", "no-such-model"], "no-such-model", "or a model directory"),
        "missing model dir": (["--model", "./no/such/dir"], "./no/such/dir", "does not exist"),
        "existing output": (m + ["--out", existing], str(existing), "pass --overwrite"),
        "unwritable output": (m + ["--out", blocker / "v.mp4"], "blocker", "cannot create directory"),
        "image needed": (["--model", str(image_only_model_dir)], "cannot start from text", "--image PATH"),
        "bad device": (m + ["--device", "tpu"], "--device 'tpu'", "auto, cpu, cuda"),
        "bad crf": (m + ["--crf", "99"], "--crf 99", "0..51"),
        "bad cache size": (
            m + ["--cache-frames", "40"],
            "cache_frames + chunk = 40 + 4",
            "cache_frames <= 29",
        ),
        "bad fps": (m + ["--fps", "0"], "--fps 0", "> 0"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing image", "image is a directory", "corrupt image", "zero frames", "negative frames",
     "unknown model", "missing model dir", "existing output", "unwritable output", "image needed",
     "bad device", "bad crf", "bad cache size", "bad fps"],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_code_1(cli, model_dir, image_only_model_dir, tmp_path, case):
    args, value, fix = _error_cases(tmp_path, model_dir, image_only_model_dir)[case]
    out = tmp_path / "out.mp4"
    code, stdout, err = cli("generate", "-p", "a", "--out", out, *args)
    assert code == 1
    assert stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert value in lines[0] and fix in lines[0]
    assert "Traceback" not in err and not out.exists()
    assert (tmp_path / "exists.mp4").read_bytes() == b"old"  # never clobbered


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda_says_so(cli, model_dir, tmp_path):
    code, _, err = cli("generate", "--model", model_dir, "--device", "cuda", "--out", tmp_path / "v.mp4")
    assert code == 1 and "CUDA is not available" in err and "--device cpu" in err


def test_usage_errors_keep_exit_code_2(cli, model_dir):
    for args in (["--sampler", "euler"], ["--frames", "many"], ["--dtype", "int8"], ["--no-such-flag"]):
        code, stdout, err = cli("generate", "--model", model_dir, *args)
        assert code == 2 and stdout == "" and "Usage" in err, args


def test_debug_shows_the_traceback(monkeypatch, capsys, model_dir):
    with pytest.raises(InputError, match="--frames 0"):
        run_main(monkeypatch, capsys, "generate", "--model", model_dir, "--frames", "0", "--debug")


def test_out_of_memory_names_the_knobs_and_keeps_the_finished_chunks(cli, model_dir, tmp_path, monkeypatch):
    real_denoise = CacheDenoiser.predict
    calls = []

    def denoise_until_memory_runs_out(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:  # chunk 0 takes the card's 3 steps, then memory runs out
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_denoise(self, *args, **kwargs)

    monkeypatch.setattr(CacheDenoiser, "predict", denoise_until_memory_runs_out)
    out = tmp_path / "v.mp4"
    first = save_image(tmp_path / "first.png")
    code, stdout, err = cli("generate", "--model", model_dir, "-p", "a", "-i", first, "--frames", 13,
                            "--seed", 0, "--out", out)  # fmt: skip
    assert code == 1 and stdout == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: out of host memory while generating")
    assert "--cache-frames 4 (now 8)" in last and "--chunk 2 (now 4)" in last and "--dtype bf16" in last
    assert last.endswith(f"5 of 13 frames saved to {out} (playable)")
    assert probe_video(out).frames == 5  # the first chunk: the given frame + 4 new ones


def test_info_reports_the_environment(cli):
    code, stdout, _ = cli("info", "--json")
    report = json.loads(stdout)
    assert code == 0 and report["torch"]["version"] == torch.__version__
    assert report["torch"]["cuda_available"] == torch.cuda.is_available()
    assert report["encoders"]["h264"] == "libx264 available"
    assert report["environment"]["HF_TOKEN"] in ("set", "unset")
    assert report["cache_dirs"]["huggingface_hub"]
    code, stdout, _ = cli("info")
    assert code == 0 and f"version: {torch.__version__}" in stdout and "encoders:" in stdout


@pytest.mark.parametrize("mode", ["cpu", "free"])
def test_text_encoder_placement_and_the_planned_memory_line(cli, model_dir, tmp_path, mode):
    code, stdout, err = cli("generate", "--model", model_dir, "-p", "a red", "--frames", 5, "--seed", 1,
                            "--out", tmp_path / f"{mode}.mp4", "--text-encoder", mode)  # fmt: skip
    assert code == 0, err
    assert "planned memory on cpu:" in err and "transformer" in err
    assert probe_video(tmp_path / f"{mode}.mp4").frames == 5


def test_bad_text_encoder_setting_in_the_config_file(cli, model_dir, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('text_encoder = "gpu0"\n')
    code, stdout, err = cli(
        "generate", "--model", model_dir, "-p", "a", "--config", config, "--out", tmp_path / "x.mp4"
    )
    assert code == 1 and "text_encoder = 'gpu0' must be device, cpu or free" in err


def test_resume_needs_the_seed_and_excludes_overwrite(cli, model_dir, tmp_path):
    out = tmp_path / "v.mp4"
    code, _, err = cli("generate", "--model", model_dir, "-p", "a", "--out", out, "--resume")
    assert code == 1 and "--resume needs the --seed of the interrupted render" in err
    code, _, err = cli("generate", "--model", model_dir, "-p", "a", "--out", out, "--resume", "--overwrite")
    assert code == 1 and "pass only one of them" in err
    # nothing to resume yet: a normal render, whose sidecar is gone once the video is complete
    code, stdout, err = cli("generate", "--model", model_dir, "-p", "a", "--frames", 5, "--seed", 2,
                            "--out", out, "--resume", "--json")  # fmt: skip
    assert code == 0 and json.loads(stdout)["resumed_frames"] == 0
    assert probe_video(out).frames == 5 and not (tmp_path / "v.mp4.parts").exists()


def test_an_output_directory_that_refuses_files_is_one_error_line(cli, model_dir):
    """/proc passes the permission check as root, but no file can be created there: refused at planning,
    before any weights are loaded, instead of a traceback from the resume data's mkdir."""
    code, stdout, err = cli(
        "generate", "--model", model_dir, "-p", "x", "--frames", 8, "--out", "/proc/x.mp4"
    )
    assert code == 1 and stdout == ""
    assert err.startswith("error: --out /proc/x.mp4: cannot write files in /proc") and err.count("\n") == 1


def test_a_chunk_longer_than_the_positions_suggests_a_valid_chunk(cli, model_dir, tmp_path):
    code, _, err = cli("generate", "--model", model_dir, "-p", "x", "--frames", 8, "--chunk", 100,
                       "--out", tmp_path / "v.mp4")  # fmt: skip
    assert code == 1 and err.count("\n") == 1
    assert "chunk=100" in err and "use chunk <= " in err and "<= -" not in err


def test_compile_renders_the_same_video_as_eager(cli, model_dir, tmp_path):
    """`generate --compile` goes through the same `engine.accel` code that `bench --compile` times."""
    from ca2vdm_cli.media.video import read_frames

    kw = ("--model", model_dir, "-p", "a red", "--frames", 6, "--seed", 1, "--json")
    code, stdout, err = cli("generate", *kw, "--out", tmp_path / "eager.mp4")
    assert code == 0, err
    code, stdout, err = cli("generate", *kw, "--out", tmp_path / "compiled.mp4", "--compile")
    assert code == 0, err
    assert json.loads(stdout)["acceleration"] == "compile"
    eager, compiled = read_frames(tmp_path / "eager.mp4"), read_frames(tmp_path / "compiled.mp4")
    assert eager.shape == compiled.shape == (6, 32, 32, 3)
    assert abs(eager.astype(float) - compiled.astype(float)).mean() < 1.0  # fp32 reorderings only

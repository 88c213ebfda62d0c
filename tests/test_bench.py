"""`ca2vdm bench`: the report's structure and its invariants (FLOPs = the analytic model, KV-cache bytes =
the formula, the per-step-cache row = steps × the shared cache, speedups consistent with the times), the
memory probes, and the error paths. No assertion on wall-clock values."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from ca2vdm_cli.bench.hardware import StepTimer, TensorTrace
from ca2vdm_cli.bench.setups import ARCHS
from ca2vdm_cli.cli import main
from ca2vdm_cli.engine.loop import chunk_lengths
from ca2vdm_cli.models.stdit.flops import run_flops
from tests.factories import write_tiny_model_dir

FAST = ["--frames", "8", "--steps", "2", "--warmup", "0", "--no-peak", "--threads", "1"]


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `ca2vdm ARGS` in-process through main() (which maps Ca2VDMError to exit code 1)."""
    monkeypatch.setattr(sys, "argv", ["ca2vdm", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def kv_bytes(cfg, rows: int, frames: int, element: int = 4) -> int:
    """D·B·L_max·S·2C (+ D·B·N·S·2C prefix-enhanced context) × element size."""
    per_frame = cfg.depth * rows * cfg.tokens_per_frame * 2 * cfg.hidden_size * element
    return per_frame * (frames + (cfg.pe_frames if cfg.has_pe else 0))


def test_bench_report_on_random_weights(monkeypatch, capsys, tmp_path):
    out = tmp_path / "bench.json"
    code, stdout, stderr = cli(monkeypatch, capsys, "bench", "--arch", "tiny", *FAST, "--json", str(out))
    assert code == 0, stderr
    assert stdout.strip() == str(out)  # stdout carries only the result
    assert "memory and FLOPs" in stderr and "per-step-cache" in stderr
    report = json.loads(out.read_text())
    spec = ARCHS["tiny"]
    cfg, sampling = spec.model, spec.sampling
    settings, env = report["settings"], report["environment"]
    assert settings["chunks"] == chunk_lengths(8, sampling.chunk) and settings["warmup_excluded"]
    assert env["torch"] == torch.__version__ and env["memory"]["peak"].startswith("host")
    engines = {e["engine"]: e for e in report["engines"]}
    assert list(engines) == ["cache", "recompute", "recompute-full"]
    for name, e in engines.items():
        expected = run_flops(
            cfg,
            name,
            rows=1,
            prefix_frames=1,
            chunks=settings["chunks"],
            steps=2,
            cache_frames=sampling.cache_frames,
        )
        assert e["flops"] == expected.total and e["flops_per_ar_step"] == expected.per_ar_step
        assert len(e["step_s"]) == len(e["step_peak_bytes"]) == len(settings["chunks"])
        assert e["denoise_s"] == pytest.approx(sum(e["step_s"]))
        assert e["e2e_s"] >= e["denoise_s"] and e["vae_decode_s"] is not None
        assert e["text_encode_s"] is not None  # the tiny arch has a (random) T5
        assert e["denoise_fps"] == pytest.approx(8 / e["denoise_s"])
        assert all(b > 0 for b in e["step_peak_bytes"])  # traced working memory
    assert engines["cache"]["kv_cache_bytes"] == kv_bytes(cfg, 1, sampling.cache_frames)
    assert engines["recompute"]["kv_cache_bytes"] == 0
    assert report["per_step_cache"]["kv_cache_bytes"] == 2 * engines["cache"]["kv_cache_bytes"]
    speedups = report["speedups"]["recompute"]
    assert speedups["recompute"]["denoise"] == 1.0
    cache_time = engines["cache"]["denoise_s"]
    assert speedups["cache"]["denoise"] == pytest.approx(engines["recompute"]["denoise_s"] / cache_time)


def test_bench_on_a_model_directory_with_json_on_stdout(monkeypatch, capsys, tmp_path):
    directory = write_tiny_model_dir(tmp_path / "tiny")
    args = ("bench", "--model", str(directory), "--engines", "cache", *FAST, "--json", "-")
    code, stdout, stderr = cli(monkeypatch, capsys, *args)
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["settings"]["weights"] == str(directory)
    assert [e["engine"] for e in report["engines"]] == ["cache"] and report["speedups"] == {}
    code, stdout, stderr = cli(monkeypatch, capsys, *args, "--random-weights")
    assert code == 0, stderr
    assert json.loads(stdout)["settings"]["weights"].startswith("random transformer weights")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "tiny", "--engines", "cache,fast"], "--engines cache,fast: choose from"),
        (["--arch", "huge"], "--arch 'huge' is not one of"),
        (["--arch", "tiny", "--cuda-graphs", "--device", "cpu"], "--cuda-graphs needs a CUDA device"),
        (["--arch", "tiny", "--device", "tpu"], "--device 'tpu' is not one of"),
        (["--arch", "tiny", "--stat", "mean"], "--stat mean: use median or min"),
        (["--model", "./no/such/dir"], "--model './no/such/dir'"),
        (["--arch", "tiny", "--model", "x"], "pass one of them"),
    ],
)
def test_bad_options_are_one_line_errors(monkeypatch, capsys, args, message):
    code, stdout, stderr = cli(monkeypatch, capsys, "bench", *args, *FAST)
    assert code == 1 and stdout == ""
    assert stderr.startswith("error: ") and message in stderr and len(stderr.strip().splitlines()) == 1


def test_plot_without_matplotlib_fails_before_running(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "matplotlib" else real(n, *a))
    code, _, stderr = cli(
        monkeypatch, capsys, "bench", "--arch", "tiny", *FAST, "--plot", str(tmp_path / "p.png")
    )
    assert code == 1 and "pip install 'ca2vdm[plot]'" in stderr and "bench tiny" not in stderr


def test_plot_is_a_png(monkeypatch, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curve.png"
    code, stdout, stderr = cli(monkeypatch, capsys, "bench", "--arch", "tiny", *FAST, "--plot", str(png))
    assert code == 0, stderr
    assert stdout.strip() == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensor_trace_measures_each_window_above_its_start():
    keep = torch.ones(250_000)  # allocated before the windows: not counted
    with TensorTrace() as trace:
        for k in range(3):
            with trace.window(f"w{k}"):
                parts = [torch.ones(1000 * (k + 1)) for _ in range(2)]  # 8 KB·(k+1) live at once
                del parts
    assert trace.peaks() == {"w0": 8000, "w1": 16000, "w2": 24000}
    assert keep.numel() == 250_000


def test_step_timer_gives_one_interval_per_pair_of_marks():
    timer = StepTimer(torch.device("cpu"))
    for _ in range(4):
        timer.mark()
    intervals = timer.intervals()
    assert len(intervals) == 3 and all(v >= 0 for v in intervals)

"""The causal Wan family through the product: a tiny Wan model directory (random weights, stand-in image
VAE, tiny T5) runs `ca2vdm generate` end to end to a real MP4 (read back with PyAV), in whole blocks
trimmed to --frames, with a window and a sink, and through the same pipeline as CausalSTDiT (cached ==
no-cache). Bad settings are one `error:` line naming the value and the fix, before any weights load. The
memory plan uses the family's KV formula; `bench --arch wan-tiny` reports cache vs recompute."""

from __future__ import annotations

import json

import pytest
import torch

from ca2vdm_cli.engine.request import GenerateRequest, check_inputs
from ca2vdm_cli.media.video import probe_video
from ca2vdm_cli.models.wan import WanConfig
from ca2vdm_cli.models.wan.spec import WanSampling, cache_bytes
from ca2vdm_cli.store.card import ModelCard, read_card
from ca2vdm_cli.store.memory import estimate_memory
from tests.cli_helpers import run_main, save_image
from tests.factories import tiny_wan_card, write_tiny_wan_dir

GIB = 1024**3


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    return write_tiny_wan_dir(tmp_path_factory.mktemp("models") / "wan")


@pytest.fixture
def cli(monkeypatch, capsys):
    return lambda *args: run_main(monkeypatch, capsys, *args)


def test_generate_writes_whole_blocks_trimmed_to_the_asked_frames(cli, wan_dir, tmp_path):
    out = tmp_path / "w.mp4"
    code, stdout, err = cli("generate", "--model", wan_dir, "-p", "a red circle", "--frames", 9,
                            "--seed", 3, "--out", out, "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    assert result["family"] == "wan" and result["sampler"] == "flow" and result["steps"] == 4
    assert result["latent_frames"] == 10 and result["frames"] == 9  # 5 blocks of 2, the last frame trimmed
    assert result["sampling"]["timesteps"] == [1000, 750, 500, 250] and result["cfg_scale"] == 1.0
    probe = probe_video(out)
    assert probe.frames == 9 and (probe.width, probe.height) == (32, 32)
    assert "whole blocks of 2 latent frames, so 5 blocks (10 frames)" in err
    assert "global attention: 16 past + the 2-frame block" in err  # the plan line says the cache layout
    # the plan line's KV bytes are the allocated cache: (16 + 2) frames x 16 tokens x 2 layers x 2·48 x fp32
    assert result["cache_bytes"] == 18 * 16 * 2 * 2 * 48 * 4


def test_a_window_with_a_sink_and_relative_positions_runs_past_the_global_capacity(cli, wan_dir, tmp_path):
    out = tmp_path / "long.mp4"
    code, stdout, err = cli("generate", "--model", wan_dir, "-p", "x", "--frames", 40, "--window", 6,
                            "--sink-frames", 2, "--positions", "relative", "--out", out, "--json",
                            "--seed", 1)  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    assert result["sampling"]["window"] == 6 and result["sampling"]["sink_frames"] == 2
    assert result["cache_bytes"] == 6 * 16 * 2 * 2 * 48 * 4  # the window, whatever the video length
    assert probe_video(out).frames == 40
    assert "window 6 latent frames incl. the 2-frame block, 2 sink, relative positions" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--cfg-scale", 3), "--cfg-scale 3: this causal Wan model is distilled without classifier-free"),
        (("--chunk", 3), "--chunk 3: this model was trained with blocks of 2 latent frames; drop --chunk"),
        (("--window", 3, "--sink-frames", 2), "--window 3 is smaller than --sink-frames 2 + the block of 2"),
        (("--sink-frames", 1), "--sink-frames 1 needs a window: pass --window W"),
        (("--frames", 40), "global attention holds 16 past frames; pass --cache-frames 38, or a window"),
        (
            ("--frames", 1100, "--window", 6),
            "past the 1024-row RoPE table with absolute positions; pass --positions relative",
        ),
        (("--sampler", "ddim"), "--sampler does not apply"),
        (("--steps", 8), "--steps does not apply"),
        (("--prefix-perturb-t", 10), "--prefix-perturb-t does not apply"),
    ],
)
def test_bad_settings_are_one_error_line(cli, wan_dir, tmp_path, args, message):
    out = tmp_path / "e.mp4"
    full = ("generate", "--model", wan_dir, "-p", "x", "--frames", 9, "--out", out, *args)
    code, stdout, err = cli(*full)
    assert code == 1 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not out.exists()


def test_an_image_on_a_text_to_video_block_model_names_the_fix(cli, wan_dir, tmp_path):
    first = save_image(tmp_path / "first.png")
    code, _, err = cli("generate", "--model", wan_dir, "-p", "x", "-i", first, "--out", tmp_path / "i.mp4")
    assert code == 1 and "takes no --image; drop --image, or use a frame-wise" in err
    assert "(--model causal-forcing-i2v)" in err


def test_stdit_models_refuse_the_wan_only_options(tmp_path):
    from tests.factories import tiny_card

    card = tiny_card()
    with pytest.raises(Exception, match="--window applies to the causal Wan family only"):
        check_inputs(card, GenerateRequest(prompt="a", frames=9, window=4))


def test_the_pipeline_cache_equals_the_no_cache_engine(wan_dir):
    from ca2vdm_cli.engine.pipeline import Pipeline

    pipeline = Pipeline.from_model_dir(wan_dir)
    runs = {}
    for engine in ("cache", "recompute"):
        request = GenerateRequest(prompt="a blue square", frames=8, seed=4, window=4, sink_frames=2,
                                  engine=engine)  # fmt: skip
        chunks = list(pipeline.generate(request))
        runs[engine] = torch.cat([c.latents for c in chunks], dim=2)  # (1, 16, 8, 8, 8)
    assert runs["cache"].shape == (1, 16, 8, 8, 8)
    torch.testing.assert_close(runs["cache"], runs["recompute"], atol=1e-5, rtol=1e-5)


def test_the_card_round_trips_and_rejects_a_bad_family_table(wan_dir):
    card = read_card(wan_dir)
    assert card.family == "wan" and isinstance(card.model, WanConfig)
    assert ModelCard.from_dict(card.to_dict()) == card
    bad = card.to_dict()
    bad["model"]["hidden_size"] = 64  # a CausalSTDiT key in a Wan card
    with pytest.raises(Exception, match="unknown model keys \\['hidden_size'\\]"):
        ModelCard.from_dict(bad)
    with pytest.raises(Exception, match="trained with blocks of 2"):
        tiny_wan_card(sampling={"chunk": 3})


def test_memory_plan_uses_the_families_kv_formula():
    """The spec's numbers: 5.62 GiB for 21 latent frames and 3.21 GiB for 12, 480x832, bf16."""
    cfg = WanConfig.wan_1_3b()
    global_21 = cache_bytes(cfg, WanSampling(max_frames=18), 1, (60, 104), 2)  # 18 past + the block
    window_12 = cache_bytes(cfg, WanSampling(window=12, sink_frames=3), 1, (60, 104), 2)
    assert round(global_21 / GIB, 2) == 5.62 and round(window_12 / GIB, 2) == 3.21
    card = ModelCard(
        name="wan-1.3b", family="wan", model=cfg, sampling=WanSampling(), height=480, width=832,
        vae_downsample=8, text_max_length=512, text_to_video=True, accepts_images=False,
    )  # fmt: skip
    estimate = estimate_memory(card, "bf16")
    assert estimate["kv_cache"] == global_21
    assert estimate["transformer"] == 1_418_996_800 * 2


def test_bench_reports_cache_and_recompute_for_wan_tiny():
    from ca2vdm_cli.bench.runner import Bench, BenchOptions
    from ca2vdm_cli.bench.setups import load_setup

    setup = load_setup(None, "wan-tiny", random_weights=True, device=torch.device("cpu"), dtype=torch.float32)
    opts = BenchOptions(frames=9, warmup_steps=0, measure_peak=False, decode=False)
    report = Bench(setup, opts).run().to_json()
    engines = {e["engine"]: e for e in report["engines"]}
    assert set(engines) == {"cache", "recompute"}
    assert report["settings"]["chunks"] == [3, 3, 3] and report["settings"]["given_frames"] == 0
    assert engines["cache"]["flops"] < engines["recompute"]["flops"]
    planned = cache_bytes(setup.model.config, setup.sampling, 1, (16, 16), 4)  # the ring + the block's slots
    assert engines["cache"]["kv_cache_bytes"] + engines["cache"]["kv_scratch_bytes"] == planned
    assert engines["recompute"]["kv_cache_bytes"] == 0


@pytest.mark.parametrize("window", [-1, 4])
@pytest.mark.parametrize("engine", ["cache", "recompute"])
def test_run_flops_match_the_flop_counter(engine, window):
    """The analytic FLOPs of a whole run (what the bench reports) equal what torch counts."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ca2vdm_cli.models.wan import family as wan
    from tests.factories import tiny_wan_model

    model = tiny_wan_model()
    sampling = WanSampling(chunk=2, window=window, sink_frames=1 if window > 0 else 0, max_frames=8)
    y = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(0))

    def run():
        list(
            wan.sample_video(model, sampling, num_frames=8, seeds=[0], latent_size=(8, 8), y=y, engine=engine)
        )

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        run()
    predicted = wan.run_flops(
        model.config, engine, rows=1, prefix_frames=0, chunks=[2] * 4, sampling=sampling, latent_size=(8, 8)
    )
    assert counter.get_total_flops() == predicted.total


def test_a_full_window_keeps_every_block_at_the_same_cost_and_cache():
    """Once the window is full, every AR step costs the same FLOPs and the cache stays the same size."""
    from ca2vdm_cli.models.wan.flops import run_flops

    cfg = WanConfig.wan_1_3b()
    steps = run_flops(cfg, "cache", rows=1, prefix_frames=0, chunks=[3] * 20, steps=4, window=12,
                      latent_hw=(60, 104)).per_ar_step  # fmt: skip
    full = 4  # blocks 0-2 fill the 9 past slots of a 12-frame window
    assert len(set(steps[full:])) == 1 and steps[full - 1] < steps[full]


def test_a_gpu_too_small_is_refused_before_loading_and_the_text_encoder_placed_by_the_plan(tmp_path):
    """The self-forcing plan (bf16: DiT 2.6, umT5 10.6, KV 5.6 GiB, ...): with 20 GiB free umT5 cannot
    sit beside the DiT, so it is encoded then freed; with 12 GiB it stays on the CPU; with 8 GiB nothing
    fits and the refusal names --text-encoder, the window and --dtype."""
    import torch as _torch

    from ca2vdm_cli.cli.render import check_memory, choose_text_encoder, plan_render
    from ca2vdm_cli.store.memory import MemoryPlanError
    from ca2vdm_cli.store.presets import load_preset

    card = load_preset("self-forcing")
    settings = {"prompt": "a fox", "frames": 81, "seed": 0, "out": str(tmp_path / "sf.mp4")}
    plan = plan_render(settings, tmp_path, card, _torch.device("cuda"), _torch.bfloat16, "refuse")
    assert choose_text_encoder(plan, "cuda", _torch.bfloat16, available=20 * GIB) == "free"
    assert choose_text_encoder(plan, "cuda", _torch.bfloat16, available=12 * GIB) == "cpu"
    assert choose_text_encoder(plan, "cuda", _torch.bfloat16, available=80 * GIB) == "device"
    with pytest.raises(MemoryPlanError) as info:
        check_memory(plan, "cuda", _torch.bfloat16, "device", available=8 * GIB)
    message = str(info.value)
    assert "--text-encoder cpu" in message and "--window" in message and "--dtype bf16" in message


def test_exact_attention_options_reproduce_dense_through_the_pipeline(wan_dir):
    """TempCache at threshold 1.0 (only identical keys merge) and the padding collapse are exact; the plan's
    KV bytes are the TempCache pool the denoiser allocates."""
    from ca2vdm_cli.engine.pipeline import Pipeline
    from ca2vdm_cli.models.attention_opts import AttentionOptions

    pipeline = Pipeline.from_model_dir(wan_dir)
    exact = AttentionOptions(kv_compress="tempcache", tempcache_threshold=1.0, sparse_cross="pad")
    runs = {}
    for name, attention in (("dense", None), ("exact", exact)):
        request = GenerateRequest(prompt="a red circle", frames=10, seed=3, window=6, sink_frames=2,
                                  attention=attention)  # fmt: skip
        runs[name] = torch.cat([c.latents for c in pipeline.generate(request)], dim=2)
    torch.testing.assert_close(runs["exact"], runs["dense"], atol=1e-5, rtol=1e-5)
    inputs = check_inputs(pipeline.card, request)
    denoiser = pipeline.denoiser("cache", inputs.sampling, 1)
    assert pipeline.cache_bytes(inputs.sampling) == denoiser.cache.nbytes + denoiser.cache.scratch_nbytes


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--kv-compress", "tempcache", "--tempcache-threshold", 1.5),
            "--tempcache-threshold must lie in (0.0",
        ),
        (("--kv-compress", "tempcache", "--positions", "relative"), "use position_mode='absolute'"),
        (("--sparse-self", "topk-blocks", "--topk-density", 0), "--topk-density must lie in (0"),
    ],
)
def test_bad_attention_options_are_one_error_line(cli, wan_dir, tmp_path, args, message):
    code, _, err = cli("generate", "--model", wan_dir, "-p", "x", "--frames", 9, "--out", tmp_path / "a.mp4",
                       *args)  # fmt: skip
    assert code == 1 and err.count("\n") == 1 and message in err, err


def test_a_ca2vdm_model_refuses_the_attention_options_it_lacks(tmp_path):
    from tests.factories import tiny_card

    with pytest.raises(Exception, match="sparse_cross='pad' is not implemented for CausalSTDiT"):
        from ca2vdm_cli.models.attention_opts import AttentionOptions

        check_inputs(
            tiny_card(), GenerateRequest(prompt="a", frames=9, attention=AttentionOptions(sparse_cross="pad"))
        )


def test_compile_wraps_the_wan_denoise_call_and_cuda_graphs_are_refused(monkeypatch):
    from ca2vdm_cli.engine.accel import Acceleration, accelerate
    from ca2vdm_cli.errors import ConfigError
    from ca2vdm_cli.models.wan import family as wan
    from tests.factories import tiny_wan_model

    model = tiny_wan_model()
    compiled = []

    def fake_compile(fn, **kwargs):  # records what would be compiled; runs it eagerly
        compiled.append((fn, kwargs))

        def run(*args):
            compiled.append("called")
            return fn(*args)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    step, forward = accelerate(model, Acceleration(compile=True), torch.device("cpu"))
    assert compiled[0][0] == model.denoise and compiled[0][1]["dynamic"] is False and forward is None
    sampling = WanSampling(chunk=2, max_frames=8)
    denoiser = wan.make_denoiser("cache", model, 1, sampling, (4, 4), step=step)
    list(wan.sample_video(model, sampling, num_frames=4, seeds=[0], latent_size=(4, 4),
                          y=torch.randn(1, 16, 32), engine=denoiser))  # fmt: skip
    assert compiled.count("called") == 2 * 4  # 2 blocks x 4 flow steps, all through the compiled call
    with pytest.raises(ConfigError, match="drop --cuda-graphs"):
        accelerate(model, Acceleration(cuda_graphs=True), torch.device("cuda"))


def test_bench_compares_attention_options_with_dense_in_one_run():
    from ca2vdm_cli.bench.runner import Bench, BenchOptions
    from ca2vdm_cli.bench.setups import load_setup
    from ca2vdm_cli.models.attention_opts import AttentionOptions

    setup = load_setup(None, "wan-tiny", random_weights=True, device=torch.device("cpu"), dtype=torch.float32)
    setup.sampling = setup.sampling.replace(attention=AttentionOptions(sparse_cross="pad"))
    opts = BenchOptions(engines=("cache",), frames=6, warmup_steps=0, measure_peak=False, decode=False,
                        compare_dense=True)  # fmt: skip
    report = Bench(setup, opts).run().to_json()
    names = [e["engine"] for e in report["engines"]]
    assert names == ["cache-dense", "cache"] and "cache" in report["speedups"]["cache-dense"]
    assert report["settings"]["sampling"]["attention"] == {"kv_compress": "none", "sparse_cross": "pad",
                                                            "sparse_self": "none"}  # fmt: skip

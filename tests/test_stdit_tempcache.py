"""TempCache on the CausalSTDiT temporal cache (`models.stdit.tempcache`): exact where the merge lemma is
exact (identical consecutive frames), dense where nothing merges, the group bookkeeping (mean, count,
eviction with the ring), the memory plan, the errors, and the CLI."""

from __future__ import annotations

import json
import re

import pytest
import torch

from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.models.attention_opts import AttentionOptions
from ca2vdm_cli.models.sparse_attention import AttentionStats
from ca2vdm_cli.models.stdit.cache import KVCache
from ca2vdm_cli.models.stdit.config import SamplingConfig
from ca2vdm_cli.models.stdit.family import make_denoiser
from ca2vdm_cli.models.stdit.tempcache import TempKVCache
from tests.cli_helpers import run_main
from tests.conftest import caption, sample_chunks, tiny_model
from tests.factories import write_tiny_model_dir

SAMPLING = SamplingConfig(steps=3, sampler="ddim", chunk=4, cache_frames=8, prefix_perturb_t=50)


def tempcache(tau: float, **kw) -> AttentionOptions:
    return AttentionOptions(kv_compress="tempcache", tempcache_threshold=tau, **kw)


def bare_cache(max_frames: int, options: AttentionOptions, rows: int = 2, heads: int = 2) -> TempKVCache:
    return TempKVCache(
        options=options, depth=1, batch_size=rows, max_frames=max_frames, tokens_per_frame=1,
        num_heads=heads, head_dim=4, pe_frames=0, pe_mode="off", device="cpu", dtype=torch.float32,
    )  # fmt: skip


def write(cache: KVCache, k: torch.Tensor, v: torch.Tensor) -> None:
    """Store frames (R, h, n, d) in block 0 and advance."""
    cache.store(0, k, v)
    cache.advance(k.shape[2])


# ----------------------------------------------------------------------------- exactness
def test_a_static_scene_merges_and_matches_dense():
    """The same clean frame written 11 times (more than the 5-frame ring: eviction runs) with the temporal
    position table zeroed gives identical keys and values in every block: the merged cache is dense."""
    torch.manual_seed(0)
    model = tiny_model()
    model.pos_embed_temporal.zero_()  # keys carry no position: consecutive frames are identical
    y, mask = caption(2, model.config)
    frame = torch.randn(2, 4, 1, 8, 8)
    dense = model.new_cache(2, 5, chunk_frames=4)
    merged = model.new_cache(2, 5, chunk_frames=4, attention=tempcache(0.999))
    merged.stats = AttentionStats()
    assert type(dense) is KVCache and isinstance(merged, TempKVCache)
    for n in (1, 3, 2, 4, 1):
        clean = frame.expand(-1, -1, n, -1, -1)
        model.write_cache(dense, clean, y, mask)
        model.write_cache(merged, clean, y, mask)
        x, t = torch.randn(2, 4, 4, 8, 8), torch.tensor([500, 300])
        got, want = model.denoise(merged, x, t, y, mask), model.denoise(dense, x, t, y, mask)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    rates = merged.merge_rates()
    assert set(rates) == {0, 1, 2} and min(rates.values()) > 0.99  # every compared key merged
    # 4 of 5 held slots masked behind one representative
    assert merged.masked_fraction() == pytest.approx([0.8] * 3)
    assert torch.equal(merged.count[..., :5].sum(-1), torch.full(merged.count.shape[:3], 5.0))
    plan = model.plan_step(merged, 4, write=False)
    assert plan.temporal.bias is not None and plan.key[-1] is True


def test_b_a_threshold_nothing_reaches_is_dense_exactly():
    model = tiny_model()
    dense = sample_chunks(model, SAMPLING, frames=20)
    denoiser = make_denoiser("cache", model, 2, SAMPLING.replace(attention=tempcache(1.0)))
    denoiser.cache.stats = AttentionStats()
    got = sample_chunks(model, SAMPLING, frames=20, engine=denoiser)
    assert isinstance(denoiser.cache, TempKVCache)
    assert all(torch.equal(a, b) for a, b in zip(got, dense, strict=True))
    rates = denoiser.cache.merge_rates()
    assert rates and max(rates.values()) == 0.0  # keys were compared, none merged
    assert denoiser.cache.temporal_bias(denoiser.cache.num_cached) is None


def test_c_distinct_random_keys_do_not_merge_at_095():
    # cache level: random keys in 32 dimensions are far from cosine 0.95
    cache = TempKVCache(
        options=tempcache(0.95), depth=1, batch_size=8, max_frames=6, tokens_per_frame=4, num_heads=4,
        head_dim=32, pe_frames=0, pe_mode="off", device="cpu", dtype=torch.float32,
    )  # fmt: skip
    cache.stats = AttentionStats()
    dense = KVCache(
        depth=1, batch_size=8, max_frames=6, tokens_per_frame=4, num_heads=4, head_dim=32, pe_frames=0,
        pe_mode="off", device="cpu", dtype=torch.float32,
    )  # fmt: skip
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        k, v = torch.randn(32, 4, 3, 32, generator=g), torch.randn(32, 4, 3, 32, generator=g)
        write(cache, k, v)
        write(dense, k, v)
    assert cache.merge_rates() == {0: 0.0}
    assert torch.equal(cache.k, dense.k) and torch.equal(cache.v, dense.v)
    assert torch.equal(cache.count[..., :6], torch.ones(1, 32, 4, 6))
    # end to end: the random tiny model's rollout merges nothing at 0.95 and equals dense
    model = tiny_model(seed=1)
    want = sample_chunks(model, SAMPLING, frames=16)
    denoiser = make_denoiser("cache", model, 2, SAMPLING.replace(attention=tempcache(0.95)))
    denoiser.cache.stats = AttentionStats()
    got = sample_chunks(model, SAMPLING, frames=16, engine=denoiser)
    assert max(denoiser.cache.merge_rates().values()) == 0.0
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


# ----------------------------------------------------------------------------- the groups
def test_d_a_group_holds_the_mean_and_count_of_its_frames_in_the_ring():
    """Same key, different values: one group whose representative (the newest frame's slot) holds the
    mean of the values still in the ring and their count; a member leaving the ring leaves the mean."""
    cache = bare_cache(3, tempcache(0.99))
    key = torch.randn(2, 2, 1, 4)
    vals = [torch.randn(2, 2, 1, 4) for _ in range(6)]
    for f in range(3):
        write(cache, key, vals[f])
    torch.testing.assert_close(cache.v[0, :, :, 2], torch.cat(vals[:3], 2).mean(2))  # representative
    assert cache.count[0, :, :, :3].tolist() == [[[0.0, 0.0, 3.0]] * 2] * 2
    torch.testing.assert_close(cache.v[0, :, :, 0], vals[0][:, :, 0])  # masked members keep their raw v
    torch.testing.assert_close(cache.v[0, :, :, 1], vals[1][:, :, 0])
    write(cache, key, vals[3])  # frame 0 leaves: slot 0 now holds frame 3, the representative
    torch.testing.assert_close(cache.v[0, :, :, 0], torch.cat(vals[1:4], 2).mean(2), atol=1e-6, rtol=1e-6)
    assert cache.count[0, :, :, :3].tolist() == [[[3.0, 0.0, 0.0]] * 2] * 2
    # a different key opens its own group; the old one keeps its members
    write(cache, -key, vals[4])  # frame 4 into slot 1, evicting frame 1
    assert cache.count[0, :, :, :3].tolist() == [[[2.0, 1.0, 0.0]] * 2] * 2
    torch.testing.assert_close(cache.v[0, :, :, 0], torch.cat(vals[2:4], 2).mean(2), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(cache.v[0, :, :, 1], vals[4][:, :, 0])
    bias = cache.temporal_bias(3)
    assert bias.shape == (1, 2, 2, 1, 3)
    torch.testing.assert_close(bias[0, 0, 0, 0], torch.tensor([2.0, 1.0, 0.0]).log())
    cache.reset()
    assert cache.num_cached == 0 and not cache.count.any()


def test_d_the_max_count_caps_a_group_and_heads_merge_independently():
    cache = bare_cache(6, tempcache(0.99, tempcache_max_count=2))
    key = torch.randn(2, 2, 1, 4)
    for _ in range(4):
        k = key.clone()
        k[:, 1] = torch.randn(2, 1, 4)  # head 1 sees a new key every frame
        write(cache, k, torch.randn(2, 2, 1, 4))
    assert cache.count[0, 0, 0, :4].tolist() == [0.0, 2.0, 0.0, 2.0]  # groups of at most two frames
    assert cache.count[0, 0, 1, :4].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_the_memory_plan_counts_the_tempcache_state():
    from ca2vdm_cli.models.stdit.spec import cache_bytes

    model = tiny_model()
    sampling = SAMPLING.replace(attention=tempcache(0.9))
    denoiser = make_denoiser("cache", model, 2, sampling)
    assert cache_bytes(model.config, sampling, 2, (8, 8), 4) == denoiser.cache.nbytes
    dense = make_denoiser("cache", model, 2, SAMPLING)
    assert cache_bytes(model.config, SAMPLING, 2, (8, 8), 4) == dense.cache.nbytes < denoiser.cache.nbytes


@pytest.mark.parametrize(
    ("options", "overrides", "message"),
    [
        (tempcache(0.9, tempcache_radius=1), {}, "use tempcache_radius=0"),
        (tempcache(0.9, tempcache_budget_frames=4), {}, "drop --tempcache-budget"),
        (tempcache(0.9), {"tpe_mode": "rope"}, "tpe_mode='rope'"),
        (AttentionOptions(sparse_cross="pad"), {}, "sparse_cross='pad' is not implemented for CausalSTDiT"),
        (AttentionOptions(sparse_self="lsh"), {}, "sparse_self='lsh' is not implemented for CausalSTDiT"),
    ],
)
def test_options_the_family_lacks_are_one_config_error(options, overrides, message):
    from tests.conftest import tiny_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        SAMPLING.replace(attention=options).validate(tiny_config(**overrides))
    with pytest.raises(ConfigError, match="tempcache_radius|budget|rope|not implemented"):
        tiny_model(**overrides).new_cache(1, 4, attention=options)


def test_sampling_round_trips_its_attention_options():
    sampling = SAMPLING.replace(attention=tempcache(0.9, tempcache_max_count=3))
    d = sampling.to_dict()
    assert d["attention"] == {"kv_compress": "tempcache", "sparse_cross": "none", "sparse_self": "none",
                              "tempcache_threshold": 0.9, "tempcache_radius": 0,
                              "tempcache_budget_frames": None, "tempcache_max_count": 3}  # fmt: skip
    assert SamplingConfig.from_dict(d) == sampling
    assert SamplingConfig.from_dict(SAMPLING.to_dict()) == SAMPLING


# ----------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def cli(monkeypatch, capsys):
    return lambda *args: run_main(monkeypatch, capsys, *args)


def test_e_generate_with_tempcache_writes_the_video_and_records_the_option(cli, model_dir, tmp_path):
    from ca2vdm_cli.media.video import probe_video

    out = tmp_path / "tc.mp4"
    code, stdout, err = cli("generate", "--model", model_dir, "-p", "a red", "--frames", 13, "--seed", 2,
                            "--out", out, "--kv-compress", "tempcache", "--tempcache-threshold", 0.9,
                            "--tempcache-max-count", 4, "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    assert probe_video(out).frames == 13
    assert result["sampling"]["attention"] == {
        "kv_compress": "tempcache", "sparse_cross": "none", "sparse_self": "none", "tempcache_threshold": 0.9,
        "tempcache_radius": 0, "tempcache_budget_frames": None, "tempcache_max_count": 4,
    }  # fmt: skip
    meta = 3 * 1 * 16 * 4 * (8 * 8 + 16 * 4)  # D·rows·S·h·(L·(count + start) + d·fp32)
    assert result["cache_bytes"] == 3 * 1 * (8 + 3) * 16 * 2 * 64 * 4 + meta


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--kv-compress", "tempcache", "--tempcache-threshold", 1.5),
            "--tempcache-threshold must lie in (0.0",
        ),
        (("--kv-compress", "tempcache", "--tempcache-budget", 4), "drop --tempcache-budget"),
        (("--sparse-cross", "pad"), "sparse_cross='pad' is not implemented for CausalSTDiT"),
    ],
)
def test_e_bad_tempcache_options_are_one_error_line(cli, model_dir, tmp_path, args, message):
    out = tmp_path / "a.mp4"
    code, _, err = cli("generate", "--model", model_dir, "-p", "x", "--frames", 9, "--out", out, *args)
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_eval_takes_the_tempcache_options(model_dir):
    from typer.testing import CliRunner

    from ca2vdm_cli.cli import app, commands  # noqa: F401  (registers the commands)

    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--model", str(model_dir), "--kv-compress", "tempcache",
                              "--tempcache-threshold", "2"])  # fmt: skip
    assert isinstance(res.exception, ConfigError)
    assert "--tempcache-threshold must lie in" in str(res.exception)
    args = ["eval", "--model", str(model_dir), "--modes", "text", "--caches", "card", "--prompts", "1",
            "--frames", "48", "--threads", "1", "--kv-compress", "tempcache",
            "--tempcache-threshold", "0.9"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["sampling"]["attention"]["kv_compress"] == "tempcache"
    assert report["sampling"]["attention"]["tempcache_threshold"] == 0.9
    assert report["results"]["text, cache 8"]["videos"] == 1


def test_bench_compares_tempcache_with_dense_on_a_stdit_model():
    from ca2vdm_cli.bench.runner import Bench, BenchOptions
    from ca2vdm_cli.bench.setups import load_setup

    setup = load_setup(None, "tiny", random_weights=True, device=torch.device("cpu"), dtype=torch.float32)
    setup.sampling = setup.sampling.replace(attention=tempcache(0.9))
    opts = BenchOptions(engines=("cache",), frames=9, warmup_steps=0, measure_peak=False, decode=False,
                        compare_dense=True)  # fmt: skip
    report = Bench(setup, opts).run().to_json()
    engines = {e["engine"]: e for e in report["engines"]}
    assert list(engines) == ["cache-dense", "cache"]
    assert engines["cache"]["kv_cache_bytes"] > engines["cache-dense"]["kv_cache_bytes"]  # + the counts
    assert report["settings"]["sampling"]["attention"]["kv_compress"] == "tempcache"


def test_a_captured_step_replays_the_tempcache_bias():
    """The ln(count) bias is a per-AR-step input of the planned step: a captured graph (the CUDA-graph
    stand-in of test_hotpath) must copy it in, and a plan with a bias is a different graph."""
    from ca2vdm_cli.engine.accel import GraphedStep
    from tests.test_hotpath import ReplayFromBuffers

    model = tiny_model()
    config = SamplingConfig(steps=3, chunk=4, cache_frames=5)
    sampling = config.replace(attention=tempcache(0.3))  # low: the random model merges some keys

    def rollout(step=None):
        denoiser = make_denoiser("cache", model, 2, sampling, step=step)
        denoiser.cache.stats = AttentionStats()
        chunks = sample_chunks(model, sampling, frames=16, engine=denoiser)
        return chunks, denoiser.cache.merge_rates()

    eager, rates = rollout()
    assert min(rates.values()) > 0
    backend = ReplayFromBuffers()
    graphed, _ = rollout(GraphedStep(model.run_denoise, capture=backend))
    assert backend.replays > 0
    for a, b in zip(eager, graphed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

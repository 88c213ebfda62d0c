"""TempCache, AnnCA and AnnSA on a tiny CausalWan: the exact cases equal dense attention, memory is fixed,
bad options are one ConfigError."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.models.attention_opts import AttentionOptions
from ca2vdm_cli.models.sparse_attention import AttentionStats
from ca2vdm_cli.models.wan import CausalWan, WanConfig
from ca2vdm_cli.models.wan.flops import tempcache_nbytes
from ca2vdm_cli.models.wan.tempcache import TempWanKVCache

HW = (4, 4)  # latent frame: 2×2 = 4 tokens


def _tiny(**kw: object) -> CausalWan:
    torch.manual_seed(0)
    return CausalWan(WanConfig.tiny(**kw)).eval()


def _data(model: CausalWan, blocks: int, B: int = 2, seed: int = 1, hw: tuple[int, int] = HW):
    n = model.cfg.num_frame_per_block
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(B, 16, blocks * n, *hw, generator=g)
    noisy = torch.randn(B, 16, blocks * n, *hw, generator=g)
    t = torch.rand(B, blocks * n, generator=g) * 1000
    ctx = torch.randn(B, 5, model.cfg.text_dim, generator=g)
    return clean, noisy, t, ctx


def _loop(model, clean, noisy, t, ctx, opts=None, max_frames=64, stats=None, steps=1):
    n, T = model.cfg.num_frame_per_block, clean.shape[2]
    cache = model.new_cache(
        batch_size=clean.shape[0], max_frames=max_frames, frame_shape=clean.shape[3:], attention=opts
    )
    cache.stats = stats
    outs = []
    for s in range(0, T, n):
        for j in range(steps):  # later steps reuse the block's selections
            out = model.denoise(cache, noisy[:, :, s : s + n] / (j + 1), t[:, s : s + n], ctx, s)
        outs.append(out)
        model.write_cache(cache, clean[:, :, s : s + n], ctx, s)
    return outs, cache


def _assert_all_close(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 1e-5) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


# ---------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"kv_compress": "zip"}, "kv_compress must be one of none, tempcache; got 'zip'"),
        ({"tempcache_threshold": 0.0}, r"tempcache_threshold must lie in \(0.0, 1.0\]; got 0.0"),
        ({"tempcache_threshold": 1.5}, "tempcache_threshold"),
        ({"sparse_self": "flash"}, "sparse_self must be one of none, lsh, topk-blocks"),
        ({"topk_density": 0}, "topk_density"),
        ({"cross_mass": 1.2}, "cross_mass"),
        ({"lsh_bits": 0}, r"lsh_bits must lie in \[1, 12\]"),
        ({"tempcache_budget_frames": 1}, "tempcache_budget_frames must be >= 2"),
    ],
)
def test_invalid_options_raise_one_error(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AttentionOptions(**kw)


def test_options_dict_and_support() -> None:
    assert AttentionOptions().dense and AttentionOptions().to_dict() == {
        "kv_compress": "none", "sparse_cross": "none", "sparse_self": "none",
    }  # fmt: skip
    opts = AttentionOptions(kv_compress="tempcache", tempcache_threshold=0.9, sparse_self="lsh")
    assert AttentionOptions.from_dict(opts.to_dict()) == opts
    assert opts.to_dict()["tempcache_threshold"] == 0.9 and "topk_density" not in opts.to_dict()
    with pytest.raises(ConfigError, match="unknown attention option"):
        AttentionOptions.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="needs text cross-attention, which sprites does not have"):
        AttentionOptions(sparse_cross="pad").check_supported(model="sprites", has_text=False)
    with pytest.raises(ConfigError, match="sparse_self='lsh' is not implemented for CausalSTDiT"):
        AttentionOptions(sparse_self="lsh").check_supported(
            model="CausalSTDiT", has_text=True, implemented=()
        )
    AttentionOptions().check_supported(model="CausalSTDiT", has_text=False, implemented=())
    with pytest.raises(ConfigError, match="position_mode='relative'"):
        _tiny().new_cache(
            batch_size=1, max_frames=6, frame_shape=HW, position_mode="relative",
            attention=AttentionOptions(kv_compress="tempcache"),
        )  # fmt: skip
    with pytest.raises(ConfigError, match="tempcache_budget_frames >= 3"):
        _tiny(local_attn_size=6, sink_size=2, num_frame_per_block=2).new_cache(
            batch_size=1, max_frames=0, frame_shape=HW,
            attention=AttentionOptions(kv_compress="tempcache", tempcache_budget_frames=2),
        )  # fmt: skip


# ---------------------------------------------------------------------- TempCache
def test_identical_keys_merge_exactly() -> None:
    """Cache level: frames with the same keys (different values) collapse to S slots; output == dense."""
    torch.manual_seed(0)
    B, h, S, d, frames = 2, 2, 4, 8, 6
    cache = TempWanKVCache(
        num_layers=1, batch_size=B, past_frames=frames, sink_frames=0, block_frames=1, grid=(2, 2),
        num_heads=h, head_dim=d, position_mode="absolute", windowed=False, device="cpu",
        dtype=torch.float32, options=AttentionOptions(kv_compress="tempcache", tempcache_threshold=0.9999),
    )  # fmt: skip
    key = torch.randn(B, h, S, d)
    values = [torch.randn(B, h, S, d) for _ in range(frames)]
    for f in range(frames):
        cache.store(0, key, values[f])
        cache.advance(1)
    assert cache.used == [S]
    assert torch.equal(cache.count[0, :, :, :S], torch.full((B, h, S), float(frames)))
    q, own_k, own_v = torch.randn(B, h, 3, d), torch.randn(B, h, S, d), torch.randn(B, h, S, d)
    k_all, v_all = cache.window(0, own_k, own_v)
    got = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=cache.key_bias(0, S))
    dense_k = torch.cat([key] * frames + [own_k], 2)
    want = F.scaled_dot_product_attention(q, dense_k, torch.cat([*values, own_v], 2))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_model_merges_duplicate_frames_exactly() -> None:
    """A static video with the time axis of RoPE switched off: frames inside a block (and layer 0 across
    blocks) are exact duplicates, so they merge, and the outputs still equal dense."""
    model = _tiny()
    t_tab, h_tab, w_tab = model._rope(torch.device("cpu"))
    model._tables[torch.device("cpu")] = (t_tab[:1].expand_as(t_tab), h_tab, w_tab)
    clean, noisy, t, ctx = _data(model, blocks=4)
    clean = clean[:, :, :1].expand_as(clean).contiguous()
    dense, _ = _loop(model, clean, noisy, t, ctx)
    stats = AttentionStats()
    opts = AttentionOptions(kv_compress="tempcache", tempcache_threshold=1 - 1e-5)
    merged, cache = _loop(model, clean, noisy, t, ctx, opts, stats=stats)
    _assert_all_close(merged, dense)
    rates = stats.summary()["merge_rate"]
    assert rates[0] > 0.9 and all(r > 0.5 for r in rates.values())
    assert max(cache.used) < 12 * cache.tokens_per_frame


def test_max_count_caps_groups() -> None:
    model = _tiny()
    t_tab, h_tab, w_tab = model._rope(torch.device("cpu"))
    model._tables[torch.device("cpu")] = (t_tab[:1].expand_as(t_tab), h_tab, w_tab)
    clean, noisy, t, ctx = _data(model, blocks=4)
    clean = clean[:, :, :1].expand_as(clean).contiguous()
    opts = AttentionOptions(kv_compress="tempcache", tempcache_threshold=1 - 1e-5, tempcache_max_count=3)
    _, cache = _loop(model, clean, noisy, t, ctx, opts)
    assert cache.count.max() == 3 and cache.count[0].sum() == 2 * 3 * 12 * 4  # B·h·frames·S keys


@pytest.mark.parametrize(("window", "sink", "n"), [(-1, 0, 3), (5, 1, 2), (6, 0, 3)])
def test_threshold_one_reproduces_dense(window: int, sink: int, n: int) -> None:
    model = _tiny(local_attn_size=window, sink_size=sink, num_frame_per_block=n)
    data = _data(model, blocks=5, B=1)
    dense, _ = _loop(model, *data)
    tc, _ = _loop(model, *data, AttentionOptions(kv_compress="tempcache", tempcache_threshold=1.0))
    _assert_all_close(tc, dense)


def test_tempcache_memory_does_not_grow() -> None:
    model = _tiny()
    clean, noisy, t, ctx = _data(model, blocks=8, B=1)
    opts = AttentionOptions(kv_compress="tempcache", tempcache_threshold=0.5, tempcache_budget_frames=5)
    cache = model.new_cache(batch_size=1, max_frames=6, frame_shape=HW, attention=opts)
    cache.stats = AttentionStats()
    allocated, slots = cache.nbytes, cache._k.shape
    cfg = model.cfg
    assert allocated == tempcache_nbytes(
        num_layers=cfg.num_layers, batch_size=1, num_heads=cfg.num_heads, head_dim=cfg.head_dim,
        tokens_per_frame=4, frames=5, dtype_bytes=4,
    )  # fmt: skip
    for s in range(0, 24, 3):  # 24 frames through a 5-frame budget (global attention, max_frames 6)
        out = model.denoise(cache, noisy[:, :, s : s + 3], t[:, s : s + 3], ctx, s)
        assert torch.isfinite(out).all()
        model.write_cache(cache, clean[:, :, s : s + 3], ctx, s)
        assert cache.nbytes == allocated and cache._k.shape == slots
        assert max(cache.used) <= cache.pool == 5 * cache.tokens_per_frame
    assert set(cache.merge_rates()) == set(range(model.cfg.num_layers))


def test_restart_rewrites_like_dense() -> None:
    """A prompt switch's re-encode (restart, then write the newest blocks again) under TempCache at τ = 1
    with dense-equivalent sparse attention equals the dense cache doing the same."""
    model = _tiny(local_attn_size=7, sink_size=1, num_frame_per_block=2)
    clean, noisy, t, ctx = _data(model, blocks=6)
    other = torch.randn_like(ctx)
    opts = AttentionOptions(kv_compress="tempcache", tempcache_threshold=1.0, sparse_self="topk-blocks",
                            topk_density=1.0, key_block=2)  # fmt: skip
    outs = []
    for o in (None, opts):
        cache = model.new_cache(batch_size=2, max_frames=0, frame_shape=HW, attention=o)
        for s in range(0, 8, 2):
            model.denoise(cache, noisy[:, :, s : s + 2], t[:, s : s + 2], ctx, s)
            model.write_cache(cache, clean[:, :, s : s + 2], ctx, s)
        cache.restart(4)
        for s in (4, 6):
            model.denoise(cache, noisy[:, :, s : s + 2], t[:, s : s + 2], other, s)
            model.write_cache(cache, clean[:, :, s : s + 2], other, s)
        outs.append(model.denoise(cache, noisy[:, :, 8:10], t[:, 8:10], other, 8))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- AnnCA
def test_padding_collapse_is_exact() -> None:
    model = _tiny()
    clean, noisy, t, ctx = _data(model, blocks=3)
    ctx = torch.cat([ctx, torch.zeros(2, 3, ctx.shape[2])], 1)  # explicit zero rows are padding too
    ctx[1, 3:] = 0  # the second prompt is shorter: 3 real rows
    dense, _ = _loop(model, clean, noisy, t, ctx)
    padded, cache = _loop(model, clean, noisy, t, ctx, AttentionOptions(sparse_cross="pad"))
    _assert_all_close(padded, dense)
    assert cache.context_k.shape[3] == 6  # 5 real rows + the padding key (of 16)
    bias = cache.cross.bias[:, 0, 0]
    torch.testing.assert_close(bias[:, -1], torch.tensor([math.log(11), math.log(13)]))
    assert torch.isinf(bias[1, 3:5]).all()


def test_cross_selection_of_every_row_is_dense() -> None:
    model = _tiny()
    data = _data(model, blocks=3)
    dense, _ = _loop(model, *data, steps=2)
    for opts in (
        AttentionOptions(sparse_cross="topk", cross_topk=16),
        AttentionOptions(sparse_cross="topk", cross_mass=1.0),
    ):
        got, _ = _loop(model, *data, opts, steps=2)
        _assert_all_close(got, dense)
    stats = AttentionStats()
    few, _ = _loop(model, *data, AttentionOptions(sparse_cross="topk", cross_topk=1), stats=stats, steps=2)
    summary = stats.summary()
    assert all(0 < v < 1 for v in summary["cross_density"].values())
    assert all(0 < v <= 1 for v in summary["cross_retained_mass"].values())


# ---------------------------------------------------------------------- AnnSA
@pytest.mark.parametrize(
    "opts",
    [
        AttentionOptions(sparse_self="topk-blocks", topk_density=1.0, key_block=3, query_block=5),
        AttentionOptions(sparse_self="lsh", lsh_bits=1, key_block=4, query_block=4),
        AttentionOptions(sparse_self="topk-blocks", topk_density=1.0, kv_compress="tempcache",
                         tempcache_threshold=1.0, sparse_cross="pad", key_block=2),
    ],
)  # fmt: skip
def test_full_density_reproduces_dense(opts: AttentionOptions) -> None:
    model = _tiny(local_attn_size=7, sink_size=1, num_frame_per_block=2)
    data = _data(model, blocks=5)
    dense, _ = _loop(model, *data, steps=2)
    got, _ = _loop(model, *data, opts, steps=2)
    _assert_all_close(got, dense)


@pytest.mark.parametrize("mode", ["lsh", "topk-blocks"])
def test_sparse_self_records_density_and_mass(mode: str) -> None:
    model = _tiny()
    data = _data(model, blocks=6, B=1, hw=(8, 8))
    dense, _ = _loop(model, *data)
    stats = AttentionStats(measure_mass=True)
    opts = AttentionOptions(sparse_self=mode, lsh_bits=6, topk_density=0.2, key_block=8, query_block=16)
    got, _ = _loop(model, *data, opts, stats=stats)
    summary = stats.summary()
    assert all(0 < v < 1 for v in summary["density"].values())
    assert all(0 < v <= 1 + 1e-6 for v in summary["retained_mass"].values())
    assert all(torch.isfinite(x).all() for x in got)
    assert not torch.allclose(got[-1], dense[-1], atol=1e-6)


def test_all_options_bf16_window_smoke() -> None:
    """bf16 (the released dtype) in window + sink mode with every option on, through a small budget."""
    model = _tiny(local_attn_size=7, sink_size=1, num_frame_per_block=2).to(torch.bfloat16)
    clean, noisy, t, ctx = (x.to(torch.bfloat16) for x in _data(model, blocks=8, B=2, hw=(8, 8)))
    opts = AttentionOptions(
        kv_compress="tempcache", tempcache_threshold=0.9, tempcache_budget_frames=4, tempcache_max_count=3,
        sparse_cross="topk", cross_topk=2, sparse_self="lsh", lsh_bits=4, query_block=8, key_block=8,
    )  # fmt: skip
    outs, cache = _loop(model, clean, noisy, t, ctx, opts, stats=AttentionStats(), steps=2)
    assert all(o.dtype == torch.bfloat16 and torch.isfinite(o).all() for o in outs)
    assert max(cache.used) <= cache.pool == 4 * 16 and cache.count.max() <= 3
    frames = cache.last[cache.count > 0]
    assert frames.min() >= 0 and (frames[frames >= 1] >= 16 - 4).all()  # the sink or the 4 recent frames

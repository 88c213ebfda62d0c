"""CausalWan: official key layout, strict loading, config errors, FLOP formulas against torch's counter."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ca2vdm_cli.errors import ConfigError, WeightsError
from ca2vdm_cli.models.wan import CausalWan, WanConfig
from ca2vdm_cli.models.wan.flops import context_flops, denoise_flops, param_count, write_flops


def _official_shapes() -> dict[str, tuple[int, ...]]:
    """Spec §2.5, written out from the table."""
    d, f = 1536, 8960
    shapes = {
        "patch_embedding.weight": (d, 16, 1, 2, 2), "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, 4096), "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d), "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, 256), "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d), "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d), "time_projection.1.bias": (6 * d,),
        "head.head.weight": (64, d), "head.head.bias": (64,), "head.modulation": (1, 2, d),
    }  # fmt: skip
    for i in range(30):
        b = f"blocks.{i}."
        shapes[b + "modulation"] = (1, 6, d)
        for attn in ("self_attn", "cross_attn"):
            for p in "qkvo":
                shapes[f"{b}{attn}.{p}.weight"], shapes[f"{b}{attn}.{p}.bias"] = (d, d), (d,)
            shapes[f"{b}{attn}.norm_q.weight"] = shapes[f"{b}{attn}.norm_k.weight"] = (d,)
        shapes[b + "norm3.weight"] = shapes[b + "norm3.bias"] = (d,)
        shapes[b + "ffn.0.weight"], shapes[b + "ffn.0.bias"] = (f, d), (f,)
        shapes[b + "ffn.2.weight"], shapes[b + "ffn.2.bias"] = (d, f), (d,)
    return shapes


def _tiny(**kw: object) -> CausalWan:
    torch.manual_seed(0)
    return CausalWan(WanConfig.tiny(**kw)).eval()


def test_official_layout_on_meta() -> None:
    cfg = WanConfig.wan_1_3b()
    with torch.device("meta"):
        model = CausalWan(cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(got) == 825
    assert got == _official_shapes()
    assert sum(p.numel() for p in model.parameters()) == 1_418_996_800 == param_count(cfg)
    model.load_official_state_dict(
        {f"model.{k}": torch.empty(s, device="meta") for k, s in _official_shapes().items()}
    )


def test_tiny_param_count() -> None:
    model = _tiny()
    assert sum(p.numel() for p in model.parameters()) == param_count(model.cfg)


def test_load_is_strict() -> None:
    src, dst = _tiny(), CausalWan(WanConfig.tiny())
    sd = src.state_dict()
    dst.load_official_state_dict(sd)
    assert all(
        torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True)
    )
    dst.load_official_state_dict({f"model.{k}": v for k, v in sd.items()})
    bad = dict(sd)
    del bad["blocks.1.norm3.bias"]
    with pytest.raises(WeightsError, match=r"missing.*blocks\.1\.norm3\.bias"):
        dst.load_official_state_dict(bad)
    with pytest.raises(WeightsError, match=r"unexpected.*blocks\.9\.extra"):
        dst.load_official_state_dict({**sd, "blocks.9.extra": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"mis-shaped.*head\.modulation"):
        dst.load_official_state_dict({**sd, "head.modulation": torch.zeros(1, 3, 192)})


def test_from_official_kwargs() -> None:
    kw = dict(model_type="t2v", patch_size=[1, 2, 2], text_len=512, in_dim=16, dim=1536, ffn_dim=8960,
              freq_dim=256, text_dim=4096, out_dim=16, num_heads=12, num_layers=30, window_size=(-1, -1),
              qk_norm=True, cross_attn_norm=True, eps=1e-6, local_attn_size=12, sink_size=3,
              num_frame_per_block=3, _class_name="CausalWanModel")  # fmt: skip
    cfg = WanConfig.from_official(kw)
    assert (cfg.local_attn_size, cfg.sink_size, cfg.num_frame_per_block) == (12, 3, 3)
    assert cfg.patch_size == (1, 2, 2) and cfg.head_dim == 128
    assert WanConfig.from_official({}) == WanConfig.wan_1_3b()
    with pytest.raises(ConfigError, match="model_type"):
        WanConfig.from_official({"model_type": "i2v"})
    with pytest.raises(ConfigError, match="bogus"):
        WanConfig.from_official({"bogus": 1})


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"local_attn_size 3 .* sink_size \+ num_frame_per_block = 4"):
        WanConfig.tiny(local_attn_size=3, sink_size=1, num_frame_per_block=3)
    with pytest.raises(ConfigError, match="sink_size"):
        WanConfig.tiny(sink_size=1)
    model = _tiny()
    cache = model.new_cache(batch_size=1, max_frames=6, frame_shape=(4, 4))
    with pytest.raises(ConfigError, match="num_frame_per_block=3"):
        model.denoise(cache, torch.randn(1, 16, 2, 4, 4), torch.zeros(1, 2), torch.randn(1, 4, 64), 0)


def _count(fn) -> int:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_flops_match_counter() -> None:
    model = _tiny(local_attn_size=8, sink_size=1)
    cfg, B, S = model.cfg, 2, 6
    cache = model.new_cache(batch_size=B, max_frames=0, frame_shape=(4, 6))
    ctx = torch.randn(B, 5, cfg.text_dim)
    assert _count(lambda: model.prepare_context(cache, ctx)) == context_flops(cfg, B)
    x = torch.randn(B, 16, 3, 4, 6)
    for _ in range(3):  # visible past: 0, 3, 5 (window 8 − block 3)
        s, m = cache.written, cache.num_visible
        got = _count(lambda: model.denoise(cache, x, torch.rand(B, 3) * 1000, ctx, s))  # noqa: B023
        assert got == denoise_flops(cfg, 3, m, S, B)
        assert _count(lambda: model.write_cache(cache, x, ctx, s)) == write_flops(cfg, 3, m, S, B)  # noqa: B023
    assert cache.num_visible == 5


def test_bf16_smoke() -> None:
    model = _tiny(local_attn_size=5, sink_size=1, num_frame_per_block=2).to(torch.bfloat16)
    cache = model.new_cache(batch_size=1, max_frames=0, frame_shape=(4, 4))
    ctx = torch.randn(1, 4, 64, dtype=torch.bfloat16)
    for s in range(0, 8, 2):
        x = torch.randn(1, 16, 2, 4, 4, dtype=torch.bfloat16)
        out = model.denoise(cache, x, torch.tensor([[900.0, 100.0]]), ctx, s)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        model.write_cache(cache, x, ctx, s)
    assert cache.k.dtype == torch.bfloat16 and cache.nbytes == 2 * 4 * 3 * 4 * 192 * 2


def test_memory_formulas_match_spec() -> None:
    from ca2vdm_cli.models.wan.flops import context_kv_bytes, kv_cache_bytes, tokens_per_frame

    cfg = WanConfig.wan_1_3b()
    S = tokens_per_frame(cfg, (60, 104))
    assert S == 1560
    assert kv_cache_bytes(cfg, 1, S) == 287_539_200  # 274 MiB per latent frame
    assert round(kv_cache_bytes(cfg, 21, S) / 2**30, 2) == 5.62
    assert round(kv_cache_bytes(cfg, 12, S) / 2**30, 2) == 3.21
    assert round(context_kv_bytes(cfg) / 1e6) == 94
    model = _tiny(local_attn_size=8, sink_size=1)
    cache = model.new_cache(batch_size=1, max_frames=0, frame_shape=(4, 6))
    assert cache.nbytes == kv_cache_bytes(model.cfg, 5, 6, dtype_bytes=4)  # the past ring: 8 − 3 frames

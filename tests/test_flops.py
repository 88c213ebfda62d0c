"""The analytic FLOP model (`flops.py`) against torch's own counter, pass by pass and for whole runs of
every engine, and the ratios and cache sizes the paper's argument rests on (§7.4, §8)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ca2vdm_cli.engine.loop import chunk_lengths
from ca2vdm_cli.models.stdit.config import ModelConfig, SamplingConfig
from ca2vdm_cli.models.stdit.denoisers import make_denoiser as make_engine
from ca2vdm_cli.models.stdit.family import sample_video
from ca2vdm_cli.models.stdit.flops import caption_flops, denoise_flops, forward_flops, run_flops, write_flops
from tests.conftest import caption, tiny_model

CONFIGS = {
    "text+pe+mask": {},
    "no-text+no-pe": dict(caption_channels=0, pe_mode="off", pe_frames=0, mask_channel=False),
    "first_frame+mask-all+rope": dict(
        pe_mode="first_frame", pe_frames=1, mask_channel_all_blocks=True, tpe_mode="rope"
    ),
}


def counted(fn) -> int:
    """FLOPs torch counts; the math SDPA backend makes attention visible as matmuls on the CPU."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_single_passes_match_the_flop_counter(name):
    model = tiny_model(**CONFIGS[name])
    cfg, B = model.config, 2
    y, mask = caption(B, cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 4, 11, 8, 8, generator=g)
    per_frame = torch.zeros(B, 11)
    assert counted(lambda: model(x, per_frame, y, mask, num_prefix=3)) == forward_flops(cfg, B, 11)
    assert counted(lambda: model(x, torch.zeros(B), y, mask)) == forward_flops(cfg, B, 11, per_frame_t=False)
    text = model.prepare_text(y, mask, B)
    assert counted(lambda: model.prepare_text(y, mask, B)) == caption_flops(cfg, B)
    cache = model.new_cache(B, 9, chunk_frames=4)
    empty = torch.randn(B, 4, 4, 8, 8, generator=g)
    t = torch.full((B,), 500.0)
    assert counted(lambda: model.denoise(cache, empty, t, y, mask)) == denoise_flops(
        cfg, B, 4, 0, has_context=False
    )
    for first, cached in ((5, 0), (4, 5), (4, 9)):  # growing, then full (evicting)
        chunk = torch.randn(B, 4, first, 8, 8, generator=g)
        assert counted(lambda c=chunk: model.write_cache(cache, c, text)) == write_flops(
            cfg, B, first, cached, prepared=True
        )
        n = min(cache.frames_written, 9)
        assert counted(lambda: model.denoise(cache, empty, t, y, mask)) == denoise_flops(cfg, B, 4, n)
        assert counted(lambda: model.denoise(cache, empty, t, text)) == denoise_flops(
            cfg, B, 4, n, prepared=True
        )


@pytest.mark.parametrize("engine", ["cache", "recompute", "recompute-full"])
@pytest.mark.parametrize("prefix_frames", [1, 0])
def test_whole_runs_match_the_flop_counter(engine, prefix_frames):
    model = tiny_model()
    cfg = model.config
    config = SamplingConfig(steps=2, chunk=4, cache_frames=5, cfg_scale=3.0)
    y, mask = caption(1, cfg)
    prefix = torch.randn(1, 4, prefix_frames, 8, 8) if prefix_frames else None
    runner = make_engine(engine, model, 2, 5, chunk_frames=4)
    kw = dict(num_frames=10, seeds=[0], prefix=prefix, y=y, y_mask=mask, engine=runner)
    total = counted(lambda: list(sample_video(model, config, **kw)))
    expected = run_flops(
        cfg, engine, rows=2, prefix_frames=prefix_frames, chunks=chunk_lengths(10, 4), steps=2, cache_frames=5
    )
    assert len(expected.per_ar_step) == 3  # chunks of 4, 4, 2; the queue of 5 evicts from the third
    assert total == expected.total


XL2 = ModelConfig()  # CausalSTDiT2-XL/2 at 256², text, prev_frames_3


def test_xl2_per_pass_flops_agree_with_the_spec_table():
    """Spec §8 (torch FlopCounter on the official classes, 7 valid caption tokens): 2.82 TFLOP for a
    cached 8-frame step w/o PE; our dense count uses 120 caption tokens and PE, so compare w/o PE."""
    no_pe = XL2.replace(pe_mode="off", pe_frames=0)
    denoise = denoise_flops(no_pe, 1, 8, 25, text_tokens=7) / 1e12
    full9 = forward_flops(no_pe, 1, 9, text_tokens=7) / 1e12
    full33 = forward_flops(no_pe, 1, 33, text_tokens=7) / 1e12
    assert denoise == pytest.approx(2.82, rel=0.03)
    assert full9 == pytest.approx(3.17, rel=0.03)
    assert full33 == pytest.approx(11.63, rel=0.03)


@pytest.mark.parametrize("pe", [True, False])
def test_80_frame_flop_ratios_are_linear_vs_quadratic(pe):
    """K = 10 AR steps of 8 after one given frame, 100 steps: the cache engine costs ~3.5× less
    than the capped baseline and more than 5× less than the uncapped one, whose cost grows per AR step."""
    cfg = XL2 if pe else XL2.replace(pe_mode="off", pe_frames=0)
    kw = dict(rows=1, prefix_frames=1, chunks=[8] * 10, steps=100, cache_frames=25)
    cache, capped, full = (run_flops(cfg, e, **kw) for e in ("cache", "recompute", "recompute-full"))
    assert 3.0 < capped.total / cache.total < 4.5
    assert full.total / cache.total > 5.0
    steady = cache.per_ar_step[4:]  # denoising and writing both see a full queue from AR step 5 on
    assert max(steady) == min(steady)
    assert all(b > a for a, b in zip(full.per_ar_step, full.per_ar_step[1:], strict=False))
    if not pe:
        assert cache.total / 1e15 == pytest.approx(2.8, rel=0.1)  # spec §8: ≈ 2.8 PFLOP
        assert capped.total / 1e15 == pytest.approx(9.9, rel=0.1)  # ≈ 9.9 PFLOP

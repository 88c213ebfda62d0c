"""Layer maths cross-check: one bidirectional block equals diffusers' WanTransformer3DModel.

With every frame in one block and an empty cache, CausalWan is plain Wan2.1; diffusers implements that
independently, so loading the same tiny random weights under the renamed keys must give the same flow.
"""

from __future__ import annotations

import re

import pytest
import torch

from ca2vdm_cli.models.wan import CausalWan, WanConfig

diffusers = pytest.importorskip("diffusers")

_RENAMES = [  # order matters: head.modulation before the generic modulation, norm3 through a placeholder
    (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"^time_projection\.1\.", "condition_embedder.time_proj."),
    (r"^head\.modulation$", "scale_shift_table"),
    (r"^head\.head\.", "proj_out."),
    (r"\.modulation$", ".scale_shift_table"),
    (r"\.self_attn\.", ".attn1."),
    (r"\.cross_attn\.", ".attn2."),
    (r"\.(attn[12])\.q\.", r".\1.to_q."),
    (r"\.(attn[12])\.k\.", r".\1.to_k."),
    (r"\.(attn[12])\.v\.", r".\1.to_v."),
    (r"\.(attn[12])\.o\.", r".\1.to_out.0."),
    (r"\.ffn\.0\.", ".ffn.net.0.proj."),
    (r"\.ffn\.2\.", ".ffn.net.2."),
    (r"\.norm3\.", ".NORM_PLACEHOLDER."),
    (r"\.NORM_PLACEHOLDER\.", ".norm2."),
]


def _to_diffusers(key: str) -> str:
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def test_one_block_equals_diffusers_wan() -> None:
    frames = 3
    cfg = WanConfig.tiny(num_frame_per_block=frames)
    torch.manual_seed(0)
    ours = CausalWan(cfg).eval()
    theirs = diffusers.WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=cfg.eps, rope_max_seq_len=cfg.rope_positions,
    ).eval()  # fmt: skip
    sd = {_to_diffusers(k): v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(sd, strict=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, frames, 4, 6, generator=g)
    ctx = torch.randn(2, cfg.text_len, cfg.text_dim, generator=g)
    t = torch.tensor([700.0, 250.0])
    cache = ours.new_cache(batch_size=2, max_frames=frames, frame_shape=(4, 6))
    got = ours.denoise(cache, x, t, ctx, 0)
    with torch.no_grad():
        want = theirs(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
    assert got.abs().mean() > 0.1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

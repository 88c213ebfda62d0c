"""Analytic FLOP counts of CausalSTDiT passes and of whole AR runs per engine.

Exact for what `torch.utils.flop_counter` counts: every matmul (2·m·n·k; biases, norms, activations and
the sampler are not counted) and dense attention (4·b·L_q·L_k·C per call: QKᵀ and AV, including masked
entries, as the flop counter does). The tests check these formulas against `FlopCounterMode` for the
full forward, the cached denoising pass and the cache write, and for whole runs of every engine.
Pure Python: no torch import.

Notation: rows = model batch (2B with CFG), S tokens per frame, C width, D depth, N caption tokens.
"""

from __future__ import annotations

from ca2vdm_cli.models.costs import RunFlops
from ca2vdm_cli.models.stdit.config import ModelConfig

TIMESTEP_FEATURES = 256  # sinusoidal features fed to the timestep MLP


def _lin(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def _attn(sequences: int, q_len: int, k_len: int, width: int) -> int:
    return 4 * sequences * q_len * k_len * width


def caption_flops(cfg: ModelConfig, rows: int, text_tokens: int | None = None, with_kv: bool = True) -> int:
    """Projecting the caption (y_proj), and with `with_kv` every block's cross-attention K|V."""
    if not cfg.has_text:
        return 0
    C, n = cfg.hidden_size, rows * (text_tokens or cfg.model_max_length)
    proj = _lin(n, cfg.caption_channels, C) + _lin(n, C, C)
    if cfg.pooled_caption:  # y_pooler on the (rows, C) mean
        proj += 2 * _lin(rows, C, C)
    return proj + (cfg.depth * _lin(n, C, 2 * C) if with_kv else 0)


def _pass(
    cfg: ModelConfig,
    rows: int,
    frames: int,
    *,
    t_rows: int,
    keys: int,
    pe: str,
    kv_only_last: bool,
    text_tokens: int | None,
    prepared: bool,
) -> int:
    """One pass over `frames` frames; `keys` temporal keys per query frame's sequence; `pe` in
    {"full", "denoise", "write", "none"} selects the prefix-enhanced attention route."""
    C, S, D = cfg.hidden_size, cfg.tokens_per_frame, cfg.depth
    H, N = int(C * cfg.mlp_ratio), text_tokens or cfg.model_max_length
    n = rows * frames * S  # tokens
    patch_in = cfg.in_channels * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
    total = _lin(n, patch_in, C)  # patch embedding (Conv3d with kernel = stride)
    total += _lin(t_rows, TIMESTEP_FEATURES, C) + _lin(t_rows, C, C) + _lin(t_rows, C, 6 * C)
    if not prepared:
        total += caption_flops(cfg, rows, N, with_kv=False)
    for i in range(D):
        total += _lin(n, C, 3 * C) + _attn(rows * frames, S, S, C) + _lin(n, C, C)  # spatial
        if pe == "full":  # qkv of every frame, each frame attends to N_pe context frames
            total += _lin(n, C, 3 * C) + _attn(rows * frames, S, cfg.pe_frames * S, C) + _lin(n, C, C)
        elif pe == "denoise":  # queries only, against the cached context
            total += _lin(n, C, C) + _attn(rows, frames * S, cfg.pe_frames * S, C) + _lin(n, C, C)
        elif pe == "write":  # a clean frame attends to itself (or to frame 0: the same count)
            total += _lin(n, C, 3 * C) + _attn(rows * frames, S, S, C) + _lin(n, C, C)
        if cfg.mask_channel and (i == 0 or cfg.mask_channel_all_blocks):
            total += _lin(n, C + 1, C)  # attn_temp_pre_merge
        total += _lin(n, C, 3 * C)  # temporal qkv
        if kv_only_last and i == D - 1:
            continue  # the last block of a write only produces K|V
        total += _attn(rows * S, frames, keys, C) + _lin(n, C, C)
        if cfg.has_text:
            total += _lin(n, C, C) + _attn(rows, frames * S, N, C) + _lin(n, C, C)
            total += 0 if prepared else _lin(rows * N, C, 2 * C)
        total += _lin(n, C, H) + _lin(n, H, C)  # MLP
    if not kv_only_last:
        total += _lin(n, C, cfg.patch_size[1] * cfg.patch_size[2] * cfg.out_channels)  # final layer
    return total


def forward_flops(
    cfg: ModelConfig,
    rows: int,
    frames: int,
    *,
    per_frame_t: bool = True,
    text_tokens: int | None = None,
    prepared: bool = False,
) -> int:
    """`CausalSTDiT.forward` over `frames` frames (t per frame (B, T), or one per sample (B,))."""
    return _pass(
        cfg,
        rows,
        frames,
        t_rows=rows * frames if per_frame_t else rows,
        keys=frames,
        pe="full" if cfg.has_pe else "none",
        kv_only_last=False,
        text_tokens=text_tokens,
        prepared=prepared,
    )


def denoise_flops(
    cfg: ModelConfig,
    rows: int,
    frames: int,
    cached: int,
    *,
    has_context: bool = True,
    text_tokens: int | None = None,
    prepared: bool = False,
) -> int:
    """`CausalSTDiT.denoise` of a chunk of `frames` frames against `cached` cached frames."""
    pe = "denoise" if cfg.has_pe and has_context else "none"
    return _pass(
        cfg,
        rows,
        frames,
        t_rows=rows,
        keys=cached + frames,
        pe=pe,
        kv_only_last=False,
        text_tokens=text_tokens,
        prepared=prepared,
    )


def write_flops(
    cfg: ModelConfig,
    rows: int,
    frames: int,
    cached: int,
    *,
    text_tokens: int | None = None,
    prepared: bool = False,
) -> int:
    """`CausalSTDiT.write_cache` of `frames` clean frames after `cached` cached frames."""
    return _pass(
        cfg,
        rows,
        frames,
        t_rows=rows,
        keys=cached + frames,
        pe="write" if cfg.has_pe else "none",
        kv_only_last=True,
        text_tokens=text_tokens,
        prepared=prepared,
    )


def run_flops(
    cfg: ModelConfig,
    engine: str,
    *,
    rows: int,
    prefix_frames: int,
    chunks: list[int],
    steps: int,
    cache_frames: int,
    text_tokens: int | None = None,
) -> RunFlops:
    """What `sample_video` computes with engine `cache`, `recompute` or `recompute-full`, `steps`
    denoising steps per chunk (the caption is prepared once per run, as the loop does)."""
    out = RunFlops(engine)
    pending = caption_flops(cfg, rows, text_tokens)  # counted into the first AR step
    kw = dict(text_tokens=text_tokens, prepared=True)
    if engine not in ("cache", "recompute", "recompute-full"):
        raise ValueError(f"unknown engine {engine!r}")
    cap = cache_frames if engine == "recompute" else None  # frames the recompute engines keep
    written = prefix_frames
    condition = prefix_frames if cap is None else min(prefix_frames, cap)
    if engine == "cache" and prefix_frames:
        pending += write_flops(cfg, rows, prefix_frames, 0, **kw)
    for k, n in enumerate(chunks):
        if engine == "cache":
            cached = min(written, cache_frames)
            out.denoise_step = denoise_flops(cfg, rows, n, cached, has_context=written > 0, **kw)
            step = out.denoise_step
        elif condition == 0:  # no clean frame yet: the chunk alone, one timestep per sample
            step = out.denoise_step = forward_flops(cfg, rows, n, per_frame_t=False, **kw)
        else:
            step = out.denoise_step = forward_flops(cfg, rows, condition + n, **kw)
        out.per_ar_step.append(pending + steps * step)
        pending = 0
        if k + 1 < len(chunks):
            if engine == "cache":
                pending = write_flops(cfg, rows, n, min(written, cache_frames), **kw)
            written += n
            condition = written if cap is None else min(written, cap)
    return out

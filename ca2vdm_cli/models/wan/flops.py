"""Analytic parameter, KV-byte and FLOP formulas of the causal Wan DiT (§8).

FLOPs count multiply-adds as 2 (torch's FlopCounterMode convention): linear layers, the patch conv and
attention matmuls; norms, RoPE and element-wise modulation are not counted. Per layer and call with N
query tokens and M visible key tokens: 12·N·d² + 4·N·M·d + 4·N·text_len·d + 4·N·d·ffn.
"""

from __future__ import annotations

import math

from ca2vdm_cli.models.costs import RunFlops
from ca2vdm_cli.models.wan.config import WanConfig


def tokens_per_frame(cfg: WanConfig, latent_hw: tuple[int, int]) -> int:
    """S for a latent frame (H, W): 1560 for 60×104 with the 2×2 patch."""
    _, ph, pw = cfg.patch_size
    return (latent_hw[0] // ph) * (latent_hw[1] // pw)


def param_count(cfg: WanConfig) -> int:
    """Parameters: 1,418,996,800 for Wan2.1-T2V-1.3B."""
    d, f, patch = cfg.dim, cfg.ffn_dim, math.prod(cfg.patch_size)
    attn = 4 * (d * d + d) + 2 * d  # q, k, v, o and the two RMSNorm weights
    block = 6 * d + 2 * attn + 2 * d + (d * f + f) + (f * d + d)  # modulation, self, cross, norm3, ffn
    outside = (
        cfg.in_dim * patch * d + d  # patch_embedding
        + cfg.text_dim * d + d + d * d + d  # text_embedding
        + cfg.freq_dim * d + d + d * d + d  # time_embedding
        + d * 6 * d + 6 * d  # time_projection
        + d * cfg.out_dim * patch + cfg.out_dim * patch + 2 * d  # head
    )  # fmt: skip
    return outside + cfg.num_layers * block


def kv_cache_bytes(cfg: WanConfig, frames: int, tokens: int, dtype_bytes: int = 2) -> int:
    """Self-attention K and V of `frames` frames of `tokens` tokens over all layers: 5.62 GiB for 21 frames
    of the 1.3B model at 480×832 in bf16."""
    return frames * tokens * cfg.num_layers * 2 * cfg.dim * dtype_bytes


def tempcache_nbytes(
    *, num_layers: int, batch_size: int, num_heads: int, head_dim: int, tokens_per_frame: int,
    frames: int, dtype_bytes: int,
) -> int:  # fmt: skip
    """Allocated bytes of a TempCache pool of `frames` frames (what `TempWanKVCache.nbytes` reports): the
    K/V slots plus a float32 count and an int64 frame per slot and an int64 pointer per token position."""
    slots = num_layers * batch_size * num_heads * frames * tokens_per_frame
    latest = num_layers * batch_size * num_heads * tokens_per_frame
    return 2 * slots * head_dim * dtype_bytes + slots * (4 + 8) + latest * 8


def context_kv_bytes(cfg: WanConfig, dtype_bytes: int = 2) -> int:
    """Cross-attention K and V of one prompt per batch row (94 MB for the 1.3B model in bf16)."""
    return cfg.text_len * cfg.num_layers * 2 * cfg.dim * dtype_bytes


def layer_flops(cfg: WanConfig, n_tokens: int, m_tokens: int) -> int:
    """One block for N query tokens seeing M self-attention keys (cross K/V excluded)."""
    d = cfg.dim
    return (
        12 * n_tokens * d * d
        + 4 * n_tokens * m_tokens * d
        + 4 * n_tokens * cfg.text_len * d
        + 4 * n_tokens * d * cfg.ffn_dim
    )


def _pass_flops(cfg: WanConfig, frames: int, visible: int, tokens: int, batch: int, head: bool) -> int:
    d, patch = cfg.dim, math.prod(cfg.patch_size)
    n, m = frames * tokens, (visible + frames) * tokens
    embed = 2 * n * cfg.in_dim * patch * d + 2 * frames * (cfg.freq_dim * d + d * d + 6 * d * d)
    out = 2 * n * d * cfg.out_dim * patch if head else 0
    return batch * (embed + cfg.num_layers * layer_flops(cfg, n, m) + out)


def denoise_flops(cfg: WanConfig, frames: int, visible: int, tokens: int, batch: int = 1) -> int:
    """One denoising call of a block of `frames` frames attending to `visible` past frames."""
    return _pass_flops(cfg, frames, visible, tokens, batch, head=True)


def write_flops(cfg: WanConfig, frames: int, visible: int, tokens: int, batch: int = 1) -> int:
    """One t = 0 write pass: the denoising call without the head (its output is discarded)."""
    return _pass_flops(cfg, frames, visible, tokens, batch, head=False)


def context_flops(cfg: WanConfig, batch: int = 1) -> int:
    """Once per prompt: text_embedding plus every layer's cross K/V (4·text_len·d² per layer)."""
    d, L = cfg.dim, cfg.text_len
    return batch * (2 * L * (cfg.text_dim * d + d * d) + cfg.num_layers * 4 * L * d * d)


def run_flops(
    cfg: WanConfig,
    engine: str,
    *,
    rows: int,
    prefix_frames: int,
    chunks: list[int],
    steps: int,
    window: int,
    latent_hw: tuple[int, int],
) -> RunFlops:
    """What `sample_video` computes with engine `cache` (each block written once at t = 0) or `recompute`
    (every denoising step re-runs every clean block seen so far through a scratch cache). `window` is
    the attention window in latent frames incl. the block (−1: global)."""
    if engine not in ("cache", "recompute"):
        raise ValueError(f"unknown engine {engine!r}")
    tokens = tokens_per_frame(cfg, latent_hw)

    def visible(start: int, n: int) -> int:  # past frames a block starting at `start` attends to
        return start if window == -1 else min(start, window - n)

    out = RunFlops(engine)
    pending = context_flops(cfg, rows)
    written = [(0, prefix_frames)] if prefix_frames else []  # (start, frames) of every clean piece
    if engine == "cache" and prefix_frames:
        pending += write_flops(cfg, prefix_frames, 0, tokens, rows)
    start = prefix_frames
    for k, n in enumerate(chunks):
        out.denoise_step = denoise_flops(cfg, n, visible(start, n), tokens, rows)
        step = out.denoise_step
        if engine == "recompute":
            step += sum(write_flops(cfg, f, visible(s, f), tokens, rows) for s, f in written)
        out.per_ar_step.append(pending + steps * step)
        pending = 0
        if k + 1 < len(chunks):
            if engine == "cache":
                pending = write_flops(cfg, n, visible(start, n), tokens, rows)
            written.append((start, n))
        start += n
    return out

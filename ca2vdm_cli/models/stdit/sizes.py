"""Sizes of CausalSTDiT from its config alone (no torch): parameters, buffers and the KV cache. The memory
plan, the bench and the run's JSON use these; tests check them against the built model and cache."""

from __future__ import annotations

from ca2vdm_cli.models.stdit.config import ModelConfig


def count_parameters(cfg: ModelConfig) -> int:
    """Trainable parameters of CausalSTDiT for `cfg` (must equal `sum(p.numel())` of the built model)."""
    C = cfg.hidden_size
    linear = lambda i, o: i * o + o  # noqa: E731  (weight + bias)
    patch = cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
    mlp_hidden = int(C * cfg.mlp_ratio)
    attention = linear(C, 3 * C) + linear(C, C)
    n = linear(cfg.in_channels * patch, C)  # x_embedder (Conv3d)
    n += linear(256, C) + linear(C, C) + linear(C, 6 * C)  # t_embedder, t_block
    if cfg.has_text:
        n += linear(cfg.caption_channels, C) + linear(C, C)  # y_proj
    if cfg.pooled_caption:
        n += 2 * linear(C, C)  # y_pooler
    n += 2 * C + linear(C, patch * cfg.out_channels)  # final layer
    per_block = 6 * C + 2 * attention + linear(C, mlp_hidden) + linear(mlp_hidden, C)
    if cfg.has_pe:
        per_block += attention
    if cfg.has_text:
        per_block += linear(C, C) + linear(C, 2 * C) + linear(C, C)
    n += cfg.depth * per_block
    if cfg.mask_channel:
        merges = cfg.depth if cfg.mask_channel_all_blocks else 1
        n += merges * linear(C + 1, C)
    return n


def count_buffers(cfg: ModelConfig) -> int:
    """Elements of the persistent buffers: position tables, <BOV> token, null caption."""
    n = cfg.tokens_per_frame * cfg.hidden_size + cfg.max_tpe_len * cfg.hidden_size
    n += cfg.in_channels * cfg.latent_size[0] * cfg.latent_size[1]
    if cfg.has_text:
        n += cfg.model_max_length * cfg.caption_channels
    return n


def kv_cache_bytes(cfg: ModelConfig, rows: int, cache_frames: int, bytes_per: int) -> int:
    """Bytes of the KV cache: D·B·L_max·S·2C (+ D·B·N·S·2C with prefix-enhanced attention) elements of
    `bytes_per` bytes; what `KVCache.nbytes` holds (tested)."""
    frames = cache_frames + (cfg.pe_frames if cfg.has_pe else 0)
    return cfg.depth * rows * frames * cfg.tokens_per_frame * 2 * cfg.hidden_size * bytes_per


def tempcache_meta_bytes(cfg: ModelConfig, rows: int, cache_frames: int, bytes_per: int) -> int:
    """Bytes TempCache adds to the queue (`TempKVCache.nbytes` − `KVCache.nbytes`, tested): per block,
    location and head a float32 count and an int32 group start per slot and one value vector."""
    sequences = cfg.depth * rows * cfg.tokens_per_frame * cfg.num_heads
    return sequences * (cache_frames * (4 + 4) + cfg.head_dim * bytes_per)

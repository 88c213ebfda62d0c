"""One CausalSTDiT block and the routes that feed its two cross-frame attentions.

A block is the same computation on every path; what differs is where the keys and values of the
temporal attention and of the prefix-enhanced (PE) spatial attention come from:

* `FullTemporal` / `FullSpatial`: one sequence holds every frame (training, the no-cache baseline, the
  oracle in the tests);
* `CachedTemporal` / `CachedSpatial`: the keys and values of earlier clean frames come from a
  `KVCache`; with `write=True` the new (clean, t = 0) frames are appended to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ca2vdm_cli.cache import KVCache
from ca2vdm_cli.config import ModelConfig
from ca2vdm_cli.layers import Attention, CrossAttention, Mlp, merge_heads, modulate, rope_rotate, split_heads


@dataclass
class FrameInputs:
    """Per-call inputs shared by all blocks."""

    tpe: Tensor | None  # (T, C) temporal position rows, added at block 0 only; None in rope mode
    mask_feat: Tensor | None  # (B, T) 1 on clean prefix frames, for attn_temp_pre_merge
    text: Tensor | None  # (B, N, C) projected caption
    text_mask: Tensor | None  # (B, N) bool


# ----------------------------------------------------------------------------- temporal routes
class FullTemporal:
    """All frames in one sequence; `mask` (T, T) or (B·S, 1, T, T) bool, or None with `causal`."""

    def __init__(self, *, causal: bool, mask: Tensor | None, rope: bool) -> None:
        self.causal, self.mask, self.rope = causal, mask, rope

    def attend(self, block: int, q: Tensor, k: Tensor, v: Tensor, need_output: bool) -> Tensor | None:
        # q, k, v (B·S, h, T, d)
        if self.rope:
            positions = torch.arange(q.shape[-2])
            q, k = rope_rotate(q, positions), rope_rotate(k, positions)
        if self.mask is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)


class CachedTemporal:
    """Keys/values = [cached clean frames ; the chunk]; the chunk is causal inside itself (bottom-right
    aligned mask) and sees every cached frame. With `write`, the chunk's K|V are stored (before RoPE)."""

    def __init__(self, cache: KVCache, *, write: bool, causal_chunk: bool, rope: bool) -> None:
        self.cache, self.write, self.rope = cache, write, rope
        self.causal_chunk = causal_chunk
        self._mask: Tensor | None = None

    def _chunk_mask(self, n_new: int, device: torch.device) -> Tensor | None:
        if not self.causal_chunk or n_new == 1:
            return None
        if self._mask is None:
            n_cached = self.cache.num_cached
            self._mask = torch.ones(n_new, n_cached + n_new, dtype=torch.bool, device=device).tril(n_cached)
        return self._mask

    def attend(self, block: int, q: Tensor, k: Tensor, v: Tensor, need_output: bool) -> Tensor | None:
        # q, k, v (B·S, h, l, d) for the l new frames
        cached_k, cached_v = self.cache.read(block)  # (B·S, h, n_cached, d)
        out = None
        if need_output:
            n_cached, n_new = cached_k.shape[-2], k.shape[-2]
            k_all = torch.cat([cached_k, k], dim=-2)  # (B·S, h, n_cached + l, d)
            v_all = torch.cat([cached_v, v], dim=-2)
            if self.rope:
                q_pos = torch.arange(n_cached, n_cached + n_new)
                k_pos = torch.cat([self.cache.window_positions(), q_pos])
                q, k_all = rope_rotate(q, q_pos), rope_rotate(k_all, k_pos)
            mask = self._chunk_mask(n_new, q.device)
            out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        if self.write:
            self.cache.store(block, k, v)
        return out


# ----------------------------------------------------------------------------- spatial (PE) routes
class FullSpatial:
    """Each frame attends to the context frames `index` (B, T, N) of its own sequence; `valid` (B, T)
    zeroes the branch where there is no context (no clean prefix)."""

    def __init__(self, index: Tensor, valid: Tensor | None) -> None:
        self.index, self.valid = index, valid

    def attend(self, block: int, attn: Attention, x: Tensor) -> Tensor | None:
        B, T, S, C = x.shape
        N = self.index.shape[-1]
        q, kv = attn.qkv(x).split([C, 2 * C], dim=-1)  # (B, T, S, C), (B, T, S, 2C)
        gather = self.index.reshape(B, T * N, 1, 1).expand(B, T * N, S, 2 * C)
        ctx = torch.gather(kv, 1, gather).view(B * T, N * S, 2 * C)  # (B·T, N·S, 2C)
        k, v = split_heads(ctx, 2 * attn.num_heads).chunk(2, dim=-3)  # (B·T, h, N·S, d)
        q = split_heads(q.reshape(B * T, S, C), attn.num_heads)  # (B·T, h, S, d)
        out = attn.proj(merge_heads(F.scaled_dot_product_attention(q, k, v))).view(B, T, S, C)
        if self.valid is not None:
            out = out * self.valid[:, :, None, None].to(out.dtype)
        return out


class CachedSpatial:
    """Denoising: the chunk attends to the cached context only. Writing: clean frames attend to
    themselves (prev_frames_N) or to frame 0 (first_frame), and the context is updated."""

    def __init__(self, cache: KVCache, *, write: bool) -> None:
        self.cache, self.write = cache, write

    def attend(self, block: int, attn: Attention, x: Tensor) -> Tensor | None:
        B, T, S, C = x.shape
        h = attn.num_heads
        if not self.write:
            if not self.cache.has_context:
                return None  # nothing clean yet (text-to-video start): the branch adds nothing
            q = F.linear(x, attn.qkv.weight[:C], attn.qkv.bias[:C])  # only the query third is needed
            q = split_heads(q.reshape(B, T * S, C), h)  # (B, h, T·S, d)
            ctx_k, ctx_v = self.cache.read_context(block)  # (B, h, N·S, d)
            out = F.scaled_dot_product_attention(q, ctx_k, ctx_v)  # (B, h, T·S, d)
            return attn.proj(merge_heads(out)).view(B, T, S, C)

        qkv = attn.qkv(x).view(B * T, S, 3 * C)
        q, k, v = split_heads(qkv, 3 * h).chunk(3, dim=1)  # (B·T, h, S, d)
        frame_k = k.unflatten(0, (B, T)).transpose(1, 2)  # (B, h, T, S, d)
        frame_v = v.unflatten(0, (B, T)).transpose(1, 2)
        if self.cache.pe_mode == "first_frame":
            if self.cache.has_context:
                ctx_k, ctx_v = self.cache.read_context(block)  # (B, h, S, d)
            else:  # the first write: frame 0 is in this chunk
                ctx_k, ctx_v = frame_k[:, :, 0], frame_v[:, :, 0]
            q = q.unflatten(0, (B, T)).transpose(1, 2).reshape(B, h, T * S, -1)  # (B, h, T·S, d)
            out = merge_heads(F.scaled_dot_product_attention(q, ctx_k, ctx_v))  # (B, T·S, C)
        else:  # a clean frame's context is itself (N copies of the same keys change nothing)
            out = merge_heads(F.scaled_dot_product_attention(q, k, v))  # (B·T, S, C)
        self.cache.store_context(block, frame_k, frame_v)
        return attn.proj(out).view(B, T, S, C)


# ----------------------------------------------------------------------------- the block
class CausalSTDiTBlock(nn.Module):
    """Spatial attn → PE spatial attn → causal temporal attn → cross-attn → MLP, adaLN-single per frame."""

    def __init__(self, config: ModelConfig, index: int) -> None:
        super().__init__()
        C, h = config.hidden_size, config.num_heads
        self.index = index
        self.norm1 = nn.LayerNorm(C, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(C, h)
        self.attn_cf = Attention(C, h) if config.has_pe else None
        self.attn_temp = Attention(C, h)
        has_merge = config.mask_channel and (index == 0 or config.mask_channel_all_blocks)
        self.attn_temp_pre_merge = nn.Linear(C + 1, C) if has_merge else None
        self.cross_attn = CrossAttention(C, h) if config.has_text else None
        self.norm2 = nn.LayerNorm(C, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(C, int(C * config.mlp_ratio), C)
        self.scale_shift_table = nn.Parameter(torch.randn(6, C) / C**0.5)

    def forward(
        self,
        x: Tensor,
        t_mlp: Tensor,
        frames: FrameInputs,
        temporal: FullTemporal | CachedTemporal,
        spatial: FullSpatial | CachedSpatial | None,
        kv_only: bool = False,
    ) -> Tensor:
        # x (B, T, S, C); t_mlp (B, T', 6C) with T' in {1, T}
        B, T, S, C = x.shape
        mod = (self.scale_shift_table + t_mlp.unflatten(-1, (6, C))).unsqueeze(3)  # (B, T', 6, 1, C)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unbind(2)  # (B, T', 1, C)

        # (a, b) spatial self-attention within each frame
        h = modulate(self.norm1(x), shift_msa, scale_msa)  # (B, T, S, C)
        x = x + gate_msa * self.attn.self_attention(h.view(B * T, S, C)).view(B, T, S, C)

        # (c) prefix-enhanced spatial attention on the raw residual stream, gated by gate_msa (spec §1.4c)
        if self.attn_cf is not None and spatial is not None:
            pe = spatial.attend(self.index, self.attn_cf, x)
            if pe is not None:
                x = x + gate_msa * pe

        # (d) causal temporal attention on the raw residual stream; TPE only in block 0
        xt = x.transpose(1, 2)  # (B, S, T, C)
        if self.index == 0 and frames.tpe is not None:
            xt = xt + frames.tpe
        if self.attn_temp_pre_merge is not None:
            feat = frames.mask_feat[:, None, :, None].to(xt.dtype).expand(B, S, T, 1)  # (B, S, T, 1)
            xt = self.attn_temp_pre_merge(torch.cat([xt, feat], dim=-1))
        heads = self.attn_temp.num_heads
        qkv = split_heads(self.attn_temp.qkv(xt).reshape(B * S, T, 3 * C), 3 * heads)  # (B·S, 3h, T, d)
        q, k, v = qkv.chunk(3, dim=1)  # (B·S, h, T, d)
        out = temporal.attend(self.index, q, k, v, need_output=not kv_only)
        if kv_only:
            return x
        out = self.attn_temp.proj(merge_heads(out)).view(B, S, T, C).transpose(1, 2)  # (B, T, S, C)
        x = x + gate_msa * out

        # (e) cross-attention to the caption, ungated (PixArt)
        if self.cross_attn is not None:
            x = x + self.cross_attn(x.reshape(B, T * S, C), frames.text, frames.text_mask).view(B, T, S, C)

        # (f) MLP
        h = modulate(self.norm2(x), shift_mlp, scale_mlp)
        return x + gate_mlp * self.mlp(h)

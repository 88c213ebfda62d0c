"""One CausalSTDiT block and the routes that feed its two cross-frame attentions.

A block is the same computation on every path; what differs is where the keys and values of the
temporal attention and of the prefix-enhanced (PE) spatial attention come from:

* `FullTemporal` / `FullSpatial`: one sequence holds every frame (training, the no-cache baseline, the
  oracle in the tests);
* `CachedTemporal` / `CachedSpatial`: the keys and values of earlier clean frames come from a
  `KVCache`; with `write=True` the new (clean, t = 0) frames are appended to it. Their masks, rotary
  tables and cache counts are fixed when they are built (once per AR step), so the denoising steps that
  reuse them run without host synchronisation and with static shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ca2vdm_cli.models.stdit.cache import KVCache
from ca2vdm_cli.models.stdit.config import ModelConfig
from ca2vdm_cli.models.stdit.layers import (
    Attention,
    CrossAttention,
    Mlp,
    merge_heads,
    modulate,
    rope_apply,
    rope_tables,
    split_heads,
)


@dataclass
class PreparedText:
    """A caption ready for cross-attention. `kv` holds every block's caption K|V once computed: they are the
    same for every denoising step and AR step of a generation, so they are computed once per generation."""

    tokens: Tensor  # (B, N, C) projected caption
    mask: Tensor | None  # (B, N) bool, True = valid token
    kv: list[tuple[Tensor, Tensor]] | None = None  # per block: (B, h, N, d) keys and values
    pooled: Tensor | None = None  # (B, C) added to the timestep embedding (ModelConfig.pooled_caption)

    def tensors(self) -> list[Tensor]:
        out = [self.tokens] + ([] if self.mask is None else [self.mask])
        out += [] if self.pooled is None else [self.pooled]
        return out + [t for pair in self.kv or [] for t in pair]


@dataclass
class FrameInputs:
    """Per-call inputs shared by all blocks."""

    tpe: Tensor | None  # (T, C) temporal position rows, added at block 0 only; None in rope mode
    mask_feat: Tensor | None  # (B, T) 1 on clean prefix frames, for attn_temp_pre_merge
    text: PreparedText | None


# ----------------------------------------------------------------------------- temporal routes
class FullTemporal:
    """All frames in one sequence; `mask` (T, T) or (B·S, 1, T, T) bool, or None with `causal`."""

    def __init__(self, *, causal: bool, mask: Tensor | None, rope: bool) -> None:
        self.causal, self.mask, self.rope = causal, mask, rope

    def attend(self, block: int, q: Tensor, k: Tensor, v: Tensor, need_output: bool) -> Tensor | None:
        # q, k, v (B·S, h, T, d)
        if self.rope:
            cos, sin = rope_tables(torch.arange(q.shape[-2], device=q.device), q.shape[-1])
            q, k = rope_apply(q, cos, sin), rope_apply(k, cos, sin)
        if self.mask is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)


class CachedTemporal:
    """Keys/values = [cached clean frames ; the chunk]; the chunk is causal inside itself (bottom-right
    aligned mask) and sees every cached frame. With `write`, the chunk's K|V are stored (before RoPE).
    Built for a chunk of `n_new` frames against the cache as it is now; valid until the cache changes.
    With a TempCache whose held frames have merged, `bias` ((D, B·S, h, 1, n + n_new): ln(count) of the
    cached slots, 0 for the chunk) is added to the logits as a float mask; None otherwise (dense)."""

    def __init__(self, cache: KVCache, n_new: int, *, write: bool, causal_chunk: bool, rope: bool) -> None:
        self.cache, self.write = cache, write
        self.n_cached = n = cache.num_cached
        device = cache.device
        self.mask: Tensor | None = None  # (n_new, n + n_new) bool
        if causal_chunk and n_new > 1:
            self.mask = torch.ones(n_new, n + n_new, dtype=torch.bool, device=device).tril(n)
        self.bias: Tensor | None = None  # (D, B·S, h, 1, n + n_new) float
        cached_bias = cache.temporal_bias(n)  # (D, B·S, h, 1, n) or None
        if cached_bias is not None:
            own = cached_bias.new_zeros(cached_bias.shape[:-1] + (n_new,))
            self.bias = torch.cat([cached_bias, own], dim=-1)
            if self.mask is not None:  # the chunk's causal mask as an additive one
                self.mask = torch.zeros(self.mask.shape, dtype=self.bias.dtype, device=device).masked_fill(
                    ~self.mask, float("-inf")
                )
        self.rope_q: tuple[Tensor, Tensor] | None = None  # cos, sin (n_new, d/2)
        self.rope_k: tuple[Tensor, Tensor] | None = None  # cos, sin (n + n_new, d/2)
        if rope:
            q_pos = torch.arange(n, n + n_new, device=device)
            k_pos = torch.cat([cache.window_positions(device), q_pos])  # made on the device: no copy
            self.rope_q = rope_tables(q_pos, cache.head_dim)
            self.rope_k = rope_tables(k_pos, cache.head_dim)

    def inputs(self) -> list[Tensor]:
        """Tensors whose values may differ between two routes of the same shape (the ring's RoPE order)."""
        return [*(self.rope_q or ()), *(self.rope_k or ()), *(() if self.bias is None else (self.bias,))]

    def attend(self, block: int, q: Tensor, k: Tensor, v: Tensor, need_output: bool) -> Tensor | None:
        # q, k, v (B·S, h, l, d) for the l new frames
        out = None
        if need_output:
            k_all, v_all = self.cache.window(block, self.n_cached, k, v)  # (B·S, h, n_cached + l, d)
            if self.rope_q is not None and self.rope_k is not None:
                q, k_all = rope_apply(q, *self.rope_q), rope_apply(k_all, *self.rope_k)
            mask = self.mask
            if self.bias is not None:  # (B·S, h, 1, L) [+ (n_new, L)]: TempCache's ln(count)
                mask = self.bias[block] if mask is None else self.bias[block] + mask
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
        self.has_context = cache.has_context

    def attend(self, block: int, attn: Attention, x: Tensor) -> Tensor | None:
        B, T, S, C = x.shape
        h = attn.num_heads
        if not self.write:
            if not self.has_context:
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
            if self.has_context:
                ctx_k, ctx_v = self.cache.read_context(block)  # (B, h, S, d)
            else:  # the first write: frame 0 is in this chunk
                ctx_k, ctx_v = frame_k[:, :, 0], frame_v[:, :, 0]
            q = q.unflatten(0, (B, T)).transpose(1, 2).reshape(B, h, T * S, -1)  # (B, h, T·S, d)
            out = merge_heads(F.scaled_dot_product_attention(q, ctx_k, ctx_v))  # (B, T·S, C)
        else:  # a clean frame's context is itself (N copies of the same keys change nothing)
            out = merge_heads(F.scaled_dot_product_attention(q, k, v))  # (B·T, S, C)
        self.cache.store_context(block, frame_k, frame_v)
        return attn.proj(out).view(B, T, S, C)


@dataclass
class CachedStep:
    """What a cached pass over a chunk of `n_new` frames needs besides latents, timestep and caption, fixed
    for the cache as it is when built (`CausalSTDiT.plan_step`, once per AR step): temporal position rows,
    the mask-channel feature and the cache routes with their masks and rotary tables."""

    n_new: int
    write: bool
    tpe: Tensor | None  # (n_new, C)
    mask_feat: Tensor  # (B, n_new)
    temporal: CachedTemporal
    spatial: CachedSpatial | None

    @property
    def key(self) -> tuple[int, bool, int, bool, bool]:
        """Steps with equal keys run the same computation on same-shaped tensors (one compiled graph)."""
        context = self.spatial is not None and self.spatial.has_context
        return (self.n_new, self.write, self.temporal.n_cached, context, self.temporal.bias is not None)

    def inputs(self) -> list[Tensor]:
        """Tensors whose values differ between steps with equal keys (copied into a captured graph)."""
        return ([] if self.tpe is None else [self.tpe]) + self.temporal.inputs()


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

        # (c) prefix-enhanced spatial attention on the raw residual stream, gated by gate_msa
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
        if self.cross_attn is not None and frames.text is not None:
            text = frames.text
            y = text.kv[self.index] if text.kv is not None else text.tokens
            x = x + self.cross_attn(x.reshape(B, T * S, C), y, text.mask).view(B, T, S, C)

        # (f) MLP
        h = modulate(self.norm2(x), shift_mlp, scale_mlp)
        return x + gate_mlp * self.mlp(h)

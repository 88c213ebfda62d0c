"""CausalWan: the block-causal Wan2.1 DiT with a shared clean-past KV cache (§4).

Per block of n latent frames at absolute start s: every denoising call (`denoise`) reads the same
cached past, plus the block's own fresh K/V, and returns the flow v ≈ ε − x0; after the last step the
clean x0 runs once at t = 0 (`write_cache`) and only that pass writes the K/V later blocks see. The
prompt's cross-attention K/V are computed once per context tensor (`prepare_context`, or implicitly by
the first call that sees a new tensor) and kept in the cache. The cache's `AttentionOptions`
(`new_cache(..., attention=...)`) switch on TempCache, AnnCA and AnnSA; the default is plain dense SDPA.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ca2vdm_cli.errors import ConfigError, InputError, WeightsError
from ca2vdm_cli.models.attention_opts import DENSE, AttentionOptions
from ca2vdm_cli.models.sparse_attention import build_key_index, lsh_projection, sparse_attention
from ca2vdm_cli.models.wan.cache import WanKVCache
from ca2vdm_cli.models.wan.config import WanConfig
from ca2vdm_cli.models.wan.cross import collapse_padding, cross_attend
from ca2vdm_cli.models.wan.layers import LayerNorm, SelfAttend, WanBlock
from ca2vdm_cli.models.wan.rope import apply_rope, rope_tables, token_freqs
from ca2vdm_cli.models.wan.tempcache import TempWanKVCache

log = logging.getLogger(__name__)


class Head(nn.Module):
    """Output projection modulated per frame by e (not e0): `head.head`, `head.modulation`."""

    def __init__(self, dim: int, out_features: int, eps: float) -> None:
        super().__init__()
        self.norm = LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """x (B, F·S, d), e (B, F, d) → (B, F·S, out_features)."""
        B, N, d = x.shape
        nf = e.shape[1]
        shift, scale = (self.modulation.unsqueeze(0) + e.unsqueeze(2)).unsqueeze(3).unbind(2)  # (B, F, 1, d)
        h = self.norm(x.view(B, nf, N // nf, d)) * (1 + scale) + shift  # (B, F, S, d)
        return self.head(h.view(B, N, d))


def sinusoid(t: Tensor, dim: int) -> Tensor:
    """[cos(t·ω), sin(t·ω)], ω_i = 10000^(−i/(dim/2)), in float64: t (B, F) → (B, F, dim)."""
    half = dim // 2
    omega = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)  # (half,)
    arg = t.double().unsqueeze(-1) * omega  # (B, F, half)
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)


class CausalWan(nn.Module):
    """The causal Wan2.1 DiT; parameter names are the official ones (after stripping `model.`)."""

    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, p = cfg.dim, cfg.patch_size
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=p, stride=p)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(
            WanBlock(d, cfg.ffn_dim, cfg.num_heads, cfg.eps) for _ in range(cfg.num_layers)
        )
        self.head = Head(d, cfg.out_dim * math.prod(p), cfg.eps)
        self._tables: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    @property
    def config(self) -> WanConfig:
        """The architecture (the name every family's model answers to)."""
        return self.cfg

    # ------------------------------------------------------------------ loading
    def load_official_state_dict(self, sd: dict[str, Tensor]) -> None:
        """Load the 825 official tensors strictly (a leading `model.` is stripped); WeightsError on any
        missing, unexpected or mis-shaped key (as CausalSTDiT's loader). Meta-built models take the
        tensors as they are."""
        sd = {k.removeprefix("model."): v for k, v in sd.items()}
        own = self.state_dict()
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        shaped = [
            f"{k} {tuple(sd[k].shape)} != {tuple(own[k].shape)}"
            for k in own
            if k in sd and sd[k].shape != own[k].shape
        ]
        for what, bad in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)):
            if bad:
                raise WeightsError(
                    f"{len(bad)} {what} keys in the Wan state dict, first: {bad[:3]}; "
                    "pass the generator's 825 official tensors (see WanConfig for the matching shapes)"
                )
        meta = any(t.is_meta for t in self.parameters())
        self.load_state_dict(sd, strict=True, assign=meta)

    # ------------------------------------------------------------------ cache and prompt
    def new_cache(
        self,
        *,
        batch_size: int,
        max_frames: int,
        frame_shape: tuple[int, int],
        position_mode: str | None = None,
        local_attn_size: int | None = None,
        sink_size: int | None = None,
        attention: AttentionOptions | None = None,
    ) -> WanKVCache:
        """A cache for latent frames of frame_shape (H, W). Window mode holds local_attn_size − n past frames
        (sinks included); global mode holds max_frames (TempCache: `tempcache_budget_frames` if set).
        `position_mode`, `local_attn_size` and `sink_size` override the config's for this run (e.g. a
        window and sink on a globally trained model); `attention` selects TempCache / AnnCA / AnnSA
        (default dense)."""
        changes = {
            k: v
            for k, v in (
                ("position_mode", position_mode),
                ("local_attn_size", local_attn_size),
                ("sink_size", sink_size),
            )
            if v is not None
        }
        cfg = dataclasses.replace(self.cfg, **changes) if changes else self.cfg  # validates the window
        mode = cfg.position_mode
        opts = attention or DENSE
        opts.check_supported(model="CausalWan", has_text=True, absolute_positions=mode == "absolute")
        H, W = frame_shape
        _, ph, pw = cfg.patch_size
        if H % ph or W % pw or ph > H or pw > W:
            raise InputError(f"latent frame {H}x{W} is not a multiple of the {ph}x{pw} patch; crop or pad it")
        grid = (H // ph, W // pw)
        if max(grid) > cfg.rope_positions:
            raise InputError(
                f"a {grid[0]}x{grid[1]}-token frame exceeds the {cfg.rope_positions}-row RoPE table"
            )
        n = cfg.num_frame_per_block
        past = cfg.local_attn_size - n if cfg.windowed else max_frames
        if past < 0:
            raise InputError(f"max_frames must be >= 0, got {max_frames}")
        p = next(self.parameters())
        kind = TempWanKVCache if opts.kv_compress == "tempcache" else WanKVCache
        return kind(
            num_layers=cfg.num_layers, batch_size=batch_size, past_frames=past, sink_frames=cfg.sink_size,
            block_frames=n, grid=grid, num_heads=cfg.num_heads, head_dim=cfg.head_dim, position_mode=mode,
            windowed=cfg.windowed, device=p.device, dtype=p.dtype, options=opts,
        )  # fmt: skip

    @torch.no_grad()
    def prepare_context(self, cache: WanKVCache, context: Tensor) -> None:
        """Compute the prompt's cross K/V once: context (B, L ≤ text_len, text_dim), zero-padded."""
        B, L, _ = context.shape
        if self.cfg.text_len < L or cache.batch_size != B:
            raise InputError(
                f"context {tuple(context.shape)} must be (batch {cache.batch_size}, "
                f"<= {self.cfg.text_len} rows, {self.cfg.text_dim}); "
                "truncate the prompt or match the cache's batch size"
            )
        padded = F.pad(context, (0, 0, 0, self.cfg.text_len - L))  # (B, text_len, text_dim)
        text = self.text_embedding(padded.to(self.head.head.weight.dtype))  # (B, text_len, d)
        kv = [blk.cross_attn.context_kv(text) for blk in self.blocks]
        k, v = (
            torch.stack([k for k, _ in kv]),
            torch.stack([v for _, v in kv]),
        )  # (layers, B, h, text_len, hd)
        if cache.options.sparse_cross == "none":
            cache.set_context(context, k, v)
        else:
            cache.set_context(context, *collapse_padding(context, k, v))

    # ------------------------------------------------------------------ the two passes
    @torch.no_grad()
    def denoise(self, cache: WanKVCache, x: Tensor, t: Tensor, context: Tensor, start_frame: int) -> Tensor:
        """Flow prediction for the block x (B, C, F, H, W) at per-frame timesteps t (B, F) or (B,); the
        cached past is read, never changed."""
        return self._forward(cache, x, t, context, start_frame, write=False)

    @torch.no_grad()
    def write_cache(self, cache: WanKVCache, x0: Tensor, context: Tensor, start_frame: int) -> None:
        """Run the clean block x0 (B, C, F, H, W) at t = 0 and make its K/V the newest past frames."""
        t = torch.zeros(x0.shape[0], x0.shape[2], device=x0.device)  # (B, F)
        self._forward(cache, x0, t, context, start_frame, write=True)
        cache.advance(x0.shape[2])

    def _forward(
        self, cache: WanKVCache, x: Tensor, t: Tensor, context: Tensor, s: int, write: bool
    ) -> Tensor:
        B, _, nf, H, W = x.shape
        self._check_call(cache, x, s)
        if not cache.has_context(context):
            self.prepare_context(cache, context)
        dtype = self.head.head.weight.dtype
        t = t.expand(B, nf) if t.dim() == 2 else t[:, None].expand(B, nf)  # (B, F)
        e = self.time_embedding(sinusoid(t, self.cfg.freq_dim).to(dtype))  # (B, F, d)
        e0 = self.time_projection(e).unflatten(-1, (6, self.cfg.dim))  # (B, F, 6, d)
        h = self.patch_embedding(x.to(dtype))  # (B, d, F, h, w)
        grid = (h.shape[3], h.shape[4])
        h = h.flatten(2).transpose(1, 2)  # (B, F·S, d)
        attend_for = self._attention(cache, s, nf, grid, write)
        S = grid[0] * grid[1]
        for layer, block in enumerate(self.blocks):
            cross = cross_attend(cache.cross, cache.options, layer, s, S, cache.stats)
            h = block(h, e0, attend_for(layer), cache.context_k[layer], cache.context_v[layer], cross)
        if write:
            return h
        out = self.head(h, e)  # (B, F·S, p·q·r·c)
        return self._unpatchify(out, nf, grid)  # (B, C, F, H, W)

    def _check_call(self, cache: WanKVCache, x: Tensor, s: int) -> None:
        cfg, nf = self.cfg, x.shape[2]
        if nf != cfg.num_frame_per_block:
            raise ConfigError(
                f"a block of {nf} latent frames, but the model was trained with num_frame_per_block="
                f"{cfg.num_frame_per_block}; split the latents into blocks of {cfg.num_frame_per_block}"
            )
        if s != cache.written:
            raise InputError(
                f"start_frame {s} but the cache holds frames up to {cache.written}; "
                "write every earlier block first"
            )
        if x.shape[0] != cache.batch_size:
            raise InputError(f"batch {x.shape[0]} does not match the cache's batch size {cache.batch_size}")
        if cache.position_mode == "absolute" and s + nf > cfg.rope_positions:
            raise ConfigError(
                f"frame {s + nf - 1} is past the {cfg.rope_positions}-frame RoPE table of absolute "
                "positions; use position_mode='relative' for longer rollouts"
            )
        if cache.position_mode == "relative" and cache.num_visible + nf > cfg.rope_positions:
            raise ConfigError(
                f"a window of {cache.num_visible + nf} frames exceeds the {cfg.rope_positions}-row "
                "RoPE table; "
                "use a smaller max_frames or a window (local_attn_size)"
            )

    def _attention(
        self, cache: WanKVCache, s: int, nf: int, grid: tuple[int, int], write: bool
    ) -> Callable[[int], SelfAttend]:
        """Per-layer self-attention over [visible past ; own block], rotating per the cache's mode."""
        tables = self._rope(cache._k.device)
        m = cache.num_visible
        relative = cache.position_mode == "relative"
        own = token_freqs(tables, range(m, m + nf) if relative else range(s, s + nf), grid)  # (N, pairs)
        keys = (
            token_freqs(tables, cache.visible_positions() + list(range(m, m + nf)), grid)
            if relative
            else None
        )

        def make(layer: int):
            def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
                q = apply_rope(q, own)  # (B, h, N, hd)
                k_own = k if relative else apply_rope(k, own)  # (B, h, N, hd)
                k_all, v_all = cache.window(layer, k_own, v)  # (B, h, M, hd)
                if keys is not None:
                    k_all = apply_rope(k_all, keys)
                bias = cache.key_bias(layer, k_own.shape[2])  # (B, h, 1, M) or None
                n_past = k_all.shape[2] - k_own.shape[2]
                if cache.options.sparse_self != "none" and n_past > 0:
                    out = _sparse_self(cache, layer, q, k_all, v_all, n_past, bias)
                elif bias is None:
                    out = F.scaled_dot_product_attention(q, k_all, v_all)  # (B, h, N, hd)
                else:
                    out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=bias)
                if write:
                    cache.store(layer, k_own, v)
                return out

            return attend

        return make

    def _rope(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        if device not in self._tables:
            self._tables[device] = rope_tables(
                self.cfg.head_dim, self.cfg.rope_positions, self.cfg.rope_theta, device
            )
        return self._tables[device]

    def _unpatchify(self, out: Tensor, nf: int, grid: tuple[int, int]) -> Tensor:
        """Tokens (B, F·h·w, p·q·r·c), c fastest → (B, c, F·p, h·q, w·r)."""
        B = out.shape[0]
        (p, q, r), c, (gh, gw) = self.cfg.patch_size, self.cfg.out_dim, grid
        x = out.view(B, nf, gh, gw, p, q, r, c).permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, c, F, p, h, q, w, r)
        return x.reshape(B, c, nf * p, gh * q, gw * r)


def _sparse_self(
    cache: WanKVCache, layer: int, q: Tensor, k: Tensor, v: Tensor, n_past: int, bias: Tensor | None
) -> Tensor:
    """AnnSA over [past ; own block]: the past's key index is built at the block's first call and reused."""
    opts = cache.options
    entry = cache.sparse.get(layer)
    if entry is None or entry[0] != cache.written:
        proj = None
        if opts.sparse_self == "lsh":
            proj = lsh_projection(q.shape[-1], opts.lsh_bits, opts.seed, layer, q.device, q.dtype)
        past_bias = None if bias is None else bias[..., :n_past]
        mode = "lsh" if opts.sparse_self == "lsh" else "topk"
        index = build_key_index(
            mode, k[:, :, :n_past], past_bias, cache.always_keys(layer), opts.key_block, proj
        )
        entry = (cache.written, index)
        cache.sparse[layer] = entry
    return sparse_attention(
        q, k, v, n_past, bias, entry[1],  # type: ignore[arg-type]
        mode="lsh" if opts.sparse_self == "lsh" else "topk", query_block=opts.query_block,
        key_block=opts.key_block, density=opts.topk_density, stats=cache.stats, layer=layer,
    )  # fmt: skip

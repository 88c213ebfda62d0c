"""CausalSTDiT: the Ca2-VDM spatial-temporal diffusion transformer (official name `CausalSTDiT2`).

Three entry points, all on the same parameters:

* `forward`: every frame in one sequence, per-frame timesteps, causal temporal attention (training,
  the no-cache baseline, the test oracle);
* `denoise`: a noisy chunk against a `KVCache`, which it only reads (every denoising step);
* `write_cache`: a clean chunk at t = 0 (or at its perturbation level, for a model trained with noise-
  augmented context) whose keys/values are appended to the cache (once per AR step).

The cached path is split for speed: `prepare_text` (once per generation: caption projection and every
block's caption K|V), `plan_step` (once per AR step: positions, masks, cache views) and `run_denoise` (every
denoising step: static shapes, no host synchronisation, so it can be compiled or captured in a CUDA
graph). `denoise` and `write_cache` are these three in one call.

State-dict keys and shapes are those of the official checkpoint.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

from ca2vdm_cli.errors import ConfigError, WeightsError
from ca2vdm_cli.models.attention_opts import DENSE, AttentionOptions
from ca2vdm_cli.models.keys import describe_key_mismatch, key_mismatch
from ca2vdm_cli.models.stdit.block import (
    CachedSpatial,
    CachedStep,
    CachedTemporal,
    CausalSTDiTBlock,
    FrameInputs,
    FullSpatial,
    FullTemporal,
    PreparedText,
)
from ca2vdm_cli.models.stdit.cache import KVCache
from ca2vdm_cli.models.stdit.config import ModelConfig, check_attention, mismatch_cause
from ca2vdm_cli.models.stdit.layers import (
    CaptionEmbedder,
    FinalLayer,
    Mlp,
    PatchEmbed3D,
    TimestepEmbedder,
    sincos_1d,
    sincos_2d,
)
from ca2vdm_cli.models.stdit.tempcache import TempKVCache

logger = logging.getLogger(__name__)

# Deterministic tables: regenerated from the config instead of trusted from a checkpoint.
REGENERATED_BUFFERS = ("pos_embed", "pos_embed_temporal")
Caption = Tensor | PreparedText | None  # raw T5 features (B, N, C_text), a prepared caption, or null


class CausalSTDiT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        C = config.hidden_size
        self.x_embedder = PatchEmbed3D(config.patch_size, config.in_channels, C)
        self.t_embedder = TimestepEmbedder(C)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.y_embedder = (
            CaptionEmbedder(config.caption_channels, C, config.model_max_length) if config.has_text else None
        )
        self.y_pooler = Mlp(C, C, C) if config.pooled_caption else None
        self.blocks = nn.ModuleList(CausalSTDiTBlock(config, i) for i in range(config.depth))
        self.final_layer = FinalLayer(C, math.prod(config.patch_size), config.out_channels)
        pos, tpe = self._position_tables(None, torch.float32)  # on the default device (meta when deferred)
        self.register_buffer("pos_embed", pos)
        self.register_buffer("pos_embed_temporal", tpe)
        self.register_buffer("bov_token", torch.randn(config.in_channels, *config.latent_size) / 2)  # unused
        self.initialize_weights()

    # ------------------------------------------------------------------ construction
    def _position_tables(self, device: torch.device | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        cfg = self.config
        if device is not None:
            with torch.device("cpu"):
                pos, tpe = self._position_tables(None, dtype)
            return pos.to(device), tpe.to(device)
        pos = sincos_2d(cfg.hidden_size, *cfg.grid_size, scale=cfg.space_scale)  # (S, C)
        tpe = sincos_1d(cfg.hidden_size, torch.arange(cfg.max_tpe_len, dtype=torch.float32) / cfg.time_scale)
        return pos[None].to(dtype), tpe[None].to(dtype)  # (1, S, C), (1, M, C)

    def initialize_weights(self, zero_init_new: bool = True) -> None:
        """The official construction-time init: new temporal/PE branches start as no-ops.
        `zero_init_new=False` (training from scratch): temporal, prefix and cross-attention output
        projections, the mask-channel merge and the caption projection (y_proj; std 0.02 shrinks a small
        jointly trained text encoder's features ~30x, so the caption barely moves the output) keep the
        standard xavier init, so they learn from step 0."""

        def xavier(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(xavier)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for linear in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1]):
            nn.init.normal_(linear.weight, std=0.02)
        if self.y_embedder is not None and zero_init_new:  # PixArt's init, made for T5-XXL features
            nn.init.normal_(self.y_embedder.y_proj.fc1.weight, std=0.02)
            nn.init.normal_(self.y_embedder.y_proj.fc2.weight, std=0.02)
        zero = [self.final_layer.linear]
        if self.y_pooler is not None and zero_init_new:  # fine-tuning: the pooled path starts as a no-op
            zero.append(self.y_pooler.fc2)
        for block in self.blocks if zero_init_new else ():
            zero.append(block.attn_temp.proj)
            if block.cross_attn is not None:
                zero.append(block.cross_attn.proj)
            if block.attn_cf is not None:
                zero.append(block.attn_cf.proj)
            if block.attn_temp_pre_merge is not None:
                merge = block.attn_temp_pre_merge
                with torch.no_grad():
                    merge.weight.zero_()
                    merge.weight[:, : self.config.hidden_size].copy_(torch.eye(self.config.hidden_size))
                    merge.bias.zero_()
        for linear in zero:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    # ------------------------------------------------------------------ shared pieces
    def _check_latents(self, x: Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"latents must be (B, {self.config.in_channels}, T, H, W), got {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != tuple(self.config.latent_size):
            raise ValueError(
                f"latent size {tuple(x.shape[-2:])} does not match the model's "
                f"{tuple(self.config.latent_size)}"
            )

    def _embed_frames(self, x: Tensor) -> Tensor:
        x = x.to(self.x_embedder.proj.weight.dtype)
        return self.x_embedder(x) + self.pos_embed[:, None]  # (B, T, S, C)

    def _text(self, y: Caption, y_mask: Tensor | None, batch: int) -> PreparedText | None:
        if isinstance(y, PreparedText):
            if y.tokens.shape[0] != batch:
                raise ValueError(f"the prepared caption has batch {y.tokens.shape[0]}, latents have {batch}")
            if y_mask is not None:
                raise ValueError("a prepared caption carries its own mask; pass y_mask=None")
            return y
        if self.y_embedder is None:
            if y is not None:
                raise ValueError("this model has no text conditioning (caption_channels=0); pass y=None")
            return None
        if y is None:
            y = self.null_caption(batch)
        if y.dim() == 4:  # official layout (B, 1, N, C_text)
            y = y.squeeze(1)
        if y.shape[0] != batch:
            raise ValueError(f"y has batch {y.shape[0]}, latents have {batch}")
        mask = None if y_mask is None else y_mask.to(device=y.device, dtype=torch.bool)
        tokens = self.y_embedder(y)  # (B, N, C)
        return PreparedText(tokens, mask, pooled=self._pool_caption(tokens, mask))

    def _pool_caption(self, tokens: Tensor, mask: Tensor | None) -> Tensor | None:
        """The projected caption (B, N, C) averaged over its valid tokens, through `y_pooler` -> (B, C)."""
        if self.y_pooler is None:
            return None
        if mask is None:
            return self.y_pooler(tokens.mean(1))
        w = mask.to(tokens.dtype)[..., None]  # (B, N, 1)
        return self.y_pooler((tokens * w).sum(1) / w.sum(1).clamp(min=1))

    @staticmethod
    def _add_pooled(t_emb: Tensor, text: PreparedText | None) -> Tensor:
        """t_emb (B, T', C) plus the pooled caption (B, C) of a pooled-caption model."""
        if text is None or text.pooled is None:
            return t_emb
        return t_emb + text.pooled[:, None].to(t_emb.dtype)

    def prepare_text(self, y: Caption, y_mask: Tensor | None, batch: int) -> PreparedText | None:
        """The caption y (B, N, C_text) (None: the null caption) projected once, with every block's
        cross-attention K|V, for reuse by all passes of a generation (None for a model without text)."""
        text = self._text(y, y_mask, batch)
        if text is not None and text.kv is None:
            kv = [block.cross_attn.text_kv(text.tokens) for block in self.blocks if block.cross_attn]
            text = PreparedText(text.tokens, text.mask, kv, text.pooled)
        return text

    def _tpe(self, start: int, length: int) -> Tensor | None:
        """Temporal position rows (length, C) for frames start..start+length-1."""
        cfg = self.config
        if cfg.tpe_mode == "rope":
            return None
        if cfg.tpe_mode == "fixed":
            if start + length > cfg.max_tpe_len:
                raise ConfigError(
                    f"fixed temporal positions cover {cfg.max_tpe_len} frames, but frames up to "
                    f"{start + length - 1} were asked for; use a model with tpe_mode='cyclic'"
                )
            return self.pos_embed_temporal[0, start : start + length]
        rows = (start + torch.arange(length, device=self.pos_embed_temporal.device)) % cfg.max_tpe_len
        return self.pos_embed_temporal[0, rows]

    def _unpatchify(self, x: Tensor) -> Tensor:
        """(B, T, S, p_h·p_w·c_out) -> (B, c_out, T, H, W) in float32."""
        B, T = x.shape[:2]
        (gh, gw), (_, ph, pw) = self.config.grid_size, self.config.patch_size
        c = self.config.out_channels
        x = x.view(B, T, gh, gw, ph, pw, c).permute(0, 6, 1, 2, 4, 3, 5)  # (B, c, T, gh, ph, gw, pw)
        return x.reshape(B, c, T, gh * ph, gw * pw).float()

    def null_caption(self, batch: int) -> Tensor:
        """The null caption (B, N, C_text) used for classifier-free guidance."""
        if self.y_embedder is None:
            raise ValueError("this model has no text conditioning")
        return self.y_embedder.y_embedding[None].expand(batch, -1, -1)

    # ------------------------------------------------------------------ full-sequence forward
    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Caption = None,
        y_mask: Tensor | None = None,
        prefix_mask: Tensor | None = None,
        tpe_start: int = 0,
        temporal_mask: Tensor | None = None,
        num_prefix: int | None = None,
    ) -> Tensor:
        """Every frame in one sequence. x (B, c, T, H, W); t (B,) or per-frame (B, T); prefix_mask (B, T)
        is 1 on a leading run of clean frames, or `num_prefix` gives that run's length for every sample
        (no validation, no host synchronisation: the engines' path); `temporal_mask` (T, T) bool replaces
        the causal mask (the tests use it for the block-sliding-window oracle). Returns (B, c_out, T, H, W)
        float32."""
        self._check_latents(x)
        B, _, T = x.shape[:3]
        device = x.device
        frame = torch.arange(T, device=device)
        counts: Tensor | int = num_prefix if num_prefix is not None else 0
        if num_prefix is not None and (prefix_mask is not None or not 0 <= num_prefix <= T):
            raise ValueError(f"num_prefix={num_prefix} needs 0 <= num_prefix <= {T} and no prefix_mask")
        prefix = (frame < counts)[None].expand(B, T)  # (B, T) bool
        if prefix_mask is not None:
            prefix = prefix_mask.to(device=device, dtype=torch.bool)
            counts = prefix.sum(1)  # (B,)
            if not torch.equal(prefix, frame[None] < counts[:, None]):
                raise ValueError("prefix_mask must mark a leading run of frames (clean prefix first)")

        tokens = self._embed_frames(x)  # (B, T, S, C)
        text = self._text(y, y_mask, B)
        t_emb, t_mlp = self.embed_timesteps(t.to(device), text)
        frames = FrameInputs(self._tpe(tpe_start, T), prefix.float(), text)
        temporal = self._full_temporal(prefix, temporal_mask)
        spatial = self._full_spatial(counts, B, T, device) if self.config.has_pe else None
        for block in self.blocks:
            tokens = block(tokens, t_mlp, frames, temporal, spatial)
        return self._unpatchify(self.final_layer(tokens, t_emb))

    def _full_temporal(self, prefix: Tensor, temporal_mask: Tensor | None) -> FullTemporal:
        rope = self.config.tpe_mode == "rope"
        mode = self.config.temporal_attention
        if temporal_mask is not None:
            return FullTemporal(causal=False, mask=temporal_mask.to(prefix.device, torch.bool), rope=rope)
        if mode != "partial":
            return FullTemporal(causal=mode == "causal", mask=None, rope=rope)
        # partial: prefix rows causal, noisy rows see every frame (ablation)
        B, T = prefix.shape
        causal = torch.ones(T, T, dtype=torch.bool, device=prefix.device).tril()
        mask = causal[None] | ~prefix[:, :, None]  # (B, T, T)
        mask = mask[:, None].expand(B, self.config.tokens_per_frame, T, T).flatten(0, 1)[:, None]
        return FullTemporal(causal=False, mask=mask, rope=rope)  # mask (B·S, 1, T, T)

    def _full_spatial(self, num_prefix: Tensor | int, B: int, T: int, device: torch.device) -> FullSpatial:
        """Context frames per frame, no host sync: prefix frames see themselves (prev_frames_N)
        or frame 0 (first_frame); noisy frames see prefix frames P-1 … P-N clamped at 0; none when P = 0."""
        N = self.config.pe_frames
        frame = torch.arange(T, device=device)
        if isinstance(num_prefix, int):
            valid = None if num_prefix > 0 else torch.zeros(B, T, dtype=torch.bool, device=device)
            num_prefix = torch.full((B,), num_prefix, dtype=torch.long, device=device)
        else:
            valid = (num_prefix > 0)[:, None].expand(B, T)  # multiplying by ones changes nothing
        if self.config.pe_mode == "first_frame":
            return FullSpatial(torch.zeros(B, T, 1, dtype=torch.long, device=device), valid)
        prev = (num_prefix[:, None] - 1 - torch.arange(N, device=device)[None]).clamp(min=0)  # (B, N)
        own = frame[None, :, None].expand(B, T, N)
        is_prefix = frame[None, :, None] < num_prefix[:, None, None]
        index = torch.where(is_prefix, own, prev[:, None, :].expand_as(own))  # (B, T, N)
        return FullSpatial(index, valid)

    # ------------------------------------------------------------------ cached inference
    def new_cache(
        self,
        batch_size: int,
        max_frames: int,
        chunk_frames: int = 0,
        attention: AttentionOptions | None = None,
    ) -> KVCache:
        """A cache for `batch_size` rows (2B with CFG: [uncond; cond]) of at most `max_frames` frames, with
        scratch slots for chunks of up to `chunk_frames` frames (see `KVCache`). `attention` with
        kv_compress="tempcache" gives a `TempKVCache` (ConfigError for options this family lacks)."""
        cfg = self.config
        param = self.x_embedder.proj.weight
        opts = attention or DENSE
        check_attention(opts, cfg)
        kind = KVCache
        extra: dict = {}
        if opts.kv_compress == "tempcache":
            kind, extra = TempKVCache, {"options": opts}
        return kind(
            **extra,
            depth=cfg.depth,
            batch_size=batch_size,
            max_frames=max_frames,
            tokens_per_frame=cfg.tokens_per_frame,
            num_heads=cfg.num_heads,
            head_dim=cfg.head_dim,
            pe_frames=cfg.pe_frames if cfg.has_pe else 0,
            pe_mode=cfg.pe_mode,
            device=param.device,
            dtype=param.dtype,
            chunk_frames=chunk_frames,
        )

    def embed_timesteps(self, t: Tensor, text: PreparedText | None = None) -> tuple[Tensor, Tensor]:
        """t (B,) or (B, T) -> t_emb (B, T', C) and the adaLN vector t_mlp (B, T', 6C); a pooled-caption
        model adds the caption's pooled vector (from `text`) to t_emb."""
        t = t[:, None] if t.dim() == 1 else t
        t_emb = self._add_pooled(self.t_embedder(t), text)  # (B, T', C)
        return t_emb, self.t_block(t_emb)

    def plan_step(self, cache: KVCache, n_new: int, *, write: bool) -> CachedStep:
        """Fix a cached pass over the next `n_new` frames against the cache as it is now. A denoising plan
        stays valid for every step of the chunk (the cache is only read); a write plan is used once."""
        B, device = cache.batch_size, cache.device
        # partial attention: the denoised chunk sees all of itself; written (clean) frames stay causal
        causal_chunk = write or self.config.temporal_attention == "causal"
        rope = self.config.tpe_mode == "rope"
        temporal = CachedTemporal(cache, n_new, write=write, causal_chunk=causal_chunk, rope=rope)
        spatial = CachedSpatial(cache, write=write) if self.config.has_pe else None
        mask_feat = torch.full((B, n_new), float(write), device=device)
        return CachedStep(n_new, write, self._tpe(cache.frames_written, n_new), mask_feat, temporal, spatial)

    def run_denoise(self, step: CachedStep, x: Tensor, t: Tensor, text: PreparedText | None) -> Tensor:
        """One denoising pass of a read plan: x (B, c, n_new, H, W) at timesteps t (B,) -> (B, c_out, n_new,
        H, W) float32; the cache is only read. No host syncs, static shapes (what `accel` compiles)."""
        tokens, t_emb = self._blocks(step, x, t, text)  # (B, T, S, C), (B, 1, C)
        return self._unpatchify(self.final_layer(tokens, t_emb))

    def run_write(self, step: CachedStep, x: Tensor, text: PreparedText | None, t: float = 0.0) -> None:
        """One pass of a write plan over clean (or perturbed) frames x (B, c, n_new, H, W) at timestep `t`
        (0 unless the model was trained with noise-augmented context): their K|V are stored (the caller
        advances the cache); the last block's output is never computed."""
        self._blocks(step, x, torch.full((x.shape[0],), float(t), device=x.device), text)

    def _blocks(
        self, step: CachedStep, x: Tensor, t: Tensor, text: PreparedText | None
    ) -> tuple[Tensor, Tensor]:
        """Every block of a cached pass: the last block's tokens (B, T, S, C) and t_emb (B, 1, C)."""
        tokens = self._embed_frames(x)  # (B, T, S, C)
        t_emb, t_mlp = self.embed_timesteps(t, text)  # (B, 1, C), (B, 1, 6C)
        frames = FrameInputs(step.tpe, step.mask_feat, text)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            kv_only = step.write and i == last  # the last block's output is never used when writing
            tokens = block(tokens, t_mlp, frames, step.temporal, step.spatial, kv_only=kv_only)
        return tokens, t_emb

    def _check_cached(self, cache: KVCache, x: Tensor) -> None:
        self._check_latents(x)
        if cache.batch_size != x.shape[0]:
            raise ValueError(f"cache was made for batch {cache.batch_size}, latents have batch {x.shape[0]}")

    def denoise(
        self,
        cache: KVCache,
        x: Tensor,
        t: Tensor,
        y: Caption = None,
        y_mask: Tensor | None = None,
        plan: CachedStep | None = None,
    ) -> Tensor:
        """Predict for a noisy chunk x (B, c, l, H, W) at one timestep per sample t (B,), reading the cache
        (never modified) with this AR step's `plan` (made here if None). Returns (B, c_out, l, H, W) fp32."""
        if t.dim() != 1:
            raise ValueError(f"denoise takes one timestep per sample, t of shape (B,), got {tuple(t.shape)}")
        self._check_cached(cache, x)
        if plan is not None and (plan.write or plan.n_new != x.shape[2]):
            raise ValueError(f"the plan is for writing {plan.n_new} frames, not denoising {x.shape[2]}")
        text = self._text(y, y_mask, x.shape[0])
        plan = plan or self.plan_step(cache, x.shape[2], write=False)
        return self.run_denoise(plan, x, t.to(x.device), text)

    def write_cache(
        self,
        cache: KVCache,
        clean: Tensor,
        y: Caption = None,
        y_mask: Tensor | None = None,
        t: float = 0.0,
    ) -> None:
        """Run clean frames (B, c, n, H, W) at timestep `t` (default 0; the cache's perturbation level for a
        model trained with noise-augmented context) with mask channel 1 and append their K|V (evicting the
        oldest frames when full); updates the prefix-enhanced spatial context."""
        self._check_cached(cache, clean)
        text = self._text(y, y_mask, clean.shape[0])
        self.run_write(self.plan_step(cache, clean.shape[2], write=True), clean, text, t)
        cache.advance(clean.shape[2])

    # ------------------------------------------------------------------ checkpoints
    def load_official_state_dict(self, state_dict: dict[str, Tensor], assign: bool | None = None) -> None:
        """Load a state dict with the official key names. Every parameter and `bov_token` must be present
        with its exact shape; the position tables are regenerated. Raises WeightsError. `assign` (default:
        when the model was built on the meta device) takes the tensors instead of copying them."""
        sd = {k: v for k, v in state_dict.items() if k not in REGENERATED_BUFFERS}
        expected = {k: v.shape for k, v in self.state_dict().items() if k not in REGENERATED_BUFFERS}
        missing, unexpected, wrong = key_mismatch(sd, expected)
        if missing or unexpected or wrong:
            raise WeightsError(
                describe_key_mismatch(missing, unexpected, wrong, sd, expected, mismatch_cause)
            )
        ref = sd["x_embedder.proj.weight"]
        device = ref.device if ref.device.type != "meta" else torch.device("cpu")
        pos, tpe = self._position_tables(device, ref.dtype if ref.is_floating_point() else torch.float32)
        sd["pos_embed"], sd["pos_embed_temporal"] = pos, tpe
        if assign is None:
            assign = any(p.is_meta for p in self.parameters())
        self.load_state_dict(sd, strict=True, assign=assign)

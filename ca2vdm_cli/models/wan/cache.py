"""The causal Wan KV cache: preallocated per-layer K/V over whole frames, slots managed by a FrameRing.

Layout per layer: k, v (B, heads, slots·S, head_dim), S tokens per frame, so an attention read is a view.
The ring holds the clean past only (written by the t = 0 pass, `CausalWan.write_cache`); a denoising
call attends to the visible past plus its own block's fresh K/V, which go into the `block_frames`
slots just after the valid ones (stale ring slots or scratch slots past the ring), so the window is one
contiguous view: no concatenation, no copy on eviction, and the valid state never changes.

Capacity: with a window of W frames (incl. the block of n) and K sinks, the past holds W − n frames,
sinks first; with global attention it holds `max_frames`. When W − n == K the ring gets one extra slot
that is never read (a FrameRing needs sink < capacity).

Positions: `absolute` stores keys rotated at their absolute frame; `relative` stores them un-rotated
and the model rotates the window by each frame's rank in it at read time.

`options` (AttentionOptions) selects the approximations; `TempWanKVCache` (tempcache.py) is the merged
variant. Cross-attention K/V of one prompt live here too (`context_k`, `context_v`, (L, B, heads, text_len,
head_dim)), keyed on the identity and version of the context tensor they came from.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ca2vdm_cli.engine.ring import FrameRing
from ca2vdm_cli.errors import ConfigError, InputError
from ca2vdm_cli.models.attention_opts import DENSE, AttentionOptions
from ca2vdm_cli.models.sparse_attention import AttentionStats
from ca2vdm_cli.models.wan.cross import CrossState


class WanKVCache:
    """Self-attention K/V of `num_layers` layers for `batch_size` videos, plus the prompt's cross K/V."""

    def __init__(
        self,
        *,
        num_layers: int,
        batch_size: int,
        past_frames: int,
        sink_frames: int,
        block_frames: int,
        grid: tuple[int, int],
        num_heads: int,
        head_dim: int,
        position_mode: str,
        windowed: bool,
        device: torch.device | str,
        dtype: torch.dtype,
        options: AttentionOptions = DENSE,
    ) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if past_frames < sink_frames:
            raise ConfigError(
                f"the past holds {past_frames} frames, fewer than the {sink_frames} sink frames"
            )
        self.batch_size, self.past_frames, self.block_frames = batch_size, past_frames, block_frames
        self.grid, self.position_mode, self.windowed = grid, position_mode, windowed
        self.tokens_per_frame = grid[0] * grid[1]
        self.ring = FrameRing(max(past_frames, sink_frames + 1), sink_frames)
        self.options = options
        self.stats: AttentionStats | None = None  # set to collect merge rate / density / retained mass
        self.cross = CrossState()  # AnnCA: the prompt's padding bias and per-frame selections
        self.sparse: dict[int, tuple[int, object]] = {}  # AnnSA: layer -> (written, key index)
        shape = (num_layers, batch_size, num_heads, self._slots() * self.tokens_per_frame, head_dim)
        self._k = torch.zeros(shape, device=device, dtype=dtype)
        self._v = torch.zeros(shape, device=device, dtype=dtype)
        self.context_k: Tensor | None = None
        self.context_v: Tensor | None = None
        self._context_src: Tensor | None = None
        self._context_version = -1

    def _slots(self) -> int:
        """Frame slots per layer: the ring plus the block's scratch."""
        return self.ring.capacity + self.block_frames

    # ------------------------------------------------------------------ bookkeeping
    @property
    def written(self) -> int:
        """Absolute index of the next frame to write."""
        return self.ring.written

    @property
    def num_visible(self) -> int:
        """Past frames a call at `written` attends to (the valid slots 0..num_visible−1)."""
        return min(self.ring.num_held, self.past_frames)

    @property
    def k(self) -> Tensor:
        """The ring's keys (L, B, heads, capacity·S, head_dim): a view, without the scratch slots."""
        return self._k[:, :, :, : self.ring.capacity * self.tokens_per_frame]

    @property
    def v(self) -> Tensor:
        return self._v[:, :, :, : self.ring.capacity * self.tokens_per_frame]

    @property
    def nbytes(self) -> int:
        """Bytes of the self-attention ring (scratch slots and cross K/V excluded)."""
        return 2 * self.k.numel() * self.k.element_size()

    @property
    def scratch_nbytes(self) -> int:
        """Bytes of the block's slots past the ring (where a denoising call puts its own K/V)."""
        return 2 * (self._k.numel() - self.k.numel()) * self._k.element_size()

    def visible_positions(self) -> list[int]:
        """Rank of each visible slot's frame in the window (0 = oldest), slot order (relative mode)."""
        return self.ring.window_positions()[: self.num_visible]

    def visible_frames(self) -> list[int]:
        """Absolute frame of each visible slot, slot order."""
        return self.ring.slot_frames()[: self.num_visible]

    def reset(self) -> None:
        """Forget the past and the prompt (next video); buffers are kept and overwritten later."""
        self.ring.reset()
        self.context_k = self.context_v = self._context_src = None
        self._context_version = -1
        self.cross = CrossState()
        self.sparse.clear()

    def restart(self, start: int) -> None:
        """Forget every non-sink frame and write next at absolute frame `start` (a prompt switch's
        re-encode, `FrameRing.restart`); per-block AnnSA indexes are dropped with them."""
        self.ring.restart(start)
        self.sparse.clear()

    # ------------------------------------------------------------------ prompt
    def has_context(self, context: Tensor) -> bool:
        """Whether the cross K/V were computed from this very tensor, unmodified since."""
        return self._context_src is context and context._version == self._context_version

    def set_context(self, context: Tensor, k: Tensor, v: Tensor, cross: CrossState | None = None) -> None:
        """Store the cross K/V (L, B, heads, rows, head_dim) of `context` (rows = text_len, or fewer after
        AnnCA's padding collapse, whose bias `cross` carries)."""
        self.context_k, self.context_v = k, v
        self._context_src, self._context_version = context, context._version
        self.cross = cross or CrossState()

    # ------------------------------------------------------------------ self-attention K/V
    def key_bias(self, layer: int, n_own: int) -> Tensor | None:
        """Additive logit bias of the window's keys (None: every key counts once)."""
        return None

    def always_keys(self, layer: int) -> Tensor:
        """Visible past slots AnnSA always attends densely (sink frames, the previous frame): (1, 1, M)."""
        s, K = self.written, self.ring.sink
        frames = torch.tensor(self.visible_frames(), device=self._k.device)  # (m,)
        dense = (frames < K) | (frames == s - 1)
        return dense.repeat_interleave(self.tokens_per_frame)[None, None]

    def window(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """[visible past (slot order) ; the block's k, v (B, heads, n·S, head_dim)] of one layer as views.
        The block goes into slots past the valid ones, so the cache's state is unchanged."""
        start = self.num_visible * self.tokens_per_frame
        end = start + k.shape[2]
        self._k[layer, :, :, start:end] = k
        self._v[layer, :, :, start:end] = v
        return self._k[layer, :, :, :end], self._v[layer, :, :, :end]

    def store(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Write the block's K/V (B, heads, n·S, head_dim) of one layer into its ring slots (the frames that
        survive the write); call `advance` once after the last layer."""
        S = self.tokens_per_frame
        n = k.shape[2] // S
        if not self.windowed and self.written + n > self.ring.capacity:
            raise InputError(
                f"the global-attention cache holds {self.ring.capacity} frames; frame {self.written + n - 1} "
                f"does not fit; pass max_frames >= {self.written + n} or use a window (local_attn_size)"
            )
        for i, _, slot in self.ring.write_plan(n):
            self._k[layer, :, :, slot * S : (slot + 1) * S] = k[:, :, i * S : (i + 1) * S]
            self._v[layer, :, :, slot * S : (slot + 1) * S] = v[:, :, i * S : (i + 1) * S]

    def advance(self, n: int) -> None:
        self.ring.advance(n)

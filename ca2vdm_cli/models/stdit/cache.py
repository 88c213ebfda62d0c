"""The Ca2-VDM KV cache: a plain object the model reads during denoising and appends to once per chunk.

It holds only clean (t = 0) states, so one cache serves every denoising step of an AR step (cache
sharing). Temporal K|V live in a ring buffer of `max_frames` slots: the absolute frame f sits
in slot f mod L_max, so evicting the oldest frames never moves data (the official code rolls the whole
tensor on every dequeue). Temporal attention over the cached frames has no order among keys except
through RoPE, which gets each slot's window position from `window_positions()`.

The spatial-context cache of prefix-enhanced attention keeps the K|V of the last N written frames
(frame 0 repeated while fewer than N exist), which is exactly the context a noisy frame sees in
training: frames P-1 … P-N clamped at 0. In `first_frame` mode it holds frame 0 forever.

With `chunk_frames` > 0 the temporal buffers get that many scratch slots after the queue. Once the queue is
full, a pass writes its chunk's K|V there and attends over one contiguous view [queue ; chunk] instead of
concatenating the whole queue with the chunk at every denoising step (static shape, no per-step copy of
the cache). The scratch is activation memory, not cache: `nbytes` counts the queue only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ca2vdm_cli.engine.ring import FrameRing


class KVCache:
    """Preallocated K|V for `depth` blocks, `batch_size` rows (CFG: [uncond; cond]) and `max_frames` frames.

    Layouts (SDPA-ready, so reads are views):
      k, v:         (D, B·S, h, L_max, d)   temporal attention, one sequence per spatial location (views of
                                            (D, B·S, h, L_max + chunk_frames, d) buffers with the scratch)
      ctx_k, ctx_v: (D, B, h, N·S, d)       prefix-enhanced spatial attention context (None without PE)
    `frames_written` is the absolute index of the next frame; it drives the cyclic temporal positions.
    """

    def __init__(
        self,
        *,
        depth: int,
        batch_size: int,
        max_frames: int,
        tokens_per_frame: int,
        num_heads: int,
        head_dim: int,
        pe_frames: int,
        pe_mode: str,
        device: torch.device | str,
        dtype: torch.dtype,
        chunk_frames: int = 0,
    ) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.depth, self.batch_size, self.max_frames = depth, batch_size, max_frames
        self.tokens_per_frame, self.num_heads, self.head_dim = tokens_per_frame, num_heads, head_dim
        self.pe_frames, self.pe_mode = pe_frames, pe_mode
        self.chunk_frames = max(0, chunk_frames)
        shape = (depth, batch_size * tokens_per_frame, num_heads, max_frames + self.chunk_frames, head_dim)
        self._k_buf = torch.zeros(shape, device=device, dtype=dtype)
        self._v_buf = torch.zeros(shape, device=device, dtype=dtype)
        self.k = self._k_buf[:, :, :, :max_frames]  # the queue: (D, B·S, h, L_max, d) views
        self.v = self._v_buf[:, :, :, :max_frames]
        self.ctx_k: Tensor | None = None
        self.ctx_v: Tensor | None = None
        if pe_frames > 0:
            ctx_shape = (depth, batch_size, num_heads, pe_frames * tokens_per_frame, head_dim)
            self.ctx_k = torch.zeros(ctx_shape, device=device, dtype=dtype)
            self.ctx_v = torch.zeros(ctx_shape, device=device, dtype=dtype)
        self.ring = FrameRing(max_frames)  # which absolute frame sits in which slot (slot = f mod L_max)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def frames_written(self) -> int:
        """Absolute index of the next frame (drives the cyclic temporal positions)."""
        return self.ring.written

    @property
    def num_cached(self) -> int:
        """Frames currently held (≤ max_frames)."""
        return self.ring.num_held

    @property
    def has_context(self) -> bool:
        """Whether the spatial context holds real frames (false before the first write)."""
        return self.ctx_k is not None and self.frames_written > 0

    @property
    def nbytes(self) -> int:
        """Bytes of the queue: D·B·L_max·S·2C (+ D·B·N·S·2C of PE context) × element size."""
        tensors = [self.k, self.v, self.ctx_k, self.ctx_v]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    @property
    def scratch_nbytes(self) -> int:
        """Bytes of the chunk scratch slots (activation memory kept next to the queue)."""
        return 2 * self.k[:, :, :, :1].numel() * self.chunk_frames * self.k.element_size()

    @property
    def device(self) -> torch.device:
        return self.k.device

    @property
    def dtype(self) -> torch.dtype:
        return self.k.dtype

    def reset(self) -> None:
        """Forget every frame (for the next video); the buffers are kept and later overwritten."""
        self.ring.reset()

    def frame_indices(self) -> list[int]:
        """Absolute indices of the cached frames, oldest first (the FIFO's logical order)."""
        return self.ring.held_frames()

    def slot_frames(self) -> list[int]:
        """Absolute frame index held in each valid slot, in slot order (what a read returns)."""
        return self.ring.slot_frames()

    def window_positions(self, device: torch.device | str | None = None) -> Tensor:
        """Position of each valid slot in the attention window (0 = oldest cached frame), slot order."""
        return torch.tensor(self.ring.window_positions(), dtype=torch.long, device=device)

    # ------------------------------------------------------------------ temporal K|V
    def window(self, block: int, n_cached: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values [n_cached cached frames (slot order) ; the chunk's k, v (B·S, h, n, d)] of one
        block: a view with the chunk in the scratch slots when the queue is full and the chunk fits,
        a concatenation otherwise. Does not change the queue."""
        n = k.shape[-2]
        if n_cached == self.max_frames and n <= self.chunk_frames:
            end = self.max_frames + n
            self._k_buf[block, :, :, self.max_frames : end] = k
            self._v_buf[block, :, :, self.max_frames : end] = v
            return self._k_buf[block, :, :, :end], self._v_buf[block, :, :, :end]
        return (
            torch.cat([self.k[block, :, :, :n_cached], k], dim=-2),
            torch.cat([self.v[block, :, :, :n_cached], v], dim=-2),
        )

    def temporal_bias(self, n_cached: int) -> Tensor | None:
        """A logit bias for the first `n_cached` slots ((D, B·S, h, 1, n_cached)); None: plain attention
        (always, here; `TempKVCache` gives ln(count) once frames have merged)."""
        return None

    def store(self, block: int, k: Tensor, v: Tensor) -> None:
        """Put the K|V of the next n frames (B·S, h, n, d) into their slots; call `advance(n)` after the
        last block. Only the newest `max_frames` of them can be kept."""
        n = k.shape[-2]
        keep = min(n, self.max_frames)
        first = self.frames_written + n - keep  # absolute index of the first kept frame
        start = first % self.max_frames
        head = min(keep, self.max_frames - start)  # frames before the ring wraps
        self.k[block, :, :, start : start + head] = k[:, :, n - keep : n - keep + head]
        self.v[block, :, :, start : start + head] = v[:, :, n - keep : n - keep + head]
        if head < keep:
            self.k[block, :, :, : keep - head] = k[:, :, n - keep + head :]
            self.v[block, :, :, : keep - head] = v[:, :, n - keep + head :]

    def advance(self, n: int) -> None:
        self.ring.advance(n)

    # ------------------------------------------------------------------ spatial context
    def read_context(self, block: int) -> tuple[Tensor, Tensor]:
        """Context K|V of one block: (B, h, N·S, d) each."""
        assert self.ctx_k is not None and self.ctx_v is not None
        return self.ctx_k[block], self.ctx_v[block]

    def store_context(self, block: int, k: Tensor, v: Tensor) -> None:
        """Update the context of one block from the new frames' K|V, k and v (B, h, n, S, d)."""
        assert self.ctx_k is not None and self.ctx_v is not None
        N, S = self.pe_frames, self.tokens_per_frame
        B, h, n, _, d = k.shape
        if self.pe_mode == "first_frame":
            if self.frames_written == 0:
                self.ctx_k[block] = k[:, :, 0]
                self.ctx_v[block] = v[:, :, 0]
            return
        # Logical sequence: [N copies of frame 0 | every written frame]; the context is its last N frames.
        if self.frames_written == 0:
            old_k = k[:, :, :1].expand(B, h, N, S, d)
            old_v = v[:, :, :1].expand(B, h, N, S, d)
        else:
            old_k = self.ctx_k[block].view(B, h, N, S, d)
            old_v = self.ctx_v[block].view(B, h, N, S, d)
        new_k = torch.cat([old_k, k], dim=2)[:, :, -N:]  # (B, h, N, S, d)
        new_v = torch.cat([old_v, v], dim=2)[:, :, -N:]
        self.ctx_k[block] = new_k.reshape(B, h, N * S, d)
        self.ctx_v[block] = new_v.reshape(B, h, N * S, d)

"""TempCache for the causal Wan cache: temporally merged K/V slots with a log-count logit bias.

Merge lemma: if keys k_j, j in G, are identical, Σ_G exp(q·k_j/√d)·v_j = exp(q·k/√d + ln|G|)·mean_G(v_j),
so a group becomes one slot (the key, the mean value, ln|G| added to its logit) with no change to the
output; for near-identical keys it is an approximation.

Layout per layer (per head: heads merge independently, so counts differ per head and the read pads to
the longest head, empty slots get −inf): k, v (B, h, P + n·S, d) where P is the slot budget and the last
n·S slots take the block being denoised; count (B, h, P) (0 = empty), last (B, h, P) the newest frame a
slot holds (−1 = empty), latest (B, h, S) the slot holding the newest frame's key at each token position.

Only the clean t = 0 write (`store`) merges, one frame at a time: a new key at position p is compared
(cosine, post-RoPE) with the latest keys at p or within a (2R+1)² neighbourhood; the best match at or
above τ merges (one claim per old slot, the most similar wins). Others take free slots, or, when the
budget is full, the slots whose newest frame is oldest. Sink frames live in slots 0..K·S−1 unmerged and
are never evicted; in window mode slots whose newest frame left the window are freed. Memory is the
preallocated budget and never grows; `used` (the highest occupied slot + 1) is what attention reads.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.models.attention_opts import AttentionOptions
from ca2vdm_cli.models.wan.cache import WanKVCache

log = logging.getLogger(__name__)


class TempWanKVCache(WanKVCache):
    """A WanKVCache whose past is a pool of merged slots; `key_bias` gives the ln(count) logit bias."""

    def __init__(self, *, options: AttentionOptions, **kw) -> None:
        super().__init__(options=options, **kw)  # allocates through `_slots`
        S, L, B, h = self.tokens_per_frame, *self._k.shape[:3]
        dev = self._k.device
        self.count = torch.zeros(L, B, h, self.pool, device=dev)
        self.last = torch.full((L, B, h, self.pool), -1, dtype=torch.long, device=dev)
        self.latest = torch.full((L, B, h, S), -1, dtype=torch.long, device=dev)
        self.used = [0] * L
        self._bias: list[Tensor | None] = [None] * L
        self._offsets = _neighbourhood(self.grid, options.tempcache_radius, dev)  # (S, C)

    def _slots(self) -> int:
        """Frames of slots: the budget (pool = frames·S token slots) plus the block's scratch."""
        S, n, K = self.tokens_per_frame, self.block_frames, self.ring.sink
        frames = self.options.tempcache_budget_frames or self.ring.capacity
        if frames < K + 1:
            raise ConfigError(
                f"a TempCache of {frames} frames cannot hold the {K} sink frames and one more frame; "
                f"use tempcache_budget_frames >= {K + 1}"
            )
        self.pool = frames * S
        return frames + n

    # ------------------------------------------------------------------ what attention reads
    @property
    def k(self) -> Tensor:
        return self._k[:, :, :, : self.pool]

    @property
    def v(self) -> Tensor:
        return self._v[:, :, :, : self.pool]

    @property
    def nbytes(self) -> int:
        """Allocated bytes of the slot pool (K/V plus count and frame metadata), fixed at construction."""
        meta = self.count.numel() * 4 + (self.last.numel() + self.latest.numel()) * 8
        return 2 * self.k.numel() * self.k.element_size() + meta

    @property
    def used_nbytes(self) -> int:
        """Bytes of the K/V slots attention reads now (the highest used slot + 1, per layer)."""
        L, B, h, _, d = self._k.shape
        return 2 * sum(self.used) * B * h * d * self._k.element_size()

    def reset(self) -> None:
        super().reset()
        self.count.zero_()
        self.last.fill_(-1)
        self.latest.fill_(-1)
        self.used = [0] * len(self.used)
        self._bias = [None] * len(self._bias)

    def restart(self, start: int) -> None:
        """Free every slot holding a non-sink frame (or, before the sinks are complete, a frame >= start)
        and write next at `start`; merged groups cannot be split, so the re-encode starts clean."""
        keep_below = min(start, self.ring.sink)
        super().restart(start)
        gone = self.last >= keep_below  # (L, B, h, P)
        self.count[gone] = 0
        self.last[gone] = -1
        self.latest.fill_(-1)
        self.used = [min(u, keep_below * self.tokens_per_frame) for u in self.used]
        self._bias = [None] * len(self._bias)

    def window(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """[slots 0..used−1 ; the block's k, v (B, h, n·S, d)] of one layer, as views; the block goes into
        slots past `used` (free or the scratch), so the pool's state is unchanged."""
        start = self.used[layer]
        end = start + k.shape[2]
        self._k[layer, :, :, start:end] = k
        self._v[layer, :, :, start:end] = v
        return self._k[layer, :, :, :end], self._v[layer, :, :, :end]

    def key_bias(self, layer: int, n_own: int) -> Tensor:
        """ln(count) of the read slots (−inf when empty) then 0 for the block: (B, h, 1, used + n_own)."""
        bias = self._bias[layer]
        if bias is None or bias.shape[-1] != self.used[layer] + n_own:
            used = self.used[layer]
            logc = torch.log(self.count[layer, :, :, :used]).to(self._k.dtype)  # log 0 = −inf
            zeros = logc.new_zeros(logc.shape[:2] + (n_own,))
            bias = torch.cat([logc, zeros], -1)[:, :, None]
            self._bias[layer] = bias
        return bias

    def always_keys(self, layer: int) -> Tensor:
        """Past slots AnnSA attends densely: sink frames and the previous frame: (B, h, used) bool."""
        used, s = self.used[layer], self.written
        always = self.last[layer, :, :, :used] == s - 1
        always[..., : min(used, self.ring.sink * self.tokens_per_frame)] = True
        return always

    # ------------------------------------------------------------------ the t = 0 write
    def store(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Merge the block's rotated K/V (B, h, n·S, d) into the pool frame by frame."""
        S = self.tokens_per_frame
        for i in range(k.shape[2] // S):
            f = self.written + i
            kf, vf = k[:, :, i * S : (i + 1) * S], v[:, :, i * S : (i + 1) * S]  # (B, h, S, d)
            if f < self.ring.sink:
                self._put(layer, torch.arange(f * S, (f + 1) * S, device=k.device).expand(kf.shape[:3]),
                          kf, vf, torch.ones(kf.shape[:3], device=k.device), f)  # fmt: skip
                self.used[layer] = max(self.used[layer], (f + 1) * S)
                continue
            self._merge_frame(layer, f, kf, vf)
        if self.windowed:
            self._free_outside_window(layer, self.written + k.shape[2] // S)
        self._bias[layer] = None

    def _merge_frame(self, layer: int, f: int, kf: Tensor, vf: Tensor) -> None:
        B, h, S, d = kf.shape
        tau = self.options.tempcache_threshold
        cand = self.latest[layer][:, :, self._offsets.clamp(min=0)]  # (B, h, S, C) slot ids
        cand = cand.masked_fill(self._offsets[None, None] < 0, -1)
        ok = cand >= 0
        ck = self._k[layer].gather(2, cand.clamp(min=0).flatten(2)[..., None].expand(-1, -1, -1, d))
        cos = F.cosine_similarity(kf[:, :, :, None].float(), ck.view(B, h, S, -1, d).float(), dim=-1)
        cos = cos.masked_fill(~ok, -2.0)  # (B, h, S, C)
        best, which = cos.max(-1)  # (B, h, S)
        target = cand.gather(3, which[..., None])[..., 0]  # (B, h, S)
        accept = best >= tau
        cap = self.options.tempcache_max_count
        if cap is not None:
            accept &= self.count[layer].gather(2, target.clamp(min=0)) < cap
        # one claim per old slot: the most similar new key wins, ties go to the lowest position
        score = torch.where(accept, best, -3.0)
        top = torch.full((B, h, self.pool), -3.0, device=kf.device)
        top.scatter_reduce_(2, target.clamp(min=0), score, "amax")
        accept &= score == top.gather(2, target.clamp(min=0))
        pos = torch.arange(S, device=kf.device).expand(B, h, S)
        first = torch.full((B, h, self.pool), S, device=kf.device, dtype=torch.long)
        first.scatter_reduce_(2, target.clamp(min=0), torch.where(accept, pos, S), "amin")
        accept &= pos == first.gather(2, target.clamp(min=0))
        slot = torch.where(accept, target, self._free_slots(layer, accept, target))  # (B, h, S)
        old_count = torch.where(accept, self.count[layer].gather(2, slot), 0.0)  # (B, h, S)
        old_v = self._v[layer].gather(2, slot[..., None].expand(-1, -1, -1, d))
        count = old_count + 1
        mean_v = (old_v.float() * old_count[..., None] + vf.float()) / count[..., None]
        self._put(layer, slot, kf, mean_v.to(vf.dtype), count, f)
        self.latest[layer] = slot
        self.used[layer] = max(self.used[layer], int(slot.max()) + 1)  # one host sync per frame and layer
        stats = self.stats
        if stats is not None:
            stats.add("merge_rate", layer, accept.sum(), accept.numel())
        if log.isEnabledFor(logging.DEBUG):  # the count costs a host sync: only when asked for
            log.debug("tempcache layer %d frame %d: merged %d/%d keys, %d slots used of %d",
                      layer, f, int(accept.sum()), accept.numel(), self.used[layer], self.pool)  # fmt: skip

    def _free_slots(self, layer: int, accept: Tensor, target: Tensor) -> Tensor:
        """A slot per unmerged position (B, h, S): empty slots first (lowest index), then the slots whose
        newest frame is oldest; sinks and the slots merged into by this frame are never taken."""
        B, h, S = accept.shape
        key = self.last[layer].float()  # (B, h, P): oldest newest-frame first
        key = key.masked_fill(self.count[layer] == 0, -1.0)  # empty slots before any eviction
        key[..., : self.ring.sink * S] = math.inf
        claimed = torch.zeros_like(self.last[layer])
        claimed.scatter_reduce_(2, target.clamp(min=0), accept.long(), "amax")
        key = key.masked_fill(claimed.bool(), math.inf)
        order = torch.sort(key, dim=-1, stable=True).indices[..., :S]  # (B, h, S)
        rank = (~accept).long().cumsum(-1) - 1  # (B, h, S)
        chosen = order.gather(2, rank.clamp(min=0))
        if self.stats is not None:
            evicted = (self.count[layer].gather(2, chosen) > 0) & ~accept
            self.stats.add("evicted", layer, evicted.sum(), evicted.numel())
        return chosen

    def _put(self, layer: int, slot: Tensor, k: Tensor, v: Tensor, count: Tensor, f: int) -> None:
        """Write k, v (B, h, S, d) and their counts (B, h, S) into slots (B, h, S) at frame f."""
        d = k.shape[-1]
        idx = slot[..., None].expand(-1, -1, -1, d)
        self._k[layer].scatter_(2, idx, k)
        self._v[layer].scatter_(2, idx, v)
        self.count[layer].scatter_(2, slot, count.float())
        self.last[layer].scatter_(2, slot, torch.full_like(slot, f))

    def _free_outside_window(self, layer: int, written: int) -> None:
        """Free the slots whose newest frame the next call no longer sees (window mode, sinks kept)."""
        oldest = written - (self.past_frames - self.ring.sink)
        gone = (self.last[layer] < oldest) & (self.last[layer] >= self.ring.sink)
        self.count[layer][gone] = 0
        self.last[layer][gone] = -1
        stale = self.count[layer].gather(2, self.latest[layer].clamp(min=0)) == 0
        self.latest[layer][stale] = -1

    # ------------------------------------------------------------------ reporting
    def merge_rates(self) -> dict[int, float]:
        """Merged / written non-sink keys per layer since the stats were reset ({} without stats)."""
        return {} if self.stats is None else self.stats.summary().get("merge_rate", {})


def _neighbourhood(grid: tuple[int, int], radius: int, device: torch.device) -> Tensor:
    """For each token position of an (h, w) grid, the positions within `radius` (−1 outside): (S, C)."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    offsets = torch.arange(-radius, radius + 1)
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    ny, nx = ys.flatten()[:, None] + dy.flatten(), xs.flatten()[:, None] + dx.flatten()  # (S, C)
    inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    return torch.where(inside, ny * w + nx, -1).to(device)

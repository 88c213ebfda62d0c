"""TempCache for the CausalSTDiT temporal cache: consecutive frames' keys merged per location and head.

Merge lemma: if keys k_j, j in G, are identical, Σ_G exp(q·k_j/√d)·v_j = exp(q·k/√d + ln|G|)·mean_G(v_j),
so a group becomes one slot (the key, the mean value, ln|G| added to its logit) with no change to the
output; for near-identical keys it is an approximation.

The temporal cache already holds one sequence per spatial location (`KVCache`: (D, B·S, h, L_max, d), a
ring of frame slots), so a merge is always "the same location, the previous frame" (radius 0), per block,
location and head (heads merge independently, like the causal Wan TempCache).

Eviction is the dense ring's: frame f is written into slot f mod L_max as without TempCache and evicts
frame f − L_max, so the cache covers exactly the frames dense attention sees. What changes is which slots
are read:

* a group is a run of consecutive frames at one (block, location, head); its *representative* is the slot
  of its newest frame and holds the newest key, the mean of the values of its members still in the ring,
  and their count; the other members' slots are masked (count 0, logit −inf) and keep their own raw value;
* the written frame f is compared (cosine, keys as stored: in block 0 they carry the temporal position
  embedding) with frame f − 1's key, which is always the representative of its group. At
  cosine ≥ `tempcache_threshold` (and count < `tempcache_max_count`, if set) it joins that group: slot f
  becomes the representative (key k_f, running mean, count + 1) and f − 1's slot is masked, its raw value
  restored from `last_v`. Otherwise frame f opens a group of one;
* when a masked member leaves the ring, its group's representative drops it: the count goes down by one
  and its raw value leaves the mean, so the mean and the count are always those of the members dense
  attention would still see (exact for identical members, whatever the video's length).

Only the clean write (`store`) merges; the chunk being denoised and the prefix-enhanced spatial context
(ctx_k/ctx_v) are never merged. Memory is the dense ring plus a float count and an int32 group start per
slot and one value vector per (block, location, head) (`last_v`); it never grows. Masked slots still cost
attention compute (the read is the dense ring with a logit bias), so on this family TempCache changes the
output, not the speed: see docs/tempcache.md.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from ca2vdm_cli.models.attention_opts import AttentionOptions
from ca2vdm_cli.models.stdit.cache import KVCache

log = logging.getLogger(__name__)


class TempKVCache(KVCache):
    """A `KVCache` whose clean writes merge temporally redundant keys; `temporal_bias` gives ln(count).

    Extra state (preallocated, fixed size):
      count:  (D, B·S, h, L_max) float32  members of the group a slot represents (0: masked member)
      start:  (D, B·S, h, L_max) int32    first frame of the slot's group (its id)
      last_v: (D, B·S, h, d)              raw value of the newest frame (what a demoted slot gets back)
    `stats` (an `AttentionStats`, optional) collects the merge rate per block.
    """

    def __init__(self, *, options: AttentionOptions, **kw) -> None:
        super().__init__(**kw)
        self.options = options
        D, R, h, L, d = self.k.shape
        self.count = torch.zeros(D, R, h, L, device=self.device)
        self.start = torch.zeros(D, R, h, L, dtype=torch.int32, device=self.device)
        self.last_v = torch.zeros(D, R, h, d, device=self.device, dtype=self.dtype)
        self.stats = None

    @property
    def nbytes(self) -> int:
        """Bytes of the queue (as `KVCache`) plus the counts, group starts and `last_v`."""
        meta = [self.count, self.start, self.last_v]
        return super().nbytes + sum(t.numel() * t.element_size() for t in meta)

    def reset(self) -> None:
        super().reset()
        self.count.zero_()
        self.start.zero_()

    # ------------------------------------------------------------------ what attention reads
    def temporal_bias(self, n_cached: int) -> Tensor | None:
        """ln(count) of the first `n_cached` slots (−inf where masked): (D, B·S, h, 1, n_cached) in the
        cache dtype; None when no held slot is merged (the dense computation). One host sync."""
        if n_cached == 0:
            return None
        count = self.count[..., :n_cached]  # (D, B·S, h, n)
        if not bool((count != 1).any()):
            return None
        return torch.log(count).to(self.dtype)[:, :, :, None]  # log 0 = −inf

    # ------------------------------------------------------------------ the clean write
    def store(self, block: int, k: Tensor, v: Tensor) -> None:
        """Write the next n frames' K|V (B·S, h, n, d) into their ring slots, frame by frame, merging each
        into the previous frame's group where the keys agree; call `advance(n)` after the last block."""
        for i in range(k.shape[-2]):
            self._write_frame(block, self.frames_written + i, k[:, :, i], v[:, :, i])

    def _write_frame(self, block: int, f: int, kf: Tensor, vf: Tensor) -> None:
        # kf, vf (R, h, d) for frame f at every location (R = B·S) and head
        L = self.max_frames
        s = f % L
        kb, vb = self.k[block], self.v[block]  # (R, h, L, d) views of the queue
        count, start = self.count[block], self.start[block]  # (R, h, L)
        if f >= L:
            self._evict(block, s)
        new_v, new_count = vf.float(), torch.ones_like(count[:, :, s])  # (R, h, d), (R, h)
        new_start = torch.full_like(start[:, :, s], f)
        if f >= 1 and L >= 2:  # frame f − 1 is held and is its group's representative
            p = (f - 1) % L
            cos = F.cosine_similarity(kf.float(), kb[:, :, p].float(), dim=-1)  # (R, h)
            n_p = count[:, :, p]  # (R, h), >= 1
            accept = cos >= self.options.tempcache_threshold
            cap = self.options.tempcache_max_count
            if cap is not None:
                accept &= n_p < cap
            mean_p = vb[:, :, p].float()  # (R, h, d)
            merged_v = (mean_p * n_p[..., None] + new_v) / (n_p + 1)[..., None]
            new_v = torch.where(accept[..., None], merged_v, new_v)
            new_count = torch.where(accept, n_p + 1, new_count)
            new_start = torch.where(accept, start[:, :, p], new_start)
            # demote f − 1: masked, its own raw value back
            vb[:, :, p] = torch.where(accept[..., None], self.last_v[block], vb[:, :, p])
            count[:, :, p] = torch.where(accept, 0.0, n_p)
            if self.stats is not None:
                self.stats.add("merge_rate", block, accept.sum(), accept.numel())
            if log.isEnabledFor(logging.DEBUG):  # the count costs a host sync: only when asked for
                log.debug("tempcache block %d frame %d: merged %d/%d keys",
                          block, f, int(accept.sum()), accept.numel())  # fmt: skip
        kb[:, :, s] = kf
        vb[:, :, s] = new_v.to(vb.dtype)
        count[:, :, s] = new_count
        start[:, :, s] = new_start
        self.last_v[block] = vf

    def _evict(self, block: int, s: int) -> None:
        """Frame f − L_max leaves slot s: a masked member leaves its group's mean and count (a
        representative's group leaves with it: all its older members are gone already)."""
        vb = self.v[block]  # (R, h, L, d)
        count, start = self.count[block], self.start[block]  # (R, h, L)
        R, h, L, d = vb.shape
        member = count[:, :, s] == 0  # (R, h)
        owner = (start == start[:, :, s, None]) & (count > 0)  # (R, h, L): the representative
        owner[:, :, s] = False
        member &= owner.any(-1)
        r = owner.to(torch.uint8).argmax(-1)  # (R, h); 0 where there is none (then unchanged)
        n_r = count.gather(2, r[..., None])[..., 0]  # (R, h)
        idx = r[..., None, None].expand(R, h, 1, d)
        mean_r = vb.gather(2, idx)[:, :, 0].float()  # (R, h, d)
        dropped = (mean_r * n_r[..., None] - vb[:, :, s].float()) / (n_r - 1).clamp(min=1)[..., None]
        vb.scatter_(2, idx, torch.where(member[..., None], dropped, mean_r).to(vb.dtype)[:, :, None])
        count.scatter_(2, r[..., None], torch.where(member, n_r - 1, n_r)[..., None])

    # ------------------------------------------------------------------ reporting
    def merge_rates(self) -> dict[int, float]:
        """Merged / compared keys per block since the stats were reset ({} without stats)."""
        return {} if self.stats is None else self.stats.summary().get("merge_rate", {})

    def masked_fraction(self) -> list[float]:
        """Per block, the fraction of held slots that are masked members now (one host sync)."""
        n = self.num_cached
        held = self.count[..., :n]  # (D, R, h, n)
        return (held == 0).float().mean(dim=(1, 2, 3)).tolist() if n else [0.0] * self.depth

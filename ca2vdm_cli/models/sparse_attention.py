"""AnnSA: block-sparse self-attention over a cached past, executed as gather + SDPA (any device).

A call has the block's queries q (B, h, N, d), the visible past keys (B, h, M, d) with an optional logit
bias (TempCache counts, −inf for empty slots), the block's own keys, and a mask of past keys that are
always attended densely (sink frames, previous frame). The past is cut into key blocks of `key_block`
rows and the queries into query blocks of `query_block` rows; a selection (B, h, nQ, nK) says which key
blocks each query block reads. Two selections:

* `lsh`: keys (centred by their mean) and queries hashed with `bits` sign random projections, seeded per
  layer; keys sorted by bucket so a bucket is a contiguous range, queries sorted the same way; a query
  block reads every key block holding a bucket within Hamming distance 1 of one of its queries' buckets.
  Keys are hashed once per block and layer (`KeyIndex`, the past is frozen during a block).
* `topk-blocks`: natural order; the ceil(density·nK) key blocks of highest mean-pooled q·k per query block.

The always-dense keys are excluded from the selected blocks (−inf) and appended to every query block, so
nothing is counted twice; at density 1 the result equals dense attention up to summation order.
FlexAttention block masks are not used: on CPU torch they need `torch.compile` (see docs/tempcache.md).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

NEG_INF = float("-inf")


class AttentionStats:
    """Per-layer running means of named quantities (merge rate, density, retained mass, ...).

    Values are kept as tensors (no host sync in the loop) until `summary`. `measure_mass` switches on the
    (costly) retained-attention-mass computation of the sparse paths.
    """

    def __init__(self, measure_mass: bool = False) -> None:
        self.measure_mass = measure_mass
        self._sum: dict[tuple[str, int], Tensor | float] = defaultdict(float)
        self._weight: dict[tuple[str, int], Tensor | float] = defaultdict(float)

    def add(self, name: str, layer: int, value: Tensor | float, weight: Tensor | float = 1.0) -> None:
        """Accumulate `value` (a sum over `weight` items) for (name, layer)."""
        self._sum[name, layer] = self._sum[name, layer] + value
        self._weight[name, layer] = self._weight[name, layer] + weight

    def summary(self) -> dict[str, dict[int, float]]:
        """{name: {layer: sum(value) / sum(weight)}}."""
        out: dict[str, dict[int, float]] = defaultdict(dict)
        for (name, layer), total in sorted(self._sum.items()):
            w = float(self._weight[name, layer])
            out[name][layer] = float(total) / w if w else 0.0
        return dict(out)

    def reset(self) -> None:
        self._sum.clear()
        self._weight.clear()


def lsh_projection(dim: int, bits: int, seed: int, layer: int, device: torch.device, dtype: torch.dtype):
    """The seeded Gaussian projection of one layer: (dim, bits)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + layer)
    return torch.randn(dim, bits, generator=g).to(device=device, dtype=dtype)


def lsh_codes(x: Tensor, proj: Tensor) -> Tensor:
    """Sign bits of x (..., d) @ proj (d, b) packed into ints in [0, 2^b): (...)."""
    bits = (x @ proj > 0).long()  # (..., b)
    weights = 1 << torch.arange(proj.shape[1], device=x.device)  # (b,)
    return (bits * weights).sum(-1)


def hamming1(bits: int, device: torch.device) -> Tensor:
    """H[c, c'] = whether codes c and c' differ in at most one bit: (2^b, 2^b) float."""
    c = torch.arange(1 << bits, device=device)
    x = c[:, None] ^ c[None, :]
    return ((x & (x - 1)) == 0).float()  # x is 0 or a power of two


def _occupancy(codes: Tensor, block: int, valid: Tensor, bits: int) -> Tensor:
    """Which buckets each block of `block` consecutive entries holds: codes, valid (B, h, n·block) →
    (B, h, n, 2^b) float."""
    B, h, n_pad = codes.shape
    onehot = F.one_hot(codes, 1 << bits).float() * valid[..., None].float()  # (B, h, n_pad, 2^b)
    return onehot.view(B, h, n_pad // block, block, -1).amax(3)


def _pad_to(x: Tensor, multiple: int, dim: int, value: float = 0.0) -> Tensor:
    extra = -x.shape[dim] % multiple
    if not extra:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, extra]
    return F.pad(x, pad, value=value)


@dataclass
class KeyIndex:
    """The past keys of one layer prepared once per block: order (B, h, Mp) of the past in key-block order
    (Mp = M padded to a key-block multiple), its validity, and per-block summaries (bucket occupancy for
    LSH, mean key for top-k)."""

    order: Tensor  # (B, h, Mp) long
    valid: Tensor  # (B, h, Mp) bool: a real, finite-bias, not-always-dense key
    summary: Tensor  # lsh: (B, h, nK, 2^b); topk: (B, h, nK, d)
    counts: Tensor  # (B, h, nK) keys per block (for the density)
    proj: Tensor | None  # lsh projection (d, b)
    always: Tensor  # (B, h, M) bool: the always-dense past keys
    always_idx: Tensor  # (B, h, n_always) their indices (the same count in every (b, h) row)


def build_key_index(
    mode: str, k: Tensor, bias: Tensor | None, always: Tensor, key_block: int, proj: Tensor | None
) -> KeyIndex:
    """k (B, h, M, d) the past; bias (B, h, 1, M) or None; always (B|1, h|1, M) bool."""
    B, h, M, d = k.shape
    valid = ~always.expand(B, h, M)
    if bias is not None:
        valid = valid & torch.isfinite(bias[:, :, 0].expand(B, h, M))
    codes = None
    if mode == "lsh":
        assert proj is not None
        mean = (k * valid[..., None]).sum(2, keepdim=True) / valid.sum(-1)[..., None, None].clamp(min=1)
        codes = lsh_codes(k - mean, proj)  # (B, h, M)
        order = torch.sort(torch.where(valid, codes, 1 << proj.shape[1]), dim=-1, stable=True).indices
    else:
        order = torch.arange(M, device=k.device).expand(B, h, M)  # (B, h, M)
    valid_sorted = _pad_to(valid.gather(2, order), key_block, 2, value=False)  # (B, h, Mp)
    order = _pad_to(order, key_block, 2, value=M)  # padding points past the keys (masked)
    nK = order.shape[2] // key_block
    counts = valid_sorted.view(B, h, nK, key_block).sum(-1)  # (B, h, nK)
    if codes is not None:
        sorted_codes = _pad_to(codes.gather(2, order[..., :M]), key_block, 2)  # (B, h, Mp)
        summary = _occupancy(sorted_codes, key_block, valid_sorted, proj.shape[1])  # type: ignore[union-attr]
    else:
        ks = _pad_to(k, key_block, 2) * valid_sorted[..., None]  # natural order
        summary = ks.view(B, h, nK, key_block, d).sum(3) / counts[..., None].clamp(min=1)
    always = always.expand(B, h, M)
    n_always = int(always[0, 0].sum())  # one host sync per block and layer
    always_idx = torch.sort((~always).to(torch.int8), dim=-1, stable=True).indices[..., :n_always]
    return KeyIndex(order, valid_sorted, summary, counts, proj, always, always_idx)


def _select(mode: str, q_blocks: Tensor, q_valid: Tensor, index: KeyIndex, density: float) -> Tensor:
    """Selected key blocks (B, h, nQ, nK) bool. q_blocks (B, h, nQ, Qb, d), q_valid (B, h, nQ, Qb)."""
    has_keys = index.counts > 0  # (B, h, nK)
    if mode == "lsh":
        assert index.proj is not None
        bits = index.proj.shape[1]
        codes = lsh_codes(q_blocks, index.proj)  # (B, h, nQ, Qb)
        occ = (F.one_hot(codes, 1 << bits).float() * q_valid[..., None]).amax(3)  # (B, h, nQ, 2^b)
        probe = (occ @ hamming1(bits, q_blocks.device)).clamp(max=1)  # (B, h, nQ, 2^b)
        sel = (probe @ index.summary.transpose(-1, -2)) > 0  # (B, h, nQ, nK)
        return sel & has_keys[:, :, None]
    qmean = (q_blocks * q_valid[..., None]).sum(3) / q_valid.sum(-1, keepdim=True).clamp(min=1)
    score = qmean @ index.summary.transpose(-1, -2)  # (B, h, nQ, nK)
    score = score.masked_fill(~has_keys[:, :, None], NEG_INF)
    n_keep = max(1, math.ceil(density * score.shape[-1]))
    top = score.topk(n_keep, dim=-1).indices
    sel = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, top, True)
    return sel & has_keys[:, :, None]


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    n_past: int,
    bias: Tensor | None,
    index: KeyIndex,
    *,
    mode: str,
    query_block: int,
    key_block: int,
    density: float = 1.0,
    stats: AttentionStats | None = None,
    layer: int = 0,
) -> Tensor:
    """Attention of q (B, h, N, d) over k, v (B, h, n_past + N_own, d): the selected past key blocks, the
    always-dense past keys (`index.always`) and the own keys; bias (B, h, 1, n_past + N_own)
    or None. Returns (B, h, N, d)."""
    B, h, N, d = q.shape
    # queries in LSH-bucket order (lsh) or natural order, padded to query blocks
    if mode == "lsh":
        assert index.proj is not None
        q_order = torch.sort(lsh_codes(q, index.proj), dim=-1, stable=True).indices  # (B, h, N)
    else:
        q_order = torch.arange(N, device=q.device).expand(B, h, N)
    qs = _pad_to(q.gather(2, q_order[..., None].expand(-1, -1, -1, d)), query_block, 2)  # (B, h, Nq, d)
    nQ = qs.shape[2] // query_block
    q_valid = _pad_to(torch.ones(B, h, N, dtype=torch.bool, device=q.device), query_block, 2, value=False)
    q_blocks = qs.view(B, h, nQ, query_block, d)
    q_valid = q_valid.view(B, h, nQ, query_block)
    sel = _select(mode, q_blocks, q_valid, index, density)  # (B, h, nQ, nK)
    max_sel = max(1, int(sel.sum(-1).max()))
    ids = sel.float().topk(max_sel, dim=-1)  # selected blocks first
    block_ids, block_ok = ids.indices, ids.values > 0  # (B, h, nQ, max_sel)
    # gather the selected past keys: token index = order[block·Kb + j]
    tok = block_ids[..., None] * key_block + torch.arange(key_block, device=q.device)  # (.., max_sel, Kb)
    tok = tok.flatten(3)  # (B, h, nQ, max_sel·Kb)
    flat = tok.flatten(2)  # (B, h, nQ·max_sel·Kb)
    src = index.order.gather(2, flat).clamp(max=max(n_past - 1, 0))  # past slot of each gathered key
    ok = index.valid.gather(2, flat) & block_ok.repeat_interleave(key_block, -1).flatten(2)
    # the always-dense keys (same count in every (b, h) row by construction) and the own block
    alw, a_idx = index.always, index.always_idx  # (B, h, n_past), (B, h, n_always)
    own = torch.arange(n_past, k.shape[2], device=q.device).expand(B, h, -1)  # (B, h, N_own)
    dense_idx = torch.cat([a_idx, own], 2)  # (B, h, D)
    idx = torch.cat([src.view(B, h, nQ, -1), dense_idx[:, :, None].expand(-1, -1, nQ, -1)], 3)  # (B,h,nQ,Kt)
    keys, vals = _take(k, idx), _take(v, idx)  # (B, h, nQ, Kt, d)
    ok = torch.cat(
        [ok.view(B, h, nQ, -1), torch.ones_like(idx[..., : dense_idx.shape[2]], dtype=torch.bool)], 3
    )
    full_mask = torch.zeros(idx.shape, dtype=q.dtype, device=q.device).masked_fill(~ok, NEG_INF)
    if bias is not None:
        full_mask = full_mask + bias[:, :, 0].expand(B, h, -1).gather(2, idx.flatten(2)).view(idx.shape)
    full_mask = full_mask[..., None, :]  # (B, h, nQ, 1, Kt)
    out = F.scaled_dot_product_attention(
        q_blocks.flatten(0, 1), keys.flatten(0, 1), vals.flatten(0, 1), attn_mask=full_mask.flatten(0, 1)
    ).view(B, h, nQ * query_block, d)[:, :, :N]  # sorted query order
    result = torch.empty_like(q).scatter_(2, q_order[..., None].expand(-1, -1, -1, d), out)
    if stats is not None:
        _record(stats, layer, q, k, bias, alw, sel, index, q_order, query_block, key_block)
    return result


def _take(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, h, M, d) rows at idx (B, h, *rest) → (B, h, *rest, d); one index_select (faster than gather)."""
    B, h, M, d = x.shape
    offset = (torch.arange(B * h, device=x.device) * M).view(B, h, *([1] * (idx.dim() - 2)))
    return x.reshape(B * h * M, d).index_select(0, (idx + offset).flatten()).view(*idx.shape, d)


def _record(
    stats: AttentionStats, layer: int, q: Tensor, k: Tensor, bias: Tensor | None, alw: Tensor,
    sel: Tensor, index: KeyIndex, q_order: Tensor, query_block: int, key_block: int,
) -> None:  # fmt: skip
    """Density (kept / visible keys) and, with `measure_mass`, the dense softmax mass of the keys kept."""
    B, h, N, d = q.shape
    n_past = alw.shape[-1]
    visible = index.valid.sum(-1) + alw.sum(-1)  # (B, h) past keys
    kept = (sel.float() * index.counts[:, :, None]).sum(-1) + alw.sum(-1)[..., None]  # (B, h, nQ)
    n_own = k.shape[2] - n_past
    stats.add("density", layer, ((kept + n_own) / (visible[..., None] + n_own)).mean())
    if not stats.measure_mass:
        return
    # token-level keep mask of the past per query block, then per query in natural order
    keep_sorted = sel.repeat_interleave(key_block, -1) & index.valid[:, :, None]  # (B, h, nQ, Mp)
    keep = torch.zeros(B, h, sel.shape[2], n_past + 1, dtype=torch.bool, device=q.device)
    keep.scatter_(3, index.order[:, :, None].expand_as(keep_sorted), keep_sorted)
    keep = keep[..., :n_past] | alw[:, :, None]  # (B, h, nQ, n_past)
    rank = torch.empty_like(q_order).scatter_(2, q_order, torch.arange(N, device=q.device).expand(B, h, N))
    keep_q = keep.gather(2, (rank // query_block)[..., None].expand(-1, -1, -1, n_past))  # (B, h, N, n_past)
    logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(d)  # (B, h, N, M)
    if bias is not None:
        logits = logits + bias.float()
    p = logits.softmax(-1)
    mass = (p[..., :n_past] * keep_q).sum(-1) + p[..., n_past:].sum(-1)  # (B, h, N)
    stats.add("retained_mass", layer, mass.mean())

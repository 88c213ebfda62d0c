"""AnnCA for the causal Wan cross-attention: exact padding collapse, then per-frame prompt-token selection.

Padding collapse (exact, merge lemma): Wan attends to all text_len prompt rows with no mask, and every
row past the prompt's real length is the same zero row, so its K/V are identical in every layer and
head. Those rows become one key with logit bias ln(text_len − L) (once per prompt, with the cross K/V).
In a batch the prompts keep max(L) rows plus the padding key; an item's rows past its own L get −inf.

Selection ("topk"): at a block's first call (per layer), each frame's queries score the prompt keys by
their mean softmax probability; the frame keeps the `cross_topk` best (or the smallest set reaching mass
`cross_mass`), always with the EOS row and the padding key, and the block's later calls (its other
denoising steps and the t = 0 write) reuse the selection. Executed as a gather + SDPA per frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ca2vdm_cli.models.attention_opts import AttentionOptions
from ca2vdm_cli.models.sparse_attention import NEG_INF, AttentionStats

# (q (B, h, N, d), k, v (B, h, rows, d)) → (B, h, N, d)
CrossAttend = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class CrossState:
    """The prompt's collapse bias (B, 1, 1, rows) (None: no padding collapsed), the rows always kept by the
    selection (B, rows) and the per-layer selections: layer -> (written, index (B, h, F, k), bias
    (B, h, F, 1, k))."""

    bias: Tensor | None = None
    forced: Tensor | None = None
    selections: dict[int, tuple[int, Tensor, Tensor]] = field(default_factory=dict)


def prompt_lengths(context: Tensor) -> list[int]:
    """Real rows of each prompt (B, L, text_dim): one past the last non-zero row (one host sync)."""
    nonzero = context.abs().amax(-1) > 0  # (B, L)
    idx = torch.arange(1, context.shape[1] + 1, device=context.device)
    return (nonzero * idx).amax(-1).tolist()


def collapse_padding(context: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, CrossState]:
    """k, v (layers, B, h, text_len, d) of `context` (B, L, text_dim) → k, v (layers, B, h, rows, d) with
    rows = max real length + 1, and the CrossState carrying the bias."""
    T = k.shape[3]
    lengths = prompt_lengths(context)
    longest = max(lengths)
    B, device = len(lengths), k.device
    if longest >= T:  # nothing to collapse; EOS is the last real row
        forced = torch.zeros(B, T, dtype=torch.bool, device=device)
        forced[torch.arange(B), torch.tensor(lengths, device=device) - 1] = True
        return k, v, CrossState(forced=forced)
    rows = longest + 1
    k_c = torch.cat([k[..., :longest, :], k[..., T - 1 :, :]], dim=3)  # row T−1 is padding for everyone
    v_c = torch.cat([v[..., :longest, :], v[..., T - 1 :, :]], dim=3)
    bias = torch.zeros(B, rows, device=device)
    forced = torch.zeros(B, rows, dtype=torch.bool, device=device)
    for b, L in enumerate(lengths):
        bias[b, L:longest] = NEG_INF  # this item's padding: counted in the padding key
        bias[b, longest] = math.log(T - L)
        forced[b, longest] = True
        if L > 0:
            forced[b, L - 1] = True  # EOS
    return k_c, v_c, CrossState(bias=bias.to(k.dtype)[:, None, None], forced=forced)


def cross_attend(
    state: CrossState,
    options: AttentionOptions,
    layer: int,
    written: int,
    tokens_per_frame: int,
    stats: AttentionStats | None,
) -> CrossAttend | None:
    """The cross-attention of one layer under `options` (None: plain SDPA over every row)."""
    if options.sparse_cross == "none":
        return None
    if options.sparse_cross == "pad":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=state.bias)

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, h, N, d = q.shape
        S = tokens_per_frame
        nf = N // S
        chosen = state.selections.get(layer)
        if chosen is None or chosen[0] != written:
            chosen = (written, *_select(state, options, q.view(B, h, nf, S, d), k, stats, layer))
            state.selections[layer] = chosen
        _, idx, bias = chosen  # (B, h, F, kk), (B, h, F, 1, kk)
        gather = idx[..., None].expand(-1, -1, -1, -1, d)
        ks = k[:, :, None].expand(-1, -1, nf, -1, -1).gather(3, gather)  # (B, h, F, kk, d)
        vs = v[:, :, None].expand(-1, -1, nf, -1, -1).gather(3, gather)
        out = F.scaled_dot_product_attention(
            q.view(B, h, nf, S, d).flatten(0, 2),
            ks.flatten(0, 2),
            vs.flatten(0, 2),
            attn_mask=bias.flatten(0, 2),
        )  # (B·h·F, S, d)
        return out.view(B, h, N, d)

    return attend


def _select(
    state: CrossState,
    options: AttentionOptions,
    q: Tensor,
    k: Tensor,
    stats: AttentionStats | None,
    layer: int,
) -> tuple[Tensor, Tensor]:
    """Rows kept per frame: q (B, h, F, S, d), k (B, h, rows, d) → index (B, h, F, kk) and bias
    (B, h, F, 1, kk)."""
    B, h, nf, S, d = q.shape
    rows = k.shape[2]
    base = torch.zeros(B, 1, 1, rows, dtype=q.dtype, device=q.device) if state.bias is None else state.bias
    logits = (q.flatten(2, 3).float() @ k.float().transpose(-1, -2)) / math.sqrt(d) + base.float()
    prob = logits.softmax(-1).view(B, h, nf, S, rows).mean(3)  # (B, h, F, rows)
    real = torch.isfinite(base[:, :, 0]).expand(B, h, rows)[:, :, None]  # (B, h, 1, rows)
    forced = torch.zeros_like(real) if state.forced is None else state.forced[:, None, None]
    score = prob.masked_fill(forced, math.inf).masked_fill(~real, NEG_INF)  # (B, h, F, rows)
    order = score.sort(-1, descending=True)
    if options.cross_mass is None:
        kk = min(rows, options.cross_topk + int(forced.sum(-1).max()))
        keep = torch.ones(B, h, nf, kk, dtype=torch.bool, device=q.device)
    else:
        p_sorted = prob.gather(-1, order.indices)
        before = p_sorted.cumsum(-1) - p_sorted  # mass of the better rows
        keep_all = (before < options.cross_mass) | (order.values == math.inf)
        kk = max(1, int(keep_all.sum(-1).max()))
        keep = keep_all[..., :kk]
    idx = order.indices[..., :kk]
    top = order.values[..., :kk]
    keep = (keep & torch.isfinite(top)) | (top == math.inf)  # never a row of another item's padding
    bias = base[:, :, 0].expand(B, h, rows)[:, :, None].expand(-1, -1, nf, -1).gather(-1, idx)
    bias = bias.masked_fill(~keep, NEG_INF)[..., None, :]  # (B, h, F, 1, kk)
    if stats is not None:
        stats.add("cross_density", layer, (keep.sum(-1) / real.sum(-1).clamp(min=1)).mean())
        stats.add("cross_retained_mass", layer, (prob.gather(-1, idx) * keep).sum(-1).mean())
    return idx, bias

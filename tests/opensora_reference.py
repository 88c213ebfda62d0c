"""An independent Open-Sora v1.0 STDiT forward written from the spec (§1.3–1.5 minus the Ca2-VDM changes),
reading the *Open-Sora* state dict directly, plus a generator of synthetic Open-Sora checkpoints with the
real key names. It shares no code with ca2vdm_cli, so agreement tests the key mapping, not a copy of it.

Open-Sora's temporal attention is bidirectional and every frame has the same timestep.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def sincos_rows(dim: int, positions: np.ndarray) -> np.ndarray:
    """MAE-style 1-D table: [sin(p·w_i) | cos(p·w_i)], w_i = 1 / 10000^(i / (dim/2))."""
    w = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
    angles = np.outer(positions.astype(np.float64), w)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def spatial_table(dim: int, grid: int, scale: float) -> np.ndarray:
    """(grid², dim): the first half encodes the column, the second the row; token = row·grid + col."""
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    return np.concatenate([sincos_rows(dim // 2, cols / scale), sincos_rows(dim // 2, rows / scale)], axis=1)


def opensora_checkpoint(
    *, hidden: int, depth: int, caption: int, tokens: int, latent: int, space_scale: float, seed: int = 0
) -> dict[str, Tensor]:
    """A synthetic `OpenSora-v1-HQ-16x…pth` state dict (spec §6.3 keys), every weight random and non-zero."""
    g = torch.Generator().manual_seed(seed)
    C = hidden

    def rnd(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g) * 0.2

    sd = {
        "pos_embed": torch.from_numpy(spatial_table(C, latent // 2, space_scale)).float()[None],
        "pos_embed_temporal": torch.from_numpy(sincos_rows(C, np.arange(16))).float()[None],
        "x_embedder.proj.weight": rnd(C, 4, 1, 2, 2),
        "x_embedder.proj.bias": rnd(C),
        "t_embedder.mlp.0.weight": rnd(C, 256),
        "t_embedder.mlp.0.bias": rnd(C),
        "t_embedder.mlp.2.weight": rnd(C, C),
        "t_embedder.mlp.2.bias": rnd(C),
        "t_block.1.weight": rnd(6 * C, C),
        "t_block.1.bias": rnd(6 * C),
        "y_embedder.y_embedding": rnd(tokens, caption),
        "y_embedder.y_proj.fc1.weight": rnd(C, caption),
        "y_embedder.y_proj.fc1.bias": rnd(C),
        "y_embedder.y_proj.fc2.weight": rnd(C, C),
        "y_embedder.y_proj.fc2.bias": rnd(C),
        "final_layer.scale_shift_table": rnd(2, C),
        "final_layer.linear.weight": rnd(32, C),
        "final_layer.linear.bias": rnd(32),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        sd[b + "scale_shift_table"] = rnd(6, C)
        for name, out in [
            ("attn.qkv", 3 * C),
            ("attn.proj", C),
            ("attn_temp.qkv", 3 * C),
            ("attn_temp.proj", C),
        ]:
            sd[b + name + ".weight"], sd[b + name + ".bias"] = rnd(out, C), rnd(out)
        for name, out in [
            ("cross_attn.q_linear", C),
            ("cross_attn.kv_linear", 2 * C),
            ("cross_attn.proj", C),
        ]:
            sd[b + name + ".weight"], sd[b + name + ".bias"] = rnd(out, C), rnd(out)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = rnd(4 * C, C), rnd(4 * C)
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = rnd(C, 4 * C), rnd(C)
    return sd


# ----------------------------------------------------------------------------- the reference forward
def _linear(sd: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def _attend(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor | None = None) -> Tensor:
    """Plain softmax attention. q (N, Lq, C), k/v (N, Lk, C), mask (N, Lk) bool (True = visible)."""
    N, Lq, C = q.shape
    d = C // heads
    q, k, v = (t.reshape(N, -1, heads, d).transpose(1, 2) for t in (q, k, v))  # (N, h, L, d)
    logits = q @ k.transpose(-1, -2) / math.sqrt(d)  # (N, h, Lq, Lk)
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
    return (logits.softmax(-1) @ v).transpose(1, 2).reshape(N, Lq, C)


def _self_attention(sd: dict[str, Tensor], name: str, x: Tensor, heads: int) -> Tensor:
    q, k, v = _linear(sd, name + ".qkv", x).chunk(3, dim=-1)
    return _linear(sd, name + ".proj", _attend(q, k, v, heads))


def _layer_norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def opensora_forward(
    sd: dict[str, Tensor], x: Tensor, t: Tensor, y: Tensor, y_mask: Tensor, heads: int, depth: int
) -> Tensor:
    """x (B, 4, T, H, W), t (B,), y (B, N, caption), y_mask (B, N) -> (B, 8, T, H, W)."""
    B, _, T, H, W = x.shape
    C = sd["x_embedder.proj.bias"].shape[0]
    S = (H // 2) * (W // 2)
    tokens = F.conv3d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=(1, 2, 2))
    tokens = tokens.flatten(3).permute(0, 2, 3, 1) + sd["pos_embed"][:, None]  # (B, T, S, C)

    half = 128
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    feats = torch.cat([torch.cos(t.float()[:, None] * freqs), torch.sin(t.float()[:, None] * freqs)], dim=1)
    t_emb = _linear(sd, "t_embedder.mlp.2", F.silu(_linear(sd, "t_embedder.mlp.0", feats)))  # (B, C)
    t_mlp = _linear(sd, "t_block.1", F.silu(t_emb))  # (B, 6C)
    text = _linear(
        sd, "y_embedder.y_proj.fc2", F.gelu(_linear(sd, "y_embedder.y_proj.fc1", y), approximate="tanh")
    )

    h = tokens
    for i in range(depth):
        b = f"blocks.{i}."
        mod = sd[b + "scale_shift_table"][None] + t_mlp.view(B, 6, C)  # (B, 6, C)
        shift1, scale1, gate1, shift2, scale2, gate2 = (m[:, None, None, :] for m in mod.unbind(1))
        spatial = (_layer_norm(h) * (1 + scale1) + shift1).reshape(B * T, S, C)
        h = h + gate1 * _self_attention(sd, b + "attn", spatial, heads).view(B, T, S, C)
        temporal = h.transpose(1, 2)  # (B, S, T, C), raw residual stream
        if i == 0:
            temporal = temporal + sd["pos_embed_temporal"][0, :T]
        out = _self_attention(sd, b + "attn_temp", temporal.reshape(B * S, T, C), heads)  # bidirectional
        h = h + gate1 * out.view(B, S, T, C).transpose(1, 2)
        q = _linear(sd, b + "cross_attn.q_linear", h.reshape(B, T * S, C))
        k, v = _linear(sd, b + "cross_attn.kv_linear", text).chunk(2, dim=-1)
        cross = _linear(sd, b + "cross_attn.proj", _attend(q, k, v, heads, y_mask.bool()))
        h = h + cross.view(B, T, S, C)
        mlp_in = _layer_norm(h) * (1 + scale2) + shift2
        mlp = _linear(sd, b + "mlp.fc2", F.gelu(_linear(sd, b + "mlp.fc1", mlp_in), approximate="tanh"))
        h = h + gate2 * mlp

    shift, scale = (sd["final_layer.scale_shift_table"][None] + t_emb[:, None]).unbind(1)  # (B, C) each
    out = _linear(
        sd, "final_layer.linear", _layer_norm(h) * (1 + scale[:, None, None]) + shift[:, None, None]
    )
    out = out.view(B, T, H // 2, W // 2, 2, 2, 8)  # (B, T, gh, gw, ph, pw, c)
    return out.permute(0, 6, 1, 2, 4, 3, 5).reshape(B, 8, T, H, W)

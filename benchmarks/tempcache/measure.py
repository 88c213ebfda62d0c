"""Cost and error of TempCache / AnnCA / AnnSA against dense attention, small random-weight CausalWan on CPU.

Three runs per option, each with the same seeds as the dense run:
* rollout: block-by-block flow sampling (Self-Forcing's 4-step list) over `--frames` latent frames with
  global attention; per block the self-attention time, the denoising step time and the write time; KV
  bytes; the final latents' relative L2 error against dense per time segment.
* replay: a synthetic smooth video (static background, a drifting blob) is written block by block as the
  clean past and each block is denoised once at t = 750, with the option alone: timings, KV bytes read,
  merge rate / density, and the predictions' relative L2 against dense per time segment.
* teacher-forced: the same smooth video is written as the clean
  past and every block is denoised once at t = 750; each layer's self- and cross-attention output under
  the option is computed on the dense activations (same q, k, v; the option's cache stores the dense K/V)
  and compared with dense (relative L2), which separates the approximation from trajectory divergence;
  the merge rate, density and retained attention mass are recorded on this run.

Random weights: the merge rates, densities and errors say nothing about a trained model's quality; they
only exercise the code paths and the cost side. Usage:
    OMP_NUM_THREADS=1 python benchmarks/tempcache/measure.py --out benchmarks/tempcache/cpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ca2vdm_cli.models.attention_opts import AttentionOptions
from ca2vdm_cli.models.sparse_attention import AttentionStats
from ca2vdm_cli.models.wan import CausalWan, WanConfig
from ca2vdm_cli.models.wan.cross import cross_attend
from ca2vdm_cli.models.wan.model import sinusoid
from ca2vdm_cli.sampling.flow import SELF_FORCING, sample_block, sigma_at

log = logging.getLogger("tempcache.measure")
# Process CPU time, not wall clock: the machine is shared, and with one torch thread the CPU time this
# process spends is what the option costs (insensitive to other jobs' load).
clock = time.process_time

BLOCKS = dict(query_block=64, key_block=64)
OPTIONS: dict[str, AttentionOptions] = {
    "dense": AttentionOptions(),
    "tempcache-0.99": AttentionOptions(kv_compress="tempcache", tempcache_threshold=0.99),
    "tempcache-0.95": AttentionOptions(kv_compress="tempcache", tempcache_threshold=0.95),
    "tempcache-0.90": AttentionOptions(kv_compress="tempcache", tempcache_threshold=0.90),
    "tempcache-0.95-r1": AttentionOptions(
        kv_compress="tempcache", tempcache_threshold=0.95, tempcache_radius=1
    ),
    "tempcache-0.95-max4": AttentionOptions(
        kv_compress="tempcache", tempcache_threshold=0.95, tempcache_max_count=4
    ),
    "tempcache-0.99-max4": AttentionOptions(
        kv_compress="tempcache", tempcache_threshold=0.99, tempcache_max_count=4
    ),
    "tempcache-0.95-budget42": AttentionOptions(
        kv_compress="tempcache", tempcache_threshold=0.95, tempcache_budget_frames=42
    ),
    "annca-pad": AttentionOptions(sparse_cross="pad"),
    "annca-top8": AttentionOptions(sparse_cross="topk", cross_topk=8),
    "annca-mass0.9": AttentionOptions(sparse_cross="topk", cross_mass=0.9),
    "annsa-lsh6": AttentionOptions(sparse_self="lsh", lsh_bits=6, **BLOCKS),
    "annsa-lsh4": AttentionOptions(sparse_self="lsh", lsh_bits=4, **BLOCKS),
    "annsa-lsh8-q16": AttentionOptions(sparse_self="lsh", lsh_bits=8, query_block=16, key_block=64),
    "topk-blocks-0.25": AttentionOptions(sparse_self="topk-blocks", topk_density=0.25, **BLOCKS),
    "topk-blocks-0.5": AttentionOptions(sparse_self="topk-blocks", topk_density=0.5, **BLOCKS),
    "tempcache-0.95+pad+lsh6": AttentionOptions(
        kv_compress="tempcache", tempcache_threshold=0.95, sparse_cross="pad", sparse_self="lsh", **BLOCKS
    ),
}


def build_model(seed: int) -> CausalWan:
    """Random weights; head_dim 64 (time RoPE on 24 of its dims), 64 tokens per 16×16 latent frame."""
    torch.manual_seed(seed)
    cfg = WanConfig.tiny(dim=128, num_heads=2, ffn_dim=256, num_layers=2, text_dim=64, text_len=512)
    return CausalWan(cfg).eval()


class Timer:
    """Times the model's self-attention closures (rotation, window, selection, SDPA) and its cross-attention
    modules (projections included) (CPU: synchronous). `close` restores the model."""

    def __init__(self, model: CausalWan) -> None:
        self.total = self.cross = 0.0
        self.model, self._start = model, 0.0
        original = model._attention
        self._hooks = [
            h
            for blk in model.blocks
            for h in (
                blk.cross_attn.register_forward_pre_hook(self._begin),
                blk.cross_attn.register_forward_hook(self._end),
            )
        ]

        def timed(*args, **kw):
            make = original(*args, **kw)

            def make_timed(layer: int):
                attend = make(layer)

                def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
                    t0 = clock()
                    out = attend(q, k, v)
                    self.total += clock() - t0
                    return out

                return run

            return make_timed

        model._attention = timed  # type: ignore[method-assign]

    def _begin(self, *_: object) -> None:
        self._start = clock()

    def _end(self, *_: object) -> None:
        self.cross += clock() - self._start

    def take(self) -> tuple[float, float]:
        """(self-attention, cross-attention) seconds since the last call."""
        t, c = self.total, self.cross
        self.total = self.cross = 0.0
        return t, c

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        del self.model._attention  # back to the class method


def rollout(
    model: CausalWan, opts: AttentionOptions, frames: int, hw: tuple[int, int], ctx: Tensor, seed: int
):
    """Flow sampling block by block; per-block timings and the final latents (1, 16, frames, H, W)."""
    n = model.cfg.num_frame_per_block
    cache = model.new_cache(batch_size=1, max_frames=frames, frame_shape=hw, attention=opts)
    cache.stats = AttentionStats()  # counts only (no retained mass: that costs a dense pass)
    timer = Timer(model)
    g = torch.Generator().manual_seed(seed)
    out, rows = [], defaultdict(list)
    for s in range(0, frames, n):
        noise = torch.randn(1, 16, n, *hw, generator=g)
        step_noise = [torch.randn(1, 16, n, *hw, generator=g) for _ in SELF_FORCING.steps]
        calls = []

        def predict(x: Tensor, t: Tensor, s: int = s, calls: list = calls) -> Tensor:
            t0 = clock()
            v = model.denoise(cache, x, t, ctx, s)
            calls.append(clock() - t0)
            return v

        x0 = sample_block(predict, noise, SELF_FORCING, lambda j, sn=step_noise: sn[j])
        attn, cross = timer.take()
        rows["attention_s"].append(attn / len(calls))
        rows["cross_s"].append(cross / len(calls))
        t0 = clock()
        model.write_cache(cache, x0, ctx, s)
        rows["write_s"].append(clock() - t0)
        timer.take()
        rows["step_s"].append(sum(calls) / len(calls))
        out.append(x0)
    timer.close()
    kv = {"kv_bytes_allocated": cache.nbytes, "kv_bytes_read": getattr(cache, "used_nbytes", cache.nbytes)}
    return torch.cat(out, 2), dict(rows), kv, cache.stats.summary()


def replay(model: CausalWan, opts: AttentionOptions, video: Tensor, ctx: Tensor, seed: int):
    """The option alone on the smooth video: per block one denoising call at t = 750 (timed) and the
    clean write; returns the predictions (1, 16, T, H, W), per-block times, KV bytes and stats."""
    frames, hw, n = video.shape[2], video.shape[3:], model.cfg.num_frame_per_block
    cache = model.new_cache(batch_size=1, max_frames=frames, frame_shape=hw, attention=opts)
    cache.stats = AttentionStats()
    timer, g = Timer(model), torch.Generator().manual_seed(seed)
    t = torch.full((1, n), float(SELF_FORCING.timesteps()[1]))
    sigma = float(sigma_at(t[:1, :1], SELF_FORCING.shift))
    preds, rows = [], defaultdict(list)
    for s in range(0, frames, n):
        x0 = video[:, :, s : s + n]
        x_t = (1 - sigma) * x0 + sigma * torch.randn(x0.shape, generator=g)
        t0 = clock()
        preds.append(model.denoise(cache, x_t, t, ctx, s))
        rows["step_s"].append(clock() - t0)
        attn, cross = timer.take()
        rows["attention_s"].append(attn)
        rows["cross_s"].append(cross)
        t0 = clock()
        model.write_cache(cache, x0, ctx, s)
        rows["write_s"].append(clock() - t0)
        timer.take()
    timer.close()
    kv = {"kv_bytes_allocated": cache.nbytes, "kv_bytes_read": getattr(cache, "used_nbytes", cache.nbytes)}
    return torch.cat(preds, 2), dict(rows), kv, cache.stats.summary(), cache


def time_full_past(model: CausalWan, caches: dict, ctx: Tensor, rounds: int, seed: int) -> dict:
    """One denoising call per option on its full replay cache, interleaved over `rounds` rounds (the CPU
    is shared: interleaving spreads the noise evenly); min and median of the step and attention times."""
    name0 = next(iter(caches))
    frames, (H, W) = caches[name0].written, caches[name0].grid
    n = model.cfg.num_frame_per_block
    x = torch.randn(1, 16, n, 2 * H, 2 * W, generator=torch.Generator().manual_seed(seed))
    t = torch.full((1, n), float(SELF_FORCING.timesteps()[1]))
    timer = Timer(model)
    times: dict[str, dict[str, list[float]]] = {k: defaultdict(list) for k in caches}
    for _ in range(rounds):
        for name, cache in caches.items():
            t0 = clock()
            model.denoise(cache, x, t, ctx, frames)
            times[name]["step_s"].append(clock() - t0)
            attn, cross = timer.take()
            times[name]["attention_s"].append(attn)
            times[name]["cross_s"].append(cross)
    timer.close()
    out = {}
    for name, rows in times.items():
        out[name] = {
            f"{k}_{stat}": fn(v) for k, v in rows.items() for stat, fn in (("min", min), ("median", _median))
        }
    return out


def _median(x: list[float]) -> float:
    return sorted(x)[len(x) // 2]


def _quarter(rows: dict[str, list[float]]) -> dict[str, float]:
    """Mean of each per-block series over the final quarter of the blocks (the longest context)."""
    return {k: sum(v[-max(1, len(v) // 4) :]) / max(1, len(v) // 4) for k, v in rows.items()}


def smooth_video(frames: int, hw: tuple[int, int], seed: int) -> Tensor:
    """A static low-frequency background plus a blob drifting one latent pixel every 3 frames."""
    g = torch.Generator().manual_seed(seed)
    bg = F.interpolate(torch.randn(1, 16, 1, 4, 4, generator=g), size=(1, *hw), mode="trilinear")
    H, W = hw
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    video = bg.expand(1, 16, frames, H, W).clone()
    for f in range(frames):
        cy, cx = H / 2, (f / 3) % W
        video[:, :, f] += 2.0 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 4.0)
    return video


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


@torch.no_grad()
def _shadow_forward(model, dense, method, x, t, ctx, s: int, write: bool, errors) -> None:
    """CausalWan._forward on the dense cache; each layer's attention also runs on `method` (same q, k, v)."""
    B, _, nf, H, W = x.shape
    e = model.time_embedding(sinusoid(t, model.cfg.freq_dim).float())  # (B, F, d)
    e0 = model.time_projection(e).unflatten(-1, (6, model.cfg.dim))  # (B, F, 6, d)
    h = model.patch_embedding(x)  # (B, d, F, h, w)
    grid = (h.shape[3], h.shape[4])
    h = h.flatten(2).transpose(1, 2)  # (B, F·S, d)
    for cache in (dense, method):
        if not cache.has_context(ctx):
            model.prepare_context(cache, ctx)
    d_for, m_for = model._attention(dense, s, nf, grid, write), model._attention(method, s, nf, grid, write)
    S = grid[0] * grid[1]
    for layer, block in enumerate(model.blocks):
        d_att, m_att = d_for(layer), m_for(layer)
        m_cross = cross_attend(method.cross, method.options, layer, s, S, method.stats)

        def attend(q, k, v, d_att=d_att, m_att=m_att, layer=layer):
            ref = d_att(q, k, v)
            errors[f"self/{layer}"].append(_rel(m_att(q, k, v), ref))
            return ref

        def cross(q, k, v, m_cross=m_cross, layer=layer):
            ref = F.scaled_dot_product_attention(q, k, v)
            if m_cross is not None:
                got = m_cross(q, method.context_k[layer], method.context_v[layer])
                errors[f"cross/{layer}"].append(_rel(got, ref))
            return ref

        h = block(h, e0, attend, dense.context_k[layer], dense.context_v[layer], cross)
    if write:
        dense.advance(nf)
        method.advance(nf)


def teacher_forced(model: CausalWan, opts: AttentionOptions, video: Tensor, ctx: Tensor, seed: int):
    """Per-layer attention error on dense activations, plus the option's merge / density / mass stats."""
    frames, hw, n = video.shape[2], video.shape[3:], model.cfg.num_frame_per_block
    dense = model.new_cache(batch_size=1, max_frames=frames, frame_shape=hw)
    method = model.new_cache(batch_size=1, max_frames=frames, frame_shape=hw, attention=opts)
    method.stats = AttentionStats(measure_mass=True)
    g = torch.Generator().manual_seed(seed)
    errors: dict[str, list[float]] = defaultdict(list)
    t = torch.full((1, n), float(SELF_FORCING.timesteps()[1]))
    sigma = float(sigma_at(t[:1, :1], SELF_FORCING.shift))
    for s in range(0, frames, n):
        x0 = video[:, :, s : s + n]
        x_t = (1 - sigma) * x0 + sigma * torch.randn(x0.shape, generator=g)
        _shadow_forward(model, dense, method, x_t, t, ctx, s, False, errors)
        _shadow_forward(model, dense, method, x0, torch.zeros_like(t), ctx, s, True, errors)
    per_layer = {k: sum(v) / len(v) for k, v in sorted(errors.items())}
    return per_layer, method.stats.summary()


def segments(out: Tensor, ref: Tensor, count: int) -> list[float]:
    """Relative L2 of out vs ref (B, C, T, H, W) over `count` equal time segments."""
    T = ref.shape[2]
    edges = [round(i * T / count) for i in range(count + 1)]
    return [_rel(out[:, :, a:b], ref[:, :, a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _short(stats: dict[str, dict[int, float]]) -> dict[str, list[float]]:
    return {k: [round(x, 3) for x in v.values()] for k, v in stats.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=84, help="latent frames (a multiple of 3)")
    parser.add_argument("--size", type=int, default=16, help="latent height = width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds at the full past")
    parser.add_argument("--only", nargs="*", default=None, help="option names to run (dense always runs)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/tempcache/cpu.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    model = build_model(args.seed)
    hw = (args.size, args.size)
    g = torch.Generator().manual_seed(args.seed + 1)
    ctx = torch.randn(1, 20, model.cfg.text_dim, generator=g)  # 20 real rows of text_len 512
    video = smooth_video(args.frames, hw, args.seed + 2)
    names = ["dense"] + [k for k in OPTIONS if k != "dense" and (args.only is None or k in args.only)]
    results, ref, ref_replay, caches = {}, None, None, {}
    for name in names:
        opts = OPTIONS[name]
        t0 = clock()
        latents, rows, kv, rollout_stats = rollout(model, opts, args.frames, hw, ctx, args.seed + 3)
        preds, rrows, rkv, replay_stats, caches[name] = replay(model, opts, video, ctx, args.seed + 5)
        ref = latents if ref is None else ref
        ref_replay = preds if ref_replay is None else ref_replay
        per_layer, stats = teacher_forced(model, opts, video, ctx, args.seed + 4)
        results[name] = {
            "options": opts.to_dict(),
            "rollout": {
                "last_quarter_s": _quarter(rows), **kv, "stats": rollout_stats,
                "rel_l2_per_segment": segments(latents, ref, 4), "per_block": rows,
            },
            "replay": {
                "last_quarter_s": _quarter(rrows), **rkv, "stats": replay_stats,
                "rel_l2_per_segment": segments(preds, ref_replay, 4), "per_block": rrows,
            },
            "teacher_forced": {"rel_l2_per_layer": per_layer, "stats": stats},
            "cpu_s": clock() - t0,
        }  # fmt: skip
        rq, pq = _quarter(rows), _quarter(rrows)
        log.info(
            "%-24s rollout attn %.4f step %.4f | replay attn %.4f step %.4f write %.4f kv %.2f MB | "
            "err rollout %s replay %s tf %s | stats %s (%.0f s)",
            name, rq["attention_s"], rq["step_s"], pq["attention_s"], pq["step_s"], pq["write_s"],
            rkv["kv_bytes_read"] / 1e6, [round(x, 4) for x in segments(latents, ref, 4)],
            [round(x, 4) for x in segments(preds, ref_replay, 4)],
            {k: round(v, 4) for k, v in per_layer.items()}, _short(stats), clock() - t0,
        )  # fmt: skip
    timing = time_full_past(model, caches, ctx, args.rounds, args.seed + 6)
    for name, row in timing.items():
        results[name]["full_past"] = row
        log.info(
            "%-24s full past (%d frames): %s", name, args.frames, {k: round(v, 4) for k, v in row.items()}
        )
    meta = {
        "model": "random CausalWan: dim 128, 2 heads x 64, 2 layers, ffn 256, text_len 512, 20 real rows",
        "frames": args.frames, "latent": list(hw), "tokens_per_frame": (args.size // 2) ** 2,
        "attention": "global", "steps": list(SELF_FORCING.steps), "threads": 1, "torch": torch.__version__,
        "clock": "process CPU time (time.process_time), 1 torch thread",
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()

"""TempCache on the trained CausalSTDiT `sprites` model: merge rate per block and the decoded video's
difference from dense attention on the same seeds and noise (PSNR, data range 255, and SSIM per frame;
mean over frames, then prompts; per time segment too), for a list of thresholds.

Usage (CPU, one thread):
  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/tempcache/stdit_sprites.py \
      --prompts 8 --frames 240 --out benchmarks/tempcache/stdit_sprites.json
  # teacher-forced (text mode): every threshold's cache is fed the dense run's clean frames and noisy
  # inputs; the relative L2 error of its prediction per AR step, without trajectory divergence
  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/tempcache/stdit_sprites.py --teacher-forced \
      --prompts 8 --frames 240 --out benchmarks/tempcache/stdit_sprites_tf.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_videos import psnr, ssim  # noqa: E402

from ca2vdm_cli.engine.pipeline import Pipeline  # noqa: E402
from ca2vdm_cli.models.attention_opts import AttentionOptions  # noqa: E402
from ca2vdm_cli.models.sparse_attention import AttentionStats  # noqa: E402
from ca2vdm_cli.sprites import world  # noqa: E402
from ca2vdm_cli.sprites.evaluate import generate_batch  # noqa: E402


def compare(dense: np.ndarray, other: np.ndarray, segments: int) -> dict:
    """PSNR / SSIM of videos (B, T, H, W, 3) against dense: means over frames and prompts, per segment."""
    B, T = dense.shape[:2]
    p = np.array([[psnr(dense[b, t], other[b, t]) for t in range(T)] for b in range(B)])  # (B, T)
    s = np.array([[ssim(dense[b, t], other[b, t]) for t in range(T)] for b in range(B)])
    p = np.minimum(p, 100.0)  # identical frames: PSNR capped at 100 dB for the means
    bounds = np.linspace(0, T, segments + 1).astype(int)
    return {
        "psnr_mean": float(p.mean()),
        "psnr_min_video": float(p.mean(1).min()),
        "ssim_mean": float(s.mean()),
        "identical_frames": float((p >= 100.0).mean()),
        "psnr_segments": [float(p[:, a:b].mean()) for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
        "ssim_segments": [float(s[:, a:b].mean()) for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
    }


class Shadowed:
    """The loop's denoiser protocol: runs the dense cache denoiser and feeds every TempCache `shadow` the
    same clean frames and the same noisy inputs, recording each shadow's relative L2 error against the
    dense prediction per AR step (teacher-forced: the error of the approximation, no divergence)."""

    def __init__(self, dense, shadows: dict[str, object]) -> None:
        self.dense, self.shadows = dense, shadows
        self.errors: dict[str, list[list[float]]] = {name: [] for name in shadows}  # [AR step][step]
        self.rows = dense.rows

    def reset(self, condition=None) -> None:
        for d in (self.dense, *self.shadows.values()):
            d.reset(condition)
        for errs in self.errors.values():
            errs.clear()
        self._new_chunk = True

    def write(self, clean: torch.Tensor) -> None:
        for d in (self.dense, *self.shadows.values()):
            d.write(clean)
        self._new_chunk = True

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        want = self.dense.predict(x, t)
        for name, shadow in self.shadows.items():
            if self._new_chunk:
                self.errors[name].append([])
            got = shadow.predict(x, t)
            self.errors[name][-1].append(float((got - want).norm() / want.norm()))
        self._new_chunk = False
        return want


def teacher_forced(pipeline, prompts, seeds, frames, taus, max_count, segments) -> dict:
    """Text-to-video on the dense trajectory; each threshold's cache sees the dense clean frames."""
    from ca2vdm_cli.models.stdit.family import sample_video

    card, model = pipeline.card, pipeline.model
    rows = pipeline.family.model_rows(card.sampling, len(seeds))
    dense = pipeline.family.make_denoiser("cache", model, rows, card.sampling)
    shadows, stats = {}, {}
    for tau in taus:
        opts = AttentionOptions(kv_compress="tempcache", tempcache_threshold=tau,
                                tempcache_max_count=max_count)  # fmt: skip
        shadow = pipeline.family.make_denoiser("cache", model, rows, card.sampling.replace(attention=opts))
        shadow.cache.stats = stats[str(tau)] = AttentionStats()
        shadows[str(tau)] = shadow
    y, mask = pipeline.encode_prompts(prompts)
    engine = Shadowed(dense, shadows)
    with torch.inference_mode():
        for _ in sample_video(model, card.sampling, num_frames=frames, seeds=seeds, y=y, y_mask=mask,
                              engine=engine):  # fmt: skip
            pass
    out = {}
    for name, errs in engine.errors.items():
        per_chunk = np.array([np.mean(e) for e in errs])  # mean over denoising steps
        bounds = np.linspace(0, len(per_chunk), segments + 1).astype(int)
        out[name] = {
            "rel_l2_mean": float(per_chunk.mean()),
            "rel_l2_max_chunk": float(per_chunk.max()),
            "rel_l2_segments": [
                float(per_chunk[a:b].mean()) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            ],
            "merge_rate_per_block": stats[name].summary().get("merge_rate", {}),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="weights/sprites")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--thresholds", default="0.99,0.95,0.9")
    ap.add_argument("--max-count", type=int, default=None)
    ap.add_argument("--mode", choices=("image", "text"), default="image")
    ap.add_argument("--seed-base", type=int, default=10**7)
    ap.add_argument("--segments", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("stdit_sprites.json"))
    ap.add_argument("--teacher-forced", action="store_true", help="only the teacher-forced text-mode run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipeline = Pipeline.from_model_dir(args.model)
    card = pipeline.card
    seeds = list(range(args.seed_base, args.seed_base + args.prompts))
    scenes = [world.sample_scene(s) for s in seeds]
    prompts = [s.prompt for s in scenes]
    given = np.stack([world.render(s, 1)[0] for s in scenes]) if args.mode == "image" else None
    rows = pipeline.family.model_rows(card.sampling, len(seeds))
    taus = [float(t) for t in args.thresholds.split(",")]
    if args.teacher_forced:
        report = {"model": card.name, "mode": "text, teacher-forced", "prompts": args.prompts,
                  "frames": args.frames, "seeds": [seeds[0], seeds[-1]], "torch": torch.__version__,
                  "tempcache": teacher_forced(pipeline, prompts, seeds, args.frames, taus, args.max_count,
                                              args.segments)}  # fmt: skip
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        return

    def run(options: AttentionOptions | None) -> tuple[np.ndarray, dict]:
        sampling = card.sampling if options is None else card.sampling.replace(attention=options)
        denoiser = pipeline.denoiser("cache", sampling, len(seeds))  # the one generate_batch will use
        assert denoiser.rows == rows
        stats = AttentionStats()
        denoiser.cache.stats = stats if options is not None else None
        started = time.process_time()
        with torch.inference_mode():
            videos = generate_batch(pipeline, prompts, seeds, args.frames, sampling, given)
        info = {"cpu_seconds": time.process_time() - started, "kv_cache_bytes": denoiser.cache.nbytes}
        if options is not None:
            info["merge_rate_per_block"] = stats.summary().get("merge_rate", {})
            info["masked_slots_at_end_per_block"] = denoiser.cache.masked_fraction()
        return videos, info

    dense, dense_info = run(None)
    report = {
        "model": card.name,
        "mode": args.mode,
        "prompts": args.prompts,
        "frames": args.frames,
        "seeds": [seeds[0], seeds[-1]],
        "sampling": card.sampling.to_dict(),
        "torch": torch.__version__,
        "dense": dense_info,
        "tempcache": {},
    }
    for tau in taus:
        opts = AttentionOptions(kv_compress="tempcache", tempcache_threshold=tau,
                                tempcache_max_count=args.max_count)  # fmt: skip
        videos, info = run(opts)
        info.update(compare(dense, videos, args.segments))
        report["tempcache"][str(tau)] = info
        print(f"tau {tau}: psnr {info['psnr_mean']:.2f} dB, merge {info['merge_rate_per_block']}",
              file=sys.stderr, flush=True)  # fmt: skip
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

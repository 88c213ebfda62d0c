"""PSNR (data range 255) and SSIM of a video against a reference of the same seed and noise (dense
attention), per frame, averaged over the whole clip and per time segment (long rollouts diverge over time).
Usage: python benchmarks/tempcache/compare_videos.py DENSE.mp4 OTHER.mp4 [SEGMENTS] > out.json
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import torch.nn.functional as F

from ca2vdm_cli.media.video import read_frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two uint8 frames (H, W, 3) with an 11x11 Gaussian window (sigma 1.5), on luma."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    x = (torch.from_numpy(a).double() @ weights)[None, None]  # (1, 1, H, W)
    y = (torch.from_numpy(b).double() @ weights)[None, None]
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    g = (g / g.sum())[:, None] @ (g / g.sum())[None, :]
    win = g[None, None]
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mu_x**2
    syy = F.conv2d(y * y, win) - mu_y**2
    sxy = F.conv2d(x * y, win) - mu_x * mu_y
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def main(dense: str, other: str, segments: int = 4) -> dict:
    a, b = read_frames(dense), read_frames(other)  # (T, H, W, 3) uint8
    if a.shape != b.shape:
        raise SystemExit(f"the videos differ in shape: {a.shape} vs {b.shape}")
    p = [psnr(x, y) for x, y in zip(a, b, strict=True)]
    s = [ssim(x, y) for x, y in zip(a, b, strict=True)]
    bounds = np.linspace(0, len(a), segments + 1).astype(int)
    finite = lambda v: [x for x in v if np.isfinite(x)] or [float("inf")]  # noqa: E731
    return {
        "frames": len(a),
        "psnr_mean": float(np.mean(finite(p))),
        "ssim_mean": float(np.mean(s)),
        "segments": [
            {
                "frames": [int(lo), int(hi)],
                "psnr": float(np.mean(finite(p[lo:hi]))),
                "ssim": float(np.mean(s[lo:hi])),
            }
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ],
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 4)))

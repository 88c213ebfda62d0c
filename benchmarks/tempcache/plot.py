"""Plots of `measure.py`'s JSON: per-block self-attention time, step time and write time against the
frames generated (the replay run), one PNG per curve, dense and every option on the same axes, plus the
K/V bytes attention reads at the end. Needs matplotlib (`pip install ".[plot]"`).
Usage: python benchmarks/tempcache/plot.py benchmarks/tempcache/cpu.json benchmarks/tempcache/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CURVES = {"attention_s": "self-attention per call (CPU ms)", "step_s": "denoising step (CPU ms)",
          "write_s": "t = 0 write of a block (CPU ms)"}  # fmt: skip


def main(src: str, out_dir: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(src).read_text())
    results, meta = data["results"], data["meta"]
    block = len(meta["steps"]) and 3  # blocks of 3 latent frames
    out, written = Path(out_dir), []
    for key, label in CURVES.items():
        fig, ax = plt.subplots(figsize=(8, 4.5))
        colours = plt.get_cmap("tab20").colors
        for i, (name, r) in enumerate(results.items()):
            series = r["replay"]["per_block"][key]
            frames = [block * (i + 1) for i in range(len(series))]
            style = "-" if i % 2 == 0 else "--"
            ax.plot(frames, [1000 * s for s in series], style, color=colours[i % 20], label=name,
                    lw=2.5 if name == "dense" else 1.0)  # fmt: skip
        ax.set_xlabel("latent frames in the cache")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs frames: dense and each option (random weights, CPU)", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
        path = out / f"cpu-{key.removesuffix('_s')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = list(results)
    ax.barh(names, [results[n]["replay"]["kv_bytes_read"] / 1e6 for n in names])
    ax.set_xlabel("K/V bytes attention reads after 84 frames (MB)")
    fig.tight_layout()
    path = out / "cpu-kv-read.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [*written, path]


if __name__ == "__main__":
    for p in main(sys.argv[1], sys.argv[2]):
        print(p)

"""The bench's picture: seconds per AR step and peak memory per AR step, one line per engine. matplotlib is
an optional extra (`pip install 'ca2vdm[plot]'`); `check_available` lets the CLI refuse before running."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ca2vdm_cli.errors import Ca2VDMError

INSTALL_HINT = "pip install 'ca2vdm[plot]' (or pip install matplotlib)"


class PlotUnavailable(Ca2VDMError):
    """matplotlib is not installed."""


def check_available() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise PlotUnavailable(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}")


def write_plot(report: dict[str, Any], path: str | Path) -> Path:
    """Write the per-AR-step curves of a bench report (`Report.to_json()`) as a PNG."""
    check_available()
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    settings, env = report["settings"], report["environment"]
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    for engine in report["engines"]:
        steps = range(1, len(engine["step_s"]) + 1)
        line = ax_time.plot(steps, engine["step_s"], marker="o", label=f"{engine['engine']} (wall)")[0]
        if engine.get("step_cpu_s"):  # CPU runs: the process's CPU time, insensitive to other load
            ax_time.plot(
                steps, engine["step_cpu_s"], "--", color=line.get_color(), label=f"{engine['engine']} (CPU)"
            )
        working = [b / 2**20 for b in engine["step_peak_bytes"]]
        ax_mem.plot(steps, working, marker="o", label=engine["engine"])
    full = report["engines"][0]["first_full_step"] + 1
    for ax in (ax_time, ax_mem):
        ax.axvline(full, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(f"AR step (chunk of {settings['sampling']['chunk']} frames); dotted: queue full")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_time.set_ylabel("seconds per AR step")
    ax_time.set_ylim(bottom=0)
    kind = "CUDA allocated" if env["device"].startswith("cuda") else "CPU tensors, traced"
    ax_mem.set_ylabel(f"working memory per AR step, MiB\n(peak above the step's start; {kind})")
    ax_mem.set_ylim(bottom=0)
    steps = settings["sampling"]["steps"]
    fig.suptitle(
        f"{settings['model']} · {settings['generated_frames']} frames · {steps} steps · "
        f"{env['device_name']} · {settings['dtype']} · {settings['acceleration']}",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

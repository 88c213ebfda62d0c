"""Progress of a batch on stderr: an overall bar (items done, ok / skipped / failed, ETA) with the current
item's frames under it on a terminal; plain lines otherwise (item started, each finished chunk, item
finished), because Rich shows nothing until a bar stops when stderr is not a terminal; nothing with
--quiet. Under torchrun every line starts with the rank. stdout is never touched (`redirect_stdout=False`),
so the JSON result lines printed meanwhile stay on stdout.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from ca2vdm_cli.cli.progress import GIB
from ca2vdm_cli.units import format_seconds

if TYPE_CHECKING:  # the pipeline imports torch; this module must stay light
    from ca2vdm_cli.engine.request import ProgressEvent


class BatchReporter:
    """Counts finished items and renders the progress in `rich`, `plain` or `quiet` mode."""

    def __init__(self, mode: str, total: int, rank_tag: str = "", device: Any = None) -> None:
        from rich.console import Console

        if mode not in ("rich", "plain", "quiet"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode, self.total, self.tag, self.device = mode, total, rank_tag, device
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}
        self.started = time.perf_counter()
        self._progress: Any = None
        self._overall: Any = None
        self._item: Any = None

    @classmethod
    def for_stderr(cls, quiet: bool, total: int, rank_tag: str = "", device: Any = None) -> BatchReporter:
        mode = "quiet" if quiet else "rich" if sys.stderr.isatty() else "plain"
        return cls(mode, total, rank_tag, device)

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    # ------------------------------------------------------------------ lines
    def line(self, message: str) -> None:
        if self.mode == "quiet":
            return
        console = self._progress.console if self._progress is not None else self.console
        console.print(f"{self.tag}{message}", markup=False)

    def _position(self) -> str:
        return f"[{self.done + 1}/{self.total}]"

    # ------------------------------------------------------------------ the batch
    def start(self) -> None:
        if self.mode != "rich":
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=self.console,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._progress.start()
        self._overall = self._progress.add_task(
            f"{self.tag}batch", total=self.total, info=self._counts_text()
        )

    def begin_item(self, label: str, message: str) -> ItemProgress:
        """An item starts rendering; `message` says what (path, frames, seed, resume point)."""
        self.line(f"{self._position()} {label}: {message}")
        return ItemProgress(self, self._position())

    def finish_item(self, result: dict[str, Any]) -> None:
        """An item is done (ok, skipped or failed): count it and say so in one line."""
        status = result["status"]
        self.counts[status] += 1
        position = f"[{self.done}/{self.total}]"
        if status == "failed":
            error = str(result["error"]).removeprefix(f"line {result['line']}: ")  # jobs.py errors name it
            self.line(f"{position} failed line {result['line']}: {error}")
        elif status == "skipped":
            self.line(f"{position} skipped {result['path']} (already complete)")
        else:
            self.line(
                f"{position} ok {result['path']}: {result['frames']} frames in {result['seconds']:.1f} s"
            )
        if self._progress is not None:
            self._progress.update(self._overall, completed=self.done, info=self._counts_text())

    def summary(self) -> str:
        c = self.counts
        return (
            f"batch: {self.done} of {self.total} items, {c['ok']} ok, {c['skipped']} skipped, {c['failed']} "
            f"failed in {format_seconds(time.perf_counter() - self.started)}"
        )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _counts_text(self) -> str:
        c = self.counts
        return (
            f"{self.done}/{self.total} items · {c['ok']} ok · {c['skipped']} skipped · {c['failed']} failed"
        )


class ItemProgress:
    """The per-render reporter `render.render_video` drives (on_event / line / stop) for one batch item."""

    def __init__(self, batch: BatchReporter, position: str) -> None:
        self.batch, self.position = batch, position
        self._task: Any = None
        self._started: float | None = None
        self._first_done = 0

    def line(self, message: str) -> None:
        self.batch.line(f"{self.position} {message}")

    def on_event(self, ev: ProgressEvent) -> None:
        if ev.stage not in ("denoise", "chunk"):  # encoding and hand-over marks
            return
        if self.batch.mode == "quiet":
            return
        if self._started is None:
            self._started, self._first_done = time.perf_counter(), ev.frames_done
        elapsed = time.perf_counter() - self._started
        rate = (ev.frames_done - self._first_done) / elapsed if elapsed > 0 else 0.0
        progress = self.batch._progress
        if progress is None:  # plain: one line per finished chunk
            if ev.stage == "chunk":
                eta = (ev.frames_total - ev.frames_done) / rate if rate > 0 else 0.0
                self.line(
                    f"AR step {ev.chunk + 1}/{ev.num_chunks} · {ev.frames_done}/{ev.frames_total} frames · "
                    f"{rate:.2f} frames/s · ETA {format_seconds(eta)}{self._gpu_text(' · ')}"
                )
            return
        if self._task is None:
            self._task = progress.add_task("  item", total=ev.frames_total, info="")
        partial = ev.chunk_frames * ev.step / ev.num_steps if ev.stage == "denoise" else 0.0
        info = (
            f"{ev.frames_done}/{ev.frames_total} frames · AR {ev.chunk + 1}/{ev.num_chunks} · "
            f"step {ev.step}/{ev.num_steps} · {rate:.1f} fps{self._gpu_text(' · ')}"
        )
        progress.update(self._task, completed=ev.frames_done + partial, info=info)

    def stop(self) -> None:
        """The render ended (finished or failed): drop the item's bar, keep the overall one."""
        if self._task is not None and self.batch._progress is not None:
            self.batch._progress.remove_task(self._task)
        self._task = None

    def _gpu_text(self, sep: str) -> str:
        from ca2vdm_cli.engine.runtime import gpu_memory

        if self.batch.device is None:
            return ""
        reading = gpu_memory(self.batch.device)
        return (
            ""
            if reading is None
            else f"{sep}GPU {reading.current / GIB:.1f} GiB (peak {reading.peak / GIB:.1f})"
        )

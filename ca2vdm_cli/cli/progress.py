"""Progress and chatter on stderr for long-running commands.

Three modes: `rich` (a live bar when stderr is a terminal: frames done/total, AR step k/K, denoising step,
frames/s, ETA, GPU memory now/peak on CUDA), `plain` (one log line per finished chunk, because Rich shows
nothing until a bar stops when stderr is not a terminal) and `quiet`. stdout is never touched: the
Progress is built with `redirect_stdout=False` so results printed meanwhile stay on stdout
(shared/docs/environment.md §8).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from ca2vdm_cli.units import format_seconds

if TYPE_CHECKING:  # the pipeline imports torch; this module must stay light
    from ca2vdm_cli.engine.request import ProgressEvent

GIB = 2**30


class Reporter:
    """Receives pipeline progress events and messages; renders them according to the mode."""

    def __init__(self, mode: str, device: Any = None) -> None:
        from rich.console import Console

        if mode not in ("rich", "plain", "quiet"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        self.device = device
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self._progress: Any = None
        self._task: Any = None
        self._started: float | None = None
        self._first_done = 0

    @classmethod
    def for_stderr(cls, quiet: bool, device: Any = None) -> Reporter:
        if quiet:
            return cls("quiet", device)
        return cls("rich" if sys.stderr.isatty() else "plain", device)

    # ------------------------------------------------------------------ messages
    def line(self, message: str) -> None:
        """A line of information (up-front summary, final summary); dropped in quiet mode."""
        if self.mode == "quiet":
            return
        if self._progress is not None:
            self._progress.console.print(message, markup=False)
        else:
            self.console.print(message, markup=False)

    def note(self, message: str) -> None:
        """Something the user should know about their input (resize, conversion, ignored prompt)."""
        self.line(f"note: {message}")

    # ------------------------------------------------------------------ progress
    def start(self, frames_total: int, frames_done: int = 0) -> None:
        self._started = time.perf_counter()
        self._first_done = frames_done
        if self.mode != "rich":
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        columns: list[Any] = [
            BarColumn(bar_width=24),
            TextColumn("{task.fields[frames]}"),
            TextColumn("{task.fields[ar]}"),
            TextColumn("{task.fields[step]}"),
            TextColumn("{task.fields[fps]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        ]
        if self.device is not None and self.device.type == "cuda":
            columns.append(TextColumn("{task.fields[gpu]}"))
        self._progress = Progress(
            *columns, console=self.console, redirect_stdout=False, redirect_stderr=False
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "generate",
            total=frames_total,
            completed=frames_done,
            frames=f"{frames_done}/{frames_total} frames",
            ar="",
            step="",
            fps="",
            gpu=self._gpu_text(),
        )

    def on_event(self, ev: ProgressEvent) -> None:
        if ev.stage not in ("denoise", "chunk"):  # encoding and hand-over marks
            return
        if self.mode == "quiet":
            return
        if self._started is None:
            self.start(ev.frames_total, ev.frames_done)
        if self.mode == "plain":
            if ev.stage == "chunk":
                self._plain_line(ev)
            return
        partial = ev.chunk_frames * ev.step / ev.num_steps if ev.stage == "denoise" else 0.0
        self._progress.update(
            self._task,
            completed=ev.frames_done + partial,
            frames=f"{ev.frames_done}/{ev.frames_total} frames",
            ar=f"AR {ev.chunk + 1}/{ev.num_chunks}",
            step=f"step {ev.step}/{ev.num_steps}",
            fps=f"{self.frames_per_second(ev.frames_done):.1f} fps",
            gpu=self._gpu_text(),
        )

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def elapsed(self) -> float:
        return 0.0 if self._started is None else time.perf_counter() - self._started

    def frames_per_second(self, frames_done: int) -> float:
        elapsed = self.elapsed()
        return (frames_done - self._first_done) / elapsed if elapsed > 0 else 0.0

    def _plain_line(self, ev: ProgressEvent) -> None:
        rate = self.frames_per_second(ev.frames_done)
        eta = (ev.frames_total - ev.frames_done) / rate if rate > 0 else 0.0
        parts = [
            f"AR step {ev.chunk + 1}/{ev.num_chunks}",
            f"{ev.frames_done}/{ev.frames_total} frames",
            f"{rate:.2f} frames/s",
            f"ETA {format_seconds(eta)}",
        ]
        gpu = self._gpu_text()
        if gpu:
            parts.append(gpu)
        self.line(" · ".join(parts))

    def _gpu_text(self) -> str:
        from ca2vdm_cli.engine.runtime import gpu_memory

        if self.device is None:
            return ""
        reading = gpu_memory(self.device)
        if reading is None:
            return ""
        return f"GPU {reading.current / GIB:.1f} GiB (peak {reading.peak / GIB:.1f})"


# ----------------------------------------------------------------------------- logging
class _LowerLevelFormatter(logging.Formatter):
    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.prefix}{record.levelname.lower()}: {record.getMessage()}"


def configure_logging(debug: bool, quiet: bool, prefix: str = "") -> None:
    """Route the package's log records to stderr: warnings by default, debug with --debug, errors with -q.
    `prefix` starts every line (the rank of a multi-process batch)."""
    logger = logging.getLogger("ca2vdm_cli")
    for handler in [h for h in logger.handlers if getattr(h, "ca2vdm_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.ca2vdm_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(_LowerLevelFormatter(prefix))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING)
    logger.propagate = False


def quiet_libraries(debug: bool) -> None:
    """Silence transformers/diffusers progress bars and chatter (accelerate hints, weight-loading bars)
    unless --debug: stderr is for our progress and for errors."""
    if debug:
        return
    import diffusers
    import transformers

    for lib in (transformers, diffusers):
        lib.utils.logging.disable_progress_bar()
        lib.utils.logging.set_verbosity_error()

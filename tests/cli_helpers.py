"""Helpers for CLI tests: run `ca2vdm` in-process through `main()` (the real error formatting and exit
codes) or as a real subprocess, and make small input images."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`ca2vdm ARGS` in this process; returns (exit code, stdout, stderr)."""
    from ca2vdm_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["ca2vdm", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else int(code)), out, err


def cli_env(threads: int = 1) -> dict[str, str]:
    """The test environment for a child process. One thread: with the 2 cores shared by parallel test
    processes (or other jobs), OpenMP's spinning threads oversubscribe the CPU and a tiny run that takes
    0.3 s alone can take 30 s."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "OMP_NUM_THREADS": str(threads),
    }


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m ca2vdm_cli ARGS` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "ca2vdm_cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=cli_env(),
        timeout=timeout,
    )


class LiveProcess:
    """A `ca2vdm` subprocess whose stderr lines can be awaited while it runs."""

    def __init__(self, *args: str, threads: int = 1) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ca2vdm_cli", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=cli_env(threads),
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 240) -> str:
        """Block until a stderr line contains `text`; fail if the process ends first."""
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"process ended before {text!r}:\n{''.join(self.stderr)}")
            if text in line:
                return line

    def finish(self, timeout: float = 240) -> tuple[int, str, str]:
        """Wait for the exit (stdout is tiny, so its pipe cannot fill); returns (code, stdout, stderr)."""
        self.proc.wait(timeout=timeout)
        self._pump_thread.join(timeout=30)
        assert self.proc.stdout is not None
        return self.proc.returncode, self.proc.stdout.read(), "".join(self.stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def save_image(path: Path, height: int = 32, width: int = 32, mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 4 if mode == "RGBA" else 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGBA" if mode == "RGBA" else "RGB").convert(mode).save(path)
    return path

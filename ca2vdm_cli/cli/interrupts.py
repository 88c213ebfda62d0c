"""Clean stops for long renders: SIGINT (Ctrl-C) and SIGTERM only record the request, and the render loop
calls `check()` at safe points (between denoising steps, after writing a chunk), so an output file is never
cut in the middle of a frame. A second Ctrl-C stops at once."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Stopped(Exception):
    """A stop was requested by SIGINT (Ctrl-C) or SIGTERM; raised at a safe point of the render loop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopRequests:
    """SIGINT/SIGTERM handlers that only record the request; `check()` raises `Stopped` between steps, so
    the video is never cut in the middle of a frame. A second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise Stopped(self.signum)

    @contextmanager
    def installed(self) -> Iterator[None]:
        previous = {}
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread (embedded use): leave signals alone
            pass
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

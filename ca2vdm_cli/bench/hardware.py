"""What the machine is and how fast it can go, for benchmarks: a description of the device and software,
peak-memory probes that can be reset between phases (CUDA max allocated; host peak RSS through
/proc/self/clear_refs on Linux), a trace of live CPU tensor bytes (host RSS mostly shows what the C
allocator keeps, not what a step needs), a timer that does not synchronise per step, and a measured
matmul peak (the denominator of model-FLOPs utilisation). Nothing runs at import time."""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import platform
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def describe(device: torch.device) -> dict[str, Any]:
    """Device, software and host-load facts that a benchmark result depends on."""
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": _load_average(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=props.name,
            cuda=torch.version.cuda,
            capability=f"{props.major}.{props.minor}",
            device_memory_bytes=props.total_memory,
        )
    else:
        info["device_name"] = info["cpu"]
    return info


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    match = re.search(r"model name\s*:\s*(.+)", text)
    return match.group(1).strip() if match else platform.processor() or "unknown CPU"


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak bytes since the last `reset()`: CUDA max allocated on a GPU, the process's peak resident set
    (VmHWM, reset through /proc/self/clear_refs) on the CPU. Where the host peak cannot be reset, the
    current RSS read at each `peak()` call stands in for it (`kind` says which)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.kind = "cuda_max_allocated"
        else:
            self.kind = "host_peak_rss" if _can_reset_hwm() else "host_rss_sampled"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind == "host_peak_rss":
            _CLEAR_REFS.write_text("5")

    def peak(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return _status_kib("VmHWM" if self.kind == "host_peak_rss" else "VmRSS") * 1024

    def current(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return _status_kib("VmRSS") * 1024


def _status_kib(field: str) -> int:
    try:
        match = re.search(rf"{field}:\s+(\d+)", _STATUS.read_text())
    except OSError:
        return 0
    return int(match.group(1)) if match else 0


def _can_reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") > 0


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration (for chatter printed by native code)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class TensorTrace:
    """Peak bytes of live CPU tensors above each window's start, from the profiler's allocation events.
    Exact and independent of the C allocator, but the profiler slows the traced code: use it on untimed
    runs. Usage: `with trace: ... with trace.window(name): ...`, then `trace.peaks()`."""

    def __init__(self) -> None:
        self._profile: Any = None
        self._names: list[str] = []

    def __enter__(self) -> TensorTrace:
        from torch.profiler import ProfilerActivity, profile

        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _native_stderr_silenced():  # kineto prints profiler_start/stop lines from C++
            self._profile.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        with _native_stderr_silenced():
            self._profile.__exit__(*exc)

    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[None]:
        from torch.profiler import record_function

        self._names.append(name)
        with record_function(name):
            yield

    def peaks(self) -> dict[str, int]:
        events = self._profile.profiler.kineto_results.events()
        cpu = torch._C._autograd.DeviceType.CPU
        allocations = sorted(
            (e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]" and e.device_type() == cpu
        )
        times = [t for t, _ in allocations]
        live = list(itertools.accumulate(n for _, n in allocations))  # bytes since tracing began
        spans = {}
        for e in events:
            if e.name() in self._names and e.name() not in spans:
                spans[e.name()] = (e.start_ns(), e.end_ns())
        out = {}
        for name in self._names:
            start, end = spans.get(name, (0, 0))
            first, last = bisect.bisect_left(times, start), bisect.bisect_right(times, end)
            base = live[first - 1] if first > 0 else 0
            out[name] = max([0, *(v - base for v in live[first:last])])
        return out


# ----------------------------------------------------------------------------- timing
class StepTimer:
    """Wall time of consecutive intervals. On CUDA the boundaries are events on the current stream, read
    once at the end, so timing adds no host synchronisation between steps; on the CPU, perf_counter, and
    the process's CPU time too (robust to other load on a shared machine: time this process computed)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._marks: list[Any] = []
        self._cpu: list[float] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())
            self._cpu.append(time.process_time())

    def intervals(self) -> list[float]:
        """Seconds between consecutive marks (synchronises on CUDA)."""
        if self.cuda:
            if self._marks:
                self._marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self._marks, self._marks[1:], strict=False)]
        return [b - a for a, b in zip(self._marks, self._marks[1:], strict=False)]

    def cpu_intervals(self) -> list[float] | None:
        """Process CPU seconds between consecutive marks (all threads), or None on CUDA."""
        if self.cuda:
            return None
        return [b - a for a, b in zip(self._cpu, self._cpu[1:], strict=False)]


# ----------------------------------------------------------------------------- throughput
def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Measured dense matmul throughput in FLOP/s (square matrices: 8192 on CUDA, 1024 on the CPU), the
    reference for model-FLOPs utilisation. Runs about `seconds`."""
    n = 8192 if device.type == "cuda" else 1024
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    torch.matmul(a, b)  # warm-up
    synchronize(device)
    iterations, start = 0, time.perf_counter()
    while True:
        torch.matmul(a, b)
        iterations += 1
        if iterations % 4 == 0:
            synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return 2 * n**3 * iterations / elapsed

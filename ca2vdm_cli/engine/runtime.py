"""Where and how a run executes: `--device auto|cpu|cuda[:i]` and `--dtype auto|fp32|bf16|fp16` resolution,
memory readings (GPU current/peak, host peak RSS), and the translation of out-of-memory failures into an
error that names the knob to turn. Nothing here runs at import time."""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

import torch

from ca2vdm_cli.errors import Ca2VDMError, InputError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class OutOfMemory(Ca2VDMError):
    """The device ran out of memory; the message says which setting lowers the need."""


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` = the current CUDA device if one is usable, else the CPU. `cuda[:i]` must exist."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else _cpu()
    if name == "cpu":
        return _cpu()
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else "no usable GPU was found"
            raise InputError(f"--device {name}: CUDA is not available ({build}); use --device cpu")
        index = torch.cuda.current_device() if name == "cuda" else _device_index(name)
        count = torch.cuda.device_count()
        if index >= count:
            raise InputError(
                f"--device {name}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
            )
        return torch.device("cuda", index)
    raise InputError(f"--device {name!r} is not one of auto, cpu, cuda, cuda:<index>")


def _cpu() -> torch.device:
    return torch.device("cpu")


def _device_index(name: str) -> int:
    try:
        index = int(name.split(":", 1)[1])
    except ValueError:
        raise InputError(f"--device {name!r}: the CUDA index must be an integer, e.g. cuda:0") from None
    if index < 0:
        raise InputError(f"--device {name!r}: the CUDA index must be >= 0")
    return index


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` = bf16 on CUDA (fp16 on GPUs without bf16), fp32 on the CPU."""
    name = name.strip().lower()
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise InputError(f"--dtype {name!r} is not one of auto, {', '.join(DTYPES)}")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError(f"--dtype bf16: {torch.cuda.get_device_name(device)} has no bf16; use --dtype fp16")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


@dataclass(frozen=True)
class MemoryReading:
    """Bytes in use now and at peak; `total` is the device capacity (GPU) or None (host)."""

    current: int
    peak: int
    total: int | None = None


def gpu_memory(device: torch.device) -> MemoryReading | None:
    """Allocated / peak-allocated / total bytes of a CUDA device; None on the CPU."""
    if device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    return MemoryReading(torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device), total)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM (torch.OutOfMemoryError) or a failed host allocation."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def out_of_memory_error(
    exc: BaseException, device: torch.device, dtype: torch.dtype, cache_frames: int, chunk: int, stage: str
) -> OutOfMemory:
    """One line saying where memory ran out and which settings lower the need, from most to least useful."""
    where = "GPU" if device.type == "cuda" else "host"
    reading = gpu_memory(device)
    used = ""
    if reading is not None and reading.total:
        used = f" ({reading.peak / 2**30:.1f} of {reading.total / 2**30:.1f} GiB at peak)"
    knobs = [f"--cache-frames {max(1, cache_frames // 2)} (now {cache_frames})"]
    if chunk > 1:
        knobs.append(f"--chunk {max(1, chunk // 2)} (now {chunk})")
    if dtype == torch.float32:
        knobs.append("--dtype bf16" if device.type == "cuda" else "--dtype bf16 (halves weights and cache)")
    if device.type == "cuda":
        knobs.append("or --device cpu")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OutOfMemory(
        f"out of {where} memory while {stage}{used}: {first[:160]}; lower the need with {', '.join(knobs)}"
    )

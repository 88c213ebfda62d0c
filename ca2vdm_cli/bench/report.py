"""The numbers of a bench: one timed run, an engine's runs summarised over repeats (median or min per AR
step), speedups against the recompute baselines, and the report as JSON."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from ca2vdm_cli.models.costs import RunFlops


@dataclass
class Run:
    """One timed run of one engine (seconds, bytes)."""

    step_s: list[float]
    step_cpu_s: list[float] | None  # process CPU time per AR step (CPU device only)
    step_peak_bytes: list[int] | None  # per AR step, above the step's start (None: not measured)
    peak_bytes: int  # CUDA max allocated / host peak RSS over the run
    e2e_s: float
    e2e_first_chunk_s: float
    text_encode_s: float | None
    vae_encode_s: float | None
    vae_decode_s: float | None


@dataclass
class EngineResult:
    engine: str
    runs: list[Run]
    flops: RunFlops
    kv_cache_bytes: int
    kv_scratch_bytes: int
    stat: str = "median"
    memory_runs: list[Run] = field(default_factory=list)  # untimed traced runs (CPU working memory)
    summary: dict[str, Any] = field(default_factory=dict)


def _stat(values: list[float], stat: str) -> float:
    return min(values) if stat == "min" else statistics.median(values)


def summarise(result: EngineResult, frames: int, first_full: int, peak_flops: float | None) -> dict[str, Any]:
    """The numbers a reader wants, from the runs (per AR step: the median or min over repeats)."""
    runs, stat = result.runs, result.stat
    steps = [_stat([r.step_s[k] for r in runs], stat) for k in range(len(runs[0].step_s))]
    measured = [r.step_peak_bytes for r in [*runs, *result.memory_runs] if r.step_peak_bytes is not None]
    step_peaks = [max(m[k] for m in measured) for k in range(len(steps))] if measured else [0] * len(steps)
    denoise_s = _stat([sum(r.step_s) for r in runs], stat)
    cpu_runs = [r.step_cpu_s for r in runs if r.step_cpu_s is not None]
    cpu = _stat([sum(c) for c in cpu_runs], stat) if cpu_runs else None
    step_cpu = [_stat([c[k] for c in cpu_runs], stat) for k in range(len(steps))] if cpu_runs else None
    e2e_s = _stat([r.e2e_s for r in runs], stat)
    achieved = result.flops.total / denoise_s if denoise_s > 0 else None
    optional = {
        name: None if getattr(runs[0], name) is None else _stat([getattr(r, name) for r in runs], stat)
        for name in ("text_encode_s", "vae_encode_s", "vae_decode_s")
    }
    full = min(first_full, len(steps) - 1)
    return {
        "denoise_s": denoise_s,
        "denoise_cpu_s": cpu,
        "e2e_s": e2e_s,
        "denoise_fps": frames / denoise_s,
        "e2e_fps": frames / e2e_s,
        "first_chunk_s": _stat([r.step_s[0] for r in runs], stat),
        "e2e_first_chunk_s": _stat([r.e2e_first_chunk_s for r in runs], stat),
        "step_s": steps,
        "step_peak_bytes": step_peaks,
        "peak_bytes": max(r.peak_bytes for r in runs),
        "last_over_first_step": steps[-1] / steps[0],
        "first_full_step": full,
        "last_over_first_full_step": steps[-1] / steps[full],
        "step_cpu_s": step_cpu,
        "last_over_first_full_step_cpu": None if step_cpu is None else step_cpu[-1] / step_cpu[full],
        "steady_peak_ratio": max(step_peaks[full:]) / max(1, min(step_peaks[full:])),
        "flops": result.flops.total,
        "denoise_step_flops": result.flops.denoise_step,
        "achieved_flops_per_s": achieved,
        "mfu": None if achieved is None or not peak_flops else achieved / peak_flops,
        **optional,
    }


@dataclass
class Report:
    environment: dict[str, Any]
    settings: dict[str, Any]
    engines: list[EngineResult]
    per_step_cache: dict[str, Any] | None
    speedups: dict[str, dict[str, float]]

    def to_json(self) -> dict[str, Any]:
        engines = []
        for r in self.engines:
            d = {"engine": r.engine, **r.summary, "kv_cache_bytes": r.kv_cache_bytes}
            d["kv_scratch_bytes"] = r.kv_scratch_bytes
            d["flops_per_ar_step"] = r.flops.per_ar_step
            d["runs"] = [asdict(run) for run in r.runs]
            engines.append(d)
        return {
            "environment": self.environment,
            "settings": self.settings,
            "engines": engines,
            "per_step_cache": self.per_step_cache,
            "speedups": self.speedups,
        }


def speedups(results: list[EngineResult]) -> dict[str, dict[str, dict[str, float]]]:
    """speedups[baseline][engine] = {"denoise": baseline time / engine time, "e2e": ..., and on the CPU
    "denoise_cpu": the same ratio of process CPU times}."""
    by_name = {r.engine: r.summary for r in results}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for baseline in ("recompute", "recompute-full", "cache-dense"):
        if baseline in by_name:
            base = by_name[baseline]
            out[baseline] = {}
            for name, s in by_name.items():
                ratios = {"denoise": base["denoise_s"] / s["denoise_s"], "e2e": base["e2e_s"] / s["e2e_s"]}
                if s["denoise_cpu_s"] and base["denoise_cpu_s"]:
                    ratios["denoise_cpu"] = base["denoise_cpu_s"] / s["denoise_cpu_s"]
                out[baseline][name] = ratios
    return out

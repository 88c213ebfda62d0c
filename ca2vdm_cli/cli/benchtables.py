"""Rich tables of a bench report (`Report.to_json()`): speed, memory and FLOPs, and the per-AR-step curve.
Printed on stderr; stdout stays free for results."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from ca2vdm_cli.units import format_bytes


def human_bytes(n: float | None) -> str:
    return format_bytes(n, digits=2)


def human_flops(n: float | None, suffix: str = "") -> str:
    if n is None:
        return "—"
    for unit, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}FLOP{suffix}"
    return f"{n:.0f} FLOP{suffix}"


def _s(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def print_report(console: Console, report: dict[str, Any]) -> None:
    env, settings, speedups = report["environment"], report["settings"], report["speedups"]
    load = env.get("load_average"), env.get("end_load_average")
    console.print(
        f"[bold]{env['device_name']}[/bold] · torch {env['torch']} · {settings['dtype']} · "
        f"{settings['acceleration']} · {env['torch_threads']} threads · load {load[0]} → {load[1]} · "
        f"warm-up excluded ({settings['warmup_steps']} steps/chunk) · {settings['repeat']} run(s), "
        f"{settings['stat']} · matmul peak {human_flops(env.get('matmul_peak_flops_per_s'), '/s')}"
    )
    (height, width), sampling = settings["resolution"], settings["sampling"]
    console.print(
        f"{settings['model']} ({settings['weights']}) · {height}x{width} · "
        f"{settings.get('given_frames', 1)} given + "
        f"{settings['generated_frames']} generated frames in chunks of {sampling['chunk']} · "
        f"{sampling['steps']} {sampling['sampler']} steps · queue {sampling['cache_frames']} frames"
    )
    console.print(_speed_table(report["engines"], speedups))
    console.print(_memory_table(report["engines"], report["per_step_cache"], env))
    console.print(_curve_table(report["engines"]))


def _ratios(r: dict[str, float]) -> str:
    text = f"{r['denoise']:.2f} / {r['e2e']:.2f}"
    return text + (f" ({r['denoise_cpu']:.2f} CPU)" if "denoise_cpu" in r else "")


def _speed_table(engines: list[dict[str, Any]], speedups: dict[str, Any]) -> Table:
    table = Table(title="speed (denoise = the transformer loop incl. cache writes; e2e adds text + VAE)")
    cpu = engines[0]["denoise_cpu_s"] is not None
    columns = [
        "engine",
        "denoise s",
        *(["CPU s"] if cpu else []),
        "frames/s denoise",
        "e2e s",
        "frames/s e2e",
    ]
    for name in [*columns, "1st chunk s"]:
        table.add_column(name, justify="right" if name != "engine" else "left")
    for base in speedups:
        table.add_column(f"× vs {base}", justify="right")
    table.add_column("last/first step (queue full)", justify="right")
    for e in engines:
        ratios = [_ratios(speedups[b][e["engine"]]) for b in speedups]
        table.add_row(
            e["engine"],
            _s(e["denoise_s"]),
            *([_s(e["denoise_cpu_s"])] if cpu else []),
            f"{e['denoise_fps']:.2f}",
            _s(e["e2e_s"]),
            f"{e['e2e_fps']:.2f}",
            f"{e['first_chunk_s']:.2f} / {e['e2e_first_chunk_s']:.2f}",
            *ratios,
            f"{e['last_over_first_full_step']:.2f}"
            + (f" ({e['last_over_first_full_step_cpu']:.2f} CPU)" if cpu else ""),
        )
    table.caption = "1st chunk: denoise / e2e · speedups: denoise / e2e" + (
        " · CPU s: process CPU time of the denoise loop (all threads; insensitive to other load)"
        if cpu
        else ""
    )
    return table


def _memory_table(engines: list[dict[str, Any]], per_step_cache: dict[str, Any] | None, env: dict) -> Table:
    peak_kind = {"cuda_max_allocated": "CUDA max allocated"}.get(env["memory"]["peak"], "host peak RSS")
    table = Table(title="memory and FLOPs")
    columns = (
        "engine",
        f"peak ({peak_kind})",
        "step working memory: queue full → last",
        "KV cache",
        "FLOPs",
        "FLOP/s",
        "MFU",
    )
    for name in columns:
        table.add_column(name, justify="right" if name != "engine" else "left")
    for e in engines:
        peaks = e["step_peak_bytes"]
        mfu = "—" if e["mfu"] is None else f"{100 * e['mfu']:.1f} %"
        table.add_row(
            e["engine"],
            human_bytes(e["peak_bytes"]),
            f"{human_bytes(peaks[e['first_full_step']])} → {human_bytes(peaks[-1])}",
            human_bytes(e["kv_cache_bytes"]) if e["kv_cache_bytes"] else "—",
            human_flops(e["flops"]),
            human_flops(e["achieved_flops_per_s"], "/s"),
            mfu,
        )
    if per_step_cache is not None:
        table.add_row(
            "per-step-cache (accounting)",
            "—",
            "—",
            human_bytes(per_step_cache["kv_cache_bytes"]),
            "—",
            "—",
            "—",
        )
    steps = per_step_cache["denoising_steps"] if per_step_cache else "—"
    table.caption = (
        f"step working memory: {env['memory']['per_step']} · per-step-cache: one K|V slice per denoising "
        f"step (Live2Diff-style) = {steps} × the shared cache · MFU against the measured matmul peak"
    )
    return table


def _curve_table(engines: list[dict[str, Any]]) -> Table:
    table = Table(title="per AR step: seconds (write previous chunk + denoise this one) · working memory")
    table.add_column("AR step", justify="right")
    cpu = engines[0]["step_cpu_s"] is not None
    for e in engines:
        table.add_column(f"{e['engine']} s" + (" (CPU s)" if cpu else ""), justify="right")
    for e in engines:
        table.add_column(f"{e['engine']} mem", justify="right")
    for k in range(len(engines[0]["step_s"])):
        times = [f"{e['step_s'][k]:.3f}" + (f" ({e['step_cpu_s'][k]:.3f})" if cpu else "") for e in engines]
        peaks = [human_bytes(e["step_peak_bytes"][k]) for e in engines]
        table.add_row(str(k + 1), *times, *peaks)
    return table

"""`ca2vdm bench`: time the engines side by side in one process (warm-up excluded) and report speed,
memory, FLOPs and speedups as Rich tables on stderr, optionally as JSON and a PNG of the per-step curve."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ca2vdm_cli.cli import app, options
from ca2vdm_cli.errors import InputError

EPILOG = (
    "Examples: ca2vdm bench --arch small --steps 50 --plot curve.png (CPU, no files); "
    "ca2vdm bench --arch xl2-256 --device cuda --compile --cuda-graphs --json xl2.json "
    "(GPU, random weights); "
    "ca2vdm bench --model DIR --engines cache,recompute."
)


@app.command(epilog=EPILOG)
def bench(
    model: Annotated[
        str | None,
        typer.Option(help="Model directory, the embedded 'sprites' (default) or a preset name."),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            help="Built-in architecture with random weights, no files: xl2-256, xl2-512, small, tiny, "
            "wan-tiny, wan-1.3b."
        ),
    ] = None,
    random_weights: Annotated[
        bool, typer.Option("--random-weights", help="Random transformer weights (timing needs no training).")
    ] = False,
    frames: Annotated[
        int,
        typer.Option(
            min=1,
            help="Frames generated after the one given frame (80 = 10 AR steps of 8); causal Wan: latent "
            "frames from text alone, rounded up to whole blocks.",
        ),
    ] = 80,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Denoising steps per chunk (default: the model's).")
    ] = None,
    engines: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated engines: cache, recompute, recompute-full (CausalSTDiT); cache, recompute "
            "(causal Wan). [default: all of the model's]"
        ),
    ] = None,
    window: options.Window = None,
    sink_frames: options.SinkFrames = None,
    positions: options.Positions = None,
    kv_compress: options.KvCompress = None,
    tempcache_threshold: options.TempcacheThreshold = None,
    tempcache_budget: options.TempcacheBudget = None,
    tempcache_max_count: options.TempcacheMaxCount = None,
    sparse_cross: options.SparseCross = None,
    cross_topk: options.CrossTopk = None,
    sparse_self: options.SparseSelf = None,
    topk_density: options.TopkDensity = None,
    lsh_bits: options.LshBits = None,
    compare_dense: Annotated[
        bool,
        typer.Option(
            "--compare-dense",
            help="With --kv-compress / --sparse-*: also time the cache engine with dense attention, "
            "side by side in the same run (engine 'cache-dense').",
        ),
    ] = False,
    device: options.Device = None,
    dtype: options.Dtype = None,
    compile: options.Compile = False,
    cuda_graphs: options.CudaGraphs = False,
    json_out: Annotated[
        str | None,
        typer.Option("--json", metavar="FILE", help="Write the full report as JSON ('-': stdout)."),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Write a PNG of the per-AR-step curves (matplotlib).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the noise, the given frame and random weights.")] = 0,
    repeat: Annotated[int, typer.Option(min=1, help="Timed runs per engine, interleaved.")] = 1,
    stat: Annotated[str, typer.Option(help="Statistic over repeats: median or min.")] = "median",
    warmup: Annotated[
        int, typer.Option(min=0, help="Denoising steps per chunk of the untimed warm-up run (0: none).")
    ] = 2,
    prompt: Annotated[str, typer.Option(help="Caption (when the model has a text encoder).")] = (
        "a red circle moving right"
    ),
    decode: Annotated[bool, typer.Option(help="Decode every chunk with the VAE (end-to-end time).")] = True,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch.")] = None,
    text_on_cpu: Annotated[
        bool, typer.Option("--text-on-cpu", help="Keep the text encoder on the CPU (saves GPU memory).")
    ] = False,
    peak: Annotated[
        bool, typer.Option(help="Measure the matmul peak (about 1 s) for model-FLOPs utilisation.")
    ] = True,
    debug: options.Debug = False,
) -> None:
    """Time cache / recompute / recompute-full side by side: seconds, frames/s, time to first chunk,
    time and peak memory per AR step, KV-cache bytes, FLOPs, MFU and speedups."""
    import torch

    from ca2vdm_cli.bench.runner import Bench, BenchOptions
    from ca2vdm_cli.bench.setups import load_setup
    from ca2vdm_cli.engine.accel import Acceleration

    if plot is not None:
        from ca2vdm_cli.bench.plot import check_available

        check_available()
    if threads is not None:
        torch.set_num_threads(threads)
    from ca2vdm_cli.cli.progress import quiet_libraries
    from ca2vdm_cli.engine.runtime import resolve_device, resolve_dtype

    quiet_libraries(debug)

    names = None if engines is None else tuple(e.strip() for e in engines.split(",") if e.strip())
    dev = resolve_device(device or "auto")
    if cuda_graphs and dev.type != "cuda":
        raise InputError(
            f"--cuda-graphs needs a CUDA device, not {dev}; drop --cuda-graphs or use --device cuda"
        )
    options = BenchOptions(
        engines=names,
        frames=frames,
        steps=steps,
        seed=seed,
        prompt=prompt,
        repeat=repeat,
        warmup_steps=warmup,
        decode=decode,
        stat=stat,
        accel=Acceleration(compile=compile, cuda_graphs=cuda_graphs),
        measure_peak=peak,
        compare_dense=compare_dense,
    )
    from ca2vdm_cli.cli.render import attention_options

    opts = attention_options(
        dict(
            kv_compress=kv_compress,
            tempcache_threshold=tempcache_threshold,
            tempcache_budget=tempcache_budget,
            tempcache_max_count=tempcache_max_count,
            sparse_cross=sparse_cross,
            cross_topk=cross_topk,
            sparse_self=sparse_self,
            topk_density=topk_density,
            lsh_bits=lsh_bits,
        )
    )
    options.validate()  # before loading a model that may take minutes
    setup = load_setup(
        model,
        arch,
        random_weights=random_weights,
        device=dev,
        dtype=resolve_dtype(dtype or "auto", dev),
        seed=seed,
        text_on_cpu=text_on_cpu,
    )
    attention = dict(window=window, sink_frames=sink_frames, position_mode=positions, attention=opts)
    attention = {k: v for k, v in attention.items() if v is not None}
    if attention:  # the causal Wan family's run-time attention (other families refuse it in one line)
        setup.sampling = setup.sampling.replace(**attention)
    console = _console()
    runner = Bench(setup, options, progress=lambda line: console.print(f"[dim]{line}[/dim]"))
    console.print(
        f"bench {setup.name} ({setup.source}, {setup.params / 1e6:.1f} M params) on {dev}, "
        f"{sum(runner.chunks)} frames, {runner.sampling.steps} steps, "
        f"engines {', '.join(runner.engine_names)}"
    )
    report = runner.run().to_json()
    report["settings"]["command"] = " ".join(["ca2vdm", *sys.argv[1:]])
    from ca2vdm_cli.cli.benchtables import print_report

    print_report(console, report)
    _outputs(report, json_out, plot)


def _outputs(report: dict[str, Any], json_out: str | None, plot: Path | None) -> None:
    if json_out == "-":
        print(json.dumps(report, indent=1), flush=True)
    elif json_out is not None:
        Path(json_out).write_text(json.dumps(report, indent=1) + "\n")
        print(json_out, flush=True)
    if plot is not None:
        from ca2vdm_cli.bench.plot import write_plot

        print(write_plot(report, plot), flush=True)


def _console() -> Any:
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=150)  # logs and pipes: do not squeeze the tables to 80
    return console

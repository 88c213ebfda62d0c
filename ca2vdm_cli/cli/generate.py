"""`ca2vdm generate`: prompt + first image → long MP4, written chunk by chunk while it is generated.

Order of work: settings (flags > --config > card) → model directory and card → every input and the output
checked (before any weights are loaded) → load → stream chunks into the video (and PNGs); the shared steps
live in `render.py`. stdout gets only the result: the output path, or one JSON object with --json. Ctrl-C /
SIGTERM / an error mid-render close the file (it stays playable) and say how many frames it holds; the exit
code is then non-zero, and `--resume` continues the render from its last finished chunk.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ca2vdm_cli.cli import app, options

EPILOG = (
    "\b\nExamples:\n"
    '  ca2vdm generate --prompt "a red circle moving right" --frames 240\n'
    '  ca2vdm generate --prompt "a sky timelapse" --image first.png --frames 240 \\\n'
    "      --out sky.mp4 --model DIR\n"
    "  ca2vdm generate --config shot.toml --seed 7 --json\n"
    '  ca2vdm generate --prompt "a sky timelapse" --frames 240 --seed 7 --resume\n\n'
    "--frames counts every frame of the output video, the --image frame(s) included. Ctrl-C or SIGTERM "
    "stop cleanly: the video keeps every finished chunk and stays playable; run the same command with "
    "--resume to continue it (a killed render too)."
)


@app.command(epilog=EPILOG)
def generate(
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            "--prompt",
            "-p",
            metavar="TEXT",
            help="What the video shows. Repeat with --at for a prompt timeline (causal Wan models).",
        ),
    ] = None,
    at: Annotated[
        list[int] | None,
        typer.Option(
            metavar="FRAME",
            help="Frame where the next --prompt takes over (one per --prompt after the first).",
        ),
    ] = None,
    image: options.Image = None,
    frames: options.Frames = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Output .mp4. [default: <prompt-slug>-<6 hex>-s<seed>.mp4, as batch names it]"
        ),
    ] = None,
    model: options.Model = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed; same seed, same video. [default: random]")
    ] = None,
    steps: options.Steps = None,
    sampler: options.Sampler = None,
    cfg_scale: options.CfgScale = None,
    chunk: options.Chunk = None,
    cache_frames: options.CacheFrames = None,
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
    prefix_perturb_t: options.PrefixPerturbT = None,
    device: options.Device = None,
    dtype: options.Dtype = None,
    fps: options.Fps = None,
    crf: options.Crf = None,
    codec: options.Codec = None,
    frames_dir: Annotated[Path | None, typer.Option(help="Also write every frame as a PNG here.")] = None,
    text_encoder: options.TextEncoder = None,
    compile: options.Compile = False,
    cuda_graphs: options.CudaGraphs = False,
    config: options.Config = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted render of --out from its last finished chunk (needs the same "
            "--seed and settings); a complete --out is left as it is.",
        ),
    ] = False,
    yes: options.Yes = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of the path.")
    ] = False,
    quiet: options.Quiet = False,
    debug: options.Debug = False,
) -> None:
    """Generate a video from a prompt and a first image (or from the prompt alone, if the model can)."""
    from ca2vdm_cli.cli.settings import load_config_file, merge_settings

    flags = {
        "prompt": (prompt[0] if len(prompt) == 1 else list(prompt)) if prompt else None,
        "at": list(at) if at else None,
        "image": [str(p) for p in image] if image else None,
        "frames": frames,
        "out": None if out is None else str(out),
        "model": model,
        "seed": seed,
        "steps": steps,
        "sampler": sampler,
        "cfg_scale": cfg_scale,
        "chunk": chunk,
        "cache_frames": cache_frames,
        "window": window,
        "sink_frames": sink_frames,
        "positions": positions,
        "kv_compress": kv_compress,
        "tempcache_threshold": tempcache_threshold,
        "tempcache_budget": tempcache_budget,
        "tempcache_max_count": tempcache_max_count,
        "sparse_cross": sparse_cross,
        "cross_topk": cross_topk,
        "sparse_self": sparse_self,
        "topk_density": topk_density,
        "lsh_bits": lsh_bits,
        "prefix_perturb_t": prefix_perturb_t,
        "device": device,
        "dtype": dtype,
        "fps": fps,
        "crf": crf,
        "codec": codec,
        "frames_dir": None if frames_dir is None else str(frames_dir),
        "text_encoder": text_encoder,
        "compile": compile or None,
        "cuda_graphs": cuda_graphs or None,
    }
    settings = merge_settings(flags, load_config_file(config) if config is not None else {})
    if overwrite and resume:
        from ca2vdm_cli.errors import InputError

        raise InputError("--resume continues an output and --overwrite replaces it; pass only one of them")
    existing = "overwrite" if overwrite else "resume" if resume else "refuse"
    run_generate(settings, existing=existing, yes=yes, json_output=json_output, quiet=quiet, debug=debug)


def run_generate(
    settings: dict[str, Any], *, existing: str, yes: bool, json_output: bool, quiet: bool, debug: bool
) -> None:
    """Everything after option parsing; `settings` holds merged flag/config values (None = default)."""
    import secrets

    from ca2vdm_cli.cli import fail
    from ca2vdm_cli.cli.interrupts import StopRequests
    from ca2vdm_cli.cli.progress import Reporter, configure_logging
    from ca2vdm_cli.cli.render import (
        Interrupted,
        check_memory,
        choose_text_encoder,
        describe,
        load_pipeline,
        plan_render,
        render_video,
        resolve_model,
    )
    from ca2vdm_cli.engine.jobs import video_name
    from ca2vdm_cli.engine.runtime import resolve_device, resolve_dtype
    from ca2vdm_cli.errors import InputError

    started = time.perf_counter()
    configure_logging(debug=debug, quiet=quiet)
    if existing == "resume" and settings.get("seed") is None:
        raise InputError("--resume needs the --seed of the interrupted render (its output name shows it)")
    device = resolve_device(settings.get("device") or "auto")
    dtype = resolve_dtype(settings.get("dtype") or "auto", device)
    reporter = Reporter.for_stderr(quiet, device)
    seed = settings["seed"] if settings.get("seed") is not None else secrets.randbelow(2**31)
    images = settings.get("image") or []
    images = [images] if isinstance(images, str) else [str(i) for i in images]
    first_prompt = settings.get("prompt") or ""
    first_prompt = first_prompt[0] if isinstance(first_prompt, list) else first_prompt
    out = settings.get("out") or video_name(first_prompt, images, seed)
    settings = {**settings, "seed": seed, "out": out}
    model_dir, card = resolve_model(settings, yes)
    plan = plan_render(settings, model_dir, card, device, dtype, existing)  # type: ignore[arg-type]
    for notice in plan.inputs.notices:
        reporter.note(notice)
    if plan.state.action == "skip":
        reporter.line(f"nothing to do: {plan.state.reason}")
        result = {"path": str(plan.out), "frames": plan.request.frames, "seed": seed, "skipped": True}
        print(json.dumps(result) if json_output else str(plan.out), flush=True)
        return
    if plan.state.action == "resume":
        reporter.line(f"resuming {plan.out} at frame {plan.resumed_frames}: {plan.state.reason}")
    elif existing == "resume" and plan.state.reason != "new":
        reporter.line(f"rendering {plan.out} from the start: {plan.state.reason}")
    if not settings.get("text_encoder"):  # not given: the memory plan decides, before anything loads
        settings = {**settings, "text_encoder": choose_text_encoder(plan, device, dtype)}
    reporter.line(check_memory(plan, device, dtype, settings["text_encoder"]))
    pipeline = load_pipeline(plan, device, dtype, debug, settings)
    reporter.line(describe(plan, pipeline))
    stop = StopRequests()
    try:
        with stop.installed():
            gen_seconds = render_video(plan, pipeline, reporter, stop)
    except Interrupted as exc:
        hint = "; continue it with --resume" if plan.inputs.chunks else ""
        fail(f"interrupted by {signal.Signals(exc.signum).name}: {exc.saved}{hint}")
        raise typer.Exit(128 + exc.signum) from None
    result = _result(plan, pipeline, time.perf_counter() - started, gen_seconds)
    reporter.line(_summary(result))
    print(json.dumps(result) if json_output else str(plan.out), flush=True)


def _result(plan: Any, pipeline: Any, seconds: float, gen_seconds: float) -> dict[str, Any]:
    """The JSON result (also the source of the human summary)."""
    from ca2vdm_cli.engine.runtime import dtype_name, gpu_memory, peak_rss_bytes

    request, card, s = plan.request, plan.card, plan.inputs.sampling
    gpu = gpu_memory(pipeline.device)
    new_frames = request.frames - (plan.resumed_frames or plan.inputs.num_given)
    return {
        "path": str(plan.out),
        "frames": request.frames,
        "given_frames": plan.inputs.num_given,
        "resumed_frames": plan.resumed_frames,
        "width": card.width,
        "height": card.height,
        "fps": plan.fps,
        "duration": request.frames / plan.fps,
        "seconds": round(seconds, 3),
        "generate_seconds": round(gen_seconds, 3),
        "frames_per_second": round(new_frames / gen_seconds, 3) if gen_seconds > 0 else 0.0,
        "peak_gpu_memory_bytes": None if gpu is None else gpu.peak,
        "peak_rss_bytes": peak_rss_bytes(),
        "seed": request.seed,
        "model": card.name,
        "family": card.family,
        "model_path": str(plan.model_dir),
        "device": str(pipeline.device),
        "dtype": dtype_name(pipeline.dtype),
        "acceleration": pipeline.accel.label,
        "cache_bytes": pipeline.cache_bytes(s),
        "weights_bytes": sum(pipeline.weight_bytes().values()),
        "prompt": request.prompt,
        "timeline": [{"at": at, "prompt": p} for at, p in request.timeline],
        "images": [str(p) for p in request.images],
        "steps": s.steps,
        "sampler": s.sampler,
        "cfg_scale": s.cfg_scale,
        "chunk": s.chunk,
        "cache_frames": s.cache_frames,
        "prefix_perturb_t": s.prefix_perturb_t,
        "sampling": s.to_dict(),
        "latent_frames": plan.inputs.num_given + sum(plan.inputs.chunks),
        "codec": plan.codec,
        "crf": plan.quality,
        "frames_dir": None if plan.frames_dir is None else str(plan.frames_dir.directory),
    }


def _summary(r: dict[str, Any]) -> str:
    from ca2vdm_cli.units import format_bytes

    if r["peak_gpu_memory_bytes"] is not None:
        peak = f"peak GPU memory {format_bytes(r['peak_gpu_memory_bytes'])}"
    else:
        peak = f"peak RSS {format_bytes(r['peak_rss_bytes'])}"
    return (
        f"saved {r['frames']} frames ({r['duration']:.1f} s at {r['fps']:g} fps, {r['width']}x{r['height']}, "
        f"{r['codec']}) to {r['path']} in {r['seconds']:.1f} s; generation {r['generate_seconds']:.1f} s "
        f"({r['frames_per_second']:.2f} frames/s), {peak}"
    )

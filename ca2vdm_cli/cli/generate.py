"""`ca2vdm generate`: prompt + first image → long MP4, written chunk by chunk while it is generated.

Order of work: settings (flags > --config > card) → model directory and card → every input and the output
checked (before any weights are loaded) → load → stream chunks into the video (and PNGs). stdout gets only
the result: the output path, or one JSON object with --json. Ctrl-C / SIGTERM / an error mid-render close
the file (it stays playable) and say how many frames it holds; the exit code is then non-zero.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from ca2vdm_cli.cli import app

EPILOG = (
    "\b\nExamples:\n"
    '  ca2vdm generate --prompt "a red circle moving right" --frames 240\n'
    '  ca2vdm generate --prompt "a sky timelapse" --image first.png --frames 240 \\\n'
    "      --out sky.mp4 --model DIR\n"
    "  ca2vdm generate --config shot.toml --seed 7 --json\n\n"
    "--frames counts every frame of the output video, the --image frame(s) included. Ctrl-C or SIGTERM "
    "stop cleanly: the video keeps every finished chunk and stays playable."
)


@app.command(epilog=EPILOG)
def generate(
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", metavar="TEXT", help="What the video shows.")
    ] = None,
    image: Annotated[
        list[Path] | None,
        typer.Option(
            "--image",
            "-i",
            metavar="PATH",
            help="First frame (repeat for a few leading frames); resized/cropped.",
        ),
    ] = None,
    frames: Annotated[
        int | None,
        typer.Option(help="Total frames in the video, the --image frame(s) included. [default: 49]"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output .mp4. [default: <prompt-slug>-seed<N>.mp4]")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(metavar="NAME|DIR", help="Preset name or local model directory. [default: sprites]"),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed; same seed, same video. [default: random]")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Denoising steps per chunk. [default: model card]")
    ] = None,
    sampler: Annotated[
        Literal["iddpm", "ddim"] | None, typer.Option(help="Sampler. [default: model card]")
    ] = None,
    cfg_scale: Annotated[
        float | None, typer.Option(help="Classifier-free guidance scale; 1 = off. [default: model card]")
    ] = None,
    chunk: Annotated[int | None, typer.Option(help="Frames per AR step. [default: model card]")] = None,
    cache_frames: Annotated[
        int | None, typer.Option(help="Clean frames kept in the KV cache. [default: model card]")
    ] = None,
    prefix_perturb_t: Annotated[
        int | None, typer.Option(help="Noise level (0-999) of frames written to the cache. [default: card]")
    ] = None,
    device: Annotated[
        str | None, typer.Option(metavar="auto|cpu|cuda[:i]", help="Where to run. [default: auto]")
    ] = None,
    dtype: Annotated[
        Literal["auto", "fp32", "bf16", "fp16"] | None,
        typer.Option(help="Weights/cache precision; auto = bf16 on CUDA, fp32 on CPU. [default: auto]"),
    ] = None,
    fps: Annotated[float | None, typer.Option(help="Frames per second. [default: model card]")] = None,
    crf: Annotated[
        int | None,
        typer.Option(help="Quality, lower is better: h264 0-51, av1 0-63, mpeg4 2-31. [default: 20, 35, 3]"),
    ] = None,
    codec: Annotated[
        Literal["h264", "av1", "mpeg4"] | None, typer.Option(help="Video codec. [default: h264]")
    ] = None,
    frames_dir: Annotated[Path | None, typer.Option(help="Also write every frame as a PNG here.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML file of settings (flags take precedence).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Consent to downloading the model if needed.")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of the path.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    """Generate a video from a prompt and a first image (or from the prompt alone, if the model can)."""
    from ca2vdm_cli.cli.settings import load_config_file, merge_settings

    flags = {
        "prompt": prompt,
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
        "prefix_perturb_t": prefix_perturb_t,
        "device": device,
        "dtype": dtype,
        "fps": fps,
        "crf": crf,
        "codec": codec,
        "frames_dir": None if frames_dir is None else str(frames_dir),
    }
    settings = merge_settings(flags, load_config_file(config) if config is not None else {})
    run_generate(settings, overwrite=overwrite, yes=yes, json_output=json_output, quiet=quiet, debug=debug)


@dataclass
class Plan:
    """A checked generate job: everything is validated before any weights are loaded."""

    model_dir: Path
    card: Any  # ModelCard
    request: Any  # GenerateRequest
    inputs: Any  # CheckedInputs
    out: Path
    codec: str
    quality: int
    fps: float
    frames_dir: Any  # FrameDirWriter | None


def run_generate(
    settings: dict[str, Any], *, overwrite: bool, yes: bool, json_output: bool, quiet: bool, debug: bool
) -> None:
    """Everything after option parsing; `settings` holds merged flag/config values (None = default)."""
    from ca2vdm_cli.cli.progress import Reporter, configure_logging
    from ca2vdm_cli.runtime import resolve_device, resolve_dtype

    started = time.perf_counter()
    configure_logging(debug=debug, quiet=quiet)
    device = resolve_device(settings.get("device") or "auto")
    dtype = resolve_dtype(settings.get("dtype") or "auto", device)
    reporter = Reporter.for_stderr(quiet, device)
    plan = _plan(settings, overwrite, yes)
    for notice in plan.inputs.notices:
        reporter.note(notice)
    pipeline = _load(plan, device, dtype, debug)
    reporter.line(_describe(plan, pipeline))
    gen_seconds = _render(plan, pipeline, reporter)
    result = _result(plan, pipeline, time.perf_counter() - started, gen_seconds)
    reporter.line(_summary(result))
    print(json.dumps(result) if json_output else str(plan.out), flush=True)


def _plan(settings: dict[str, Any], overwrite: bool, yes: bool) -> Plan:
    """Resolve the model, read its card and check every input and the output, in seconds."""
    import secrets

    from ca2vdm_cli.cli.settings import DEFAULT_MODEL, as_paths, consent_prompt, resolve_model_dir
    from ca2vdm_cli.errors import OutputError
    from ca2vdm_cli.modeldir import check_model_dir
    from ca2vdm_cli.pipeline import DEFAULT_FRAMES, GenerateRequest, check_inputs
    from ca2vdm_cli.video import (
        FrameDirWriter,
        check_codec,
        check_frame_size,
        check_output_path,
        default_output_name,
    )

    model_dir = resolve_model_dir(settings.get("model") or DEFAULT_MODEL, consent_prompt(yes))
    card = check_model_dir(model_dir)
    seed = settings["seed"] if settings.get("seed") is not None else secrets.randbelow(2**31)
    request = GenerateRequest(
        prompt=settings.get("prompt") or "",
        images=as_paths(settings.get("image")),
        frames=settings["frames"] if settings.get("frames") is not None else DEFAULT_FRAMES,
        seed=seed,
        steps=settings.get("steps"),
        sampler=settings.get("sampler"),
        cfg_scale=settings.get("cfg_scale"),
        chunk=settings.get("chunk"),
        cache_frames=settings.get("cache_frames"),
        prefix_perturb_t=settings.get("prefix_perturb_t"),
    )
    inputs = check_inputs(card, request)
    out = check_output_path(settings.get("out") or default_output_name(request.prompt, seed), overwrite)
    codec = settings.get("codec") or "h264"
    _, quality = check_codec(codec, settings.get("crf"))
    check_frame_size(card.width, card.height)
    fps = float(settings["fps"]) if settings.get("fps") is not None else float(card.fps)
    if fps <= 0:
        raise OutputError(f"--fps {fps:g} must be > 0")
    frames_dir = FrameDirWriter(settings["frames_dir"], overwrite) if settings.get("frames_dir") else None
    return Plan(model_dir, card, request, inputs, out, codec, quality, fps, frames_dir)


def _load(plan: Plan, device: Any, dtype: Any, debug: bool) -> Any:
    import torch

    from ca2vdm_cli.cli.progress import quiet_libraries
    from ca2vdm_cli.modeldir import load_model_dir
    from ca2vdm_cli.pipeline import Pipeline
    from ca2vdm_cli.runtime import is_out_of_memory, out_of_memory_error

    quiet_libraries(debug)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        return Pipeline(load_model_dir(plan.model_dir, device, dtype))
    except Exception as exc:
        if is_out_of_memory(exc):
            s = plan.inputs.sampling
            raise out_of_memory_error(
                exc, device, dtype, s.cache_frames, s.chunk, "loading the model"
            ) from exc
        raise


def _describe(plan: Plan, pipeline: Any) -> str:
    """The up-front line: where it runs, weight and KV-cache memory, and the shape of the job."""
    from ca2vdm_cli.card import CARD_FILE
    from ca2vdm_cli.cli.progress import format_bytes
    from ca2vdm_cli.runtime import dtype_name

    s, weights = plan.inputs.sampling, pipeline.weight_bytes()
    rows = 2 if s.cfg_scale != 1.0 else 1
    return (
        f"model {plan.card.name} ({plan.model_dir / CARD_FILE}) on {pipeline.device} "
        f"{dtype_name(pipeline.dtype)}: weights {format_bytes(sum(weights.values()))} "
        f"(transformer {format_bytes(weights['transformer'])}, VAE {format_bytes(weights['vae'])}, "
        f"text encoder {format_bytes(weights['text_encoder'])}) + KV cache "
        f"{format_bytes(pipeline.cache_bytes(s))} ({s.cache_frames} frames x {rows} rows); "
        f"{plan.request.frames} frames = {plan.inputs.num_given} given + {len(plan.inputs.chunks)} AR steps "
        f"of <= {s.chunk}, {s.steps} {s.sampler} steps each, seed {plan.request.seed}"
    )


def _render(plan: Plan, pipeline: Any, reporter: Any) -> float:
    """Stream chunks into the video (and PNGs). On Ctrl-C, SIGTERM or an error the video is closed, so it
    stays playable, and the message says how many frames it holds. Returns the generation seconds."""
    from ca2vdm_cli.cli import fail
    from ca2vdm_cli.cli.interrupts import Stopped, StopRequests
    from ca2vdm_cli.errors import Ca2VDMError
    from ca2vdm_cli.runtime import is_out_of_memory, out_of_memory_error
    from ca2vdm_cli.video import VideoWriter

    card, request, s = plan.card, plan.request, plan.inputs.sampling
    writer = VideoWriter(plan.out, card.width, card.height, plan.fps, plan.codec, plan.quality, s.chunk)
    stop = StopRequests()

    def on_event(event: Any) -> None:
        reporter.on_event(event)
        stop.check()  # once per denoising step: a clean stop within one step's time

    started = time.perf_counter()
    try:
        with stop.installed():
            for piece in pipeline.generate(request, on_event, inputs=plan.inputs):
                writer.write(piece.frames)
                if plan.frames_dir is not None:
                    plan.frames_dir.write(piece.frames)
                stop.check()
    except (KeyboardInterrupt, Stopped) as exc:
        reporter.stop()
        saved = _saved_text(_close_partial(writer), request.frames, plan.out)
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        fail(f"interrupted by {signal.Signals(signum).name}: {saved}")
        raise typer.Exit(128 + signum) from None
    except Exception as exc:
        reporter.stop()
        saved = _saved_text(_close_partial(writer), request.frames, plan.out)
        if is_out_of_memory(exc):
            stage = f"generating (chunks of {s.chunk} frames)"
            error = out_of_memory_error(exc, pipeline.device, pipeline.dtype, s.cache_frames, s.chunk, stage)
        elif isinstance(exc, Ca2VDMError):
            error = exc
        else:  # a bug: keep the traceback, but say what was saved
            reporter.line(f"note: {saved}")
            raise
        raise type(error)(f"{error}; {saved}") from exc
    reporter.stop()
    writer.close()
    return time.perf_counter() - started


def _result(plan: Plan, pipeline: Any, seconds: float, gen_seconds: float) -> dict[str, Any]:
    """The JSON result (also the source of the human summary)."""
    from ca2vdm_cli.runtime import dtype_name, gpu_memory, peak_rss_bytes

    request, card, s = plan.request, plan.card, plan.inputs.sampling
    gpu = gpu_memory(pipeline.device)
    new_frames = request.frames - plan.inputs.num_given
    return {
        "path": str(plan.out),
        "frames": request.frames,
        "given_frames": plan.inputs.num_given,
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
        "model_path": str(plan.model_dir),
        "device": str(pipeline.device),
        "dtype": dtype_name(pipeline.dtype),
        "cache_bytes": pipeline.cache_bytes(s),
        "weights_bytes": sum(pipeline.weight_bytes().values()),
        "prompt": request.prompt,
        "images": [str(p) for p in request.images],
        "steps": s.steps,
        "sampler": s.sampler,
        "cfg_scale": s.cfg_scale,
        "chunk": s.chunk,
        "cache_frames": s.cache_frames,
        "prefix_perturb_t": s.prefix_perturb_t,
        "codec": plan.codec,
        "crf": plan.quality,
        "frames_dir": None if plan.frames_dir is None else str(plan.frames_dir.directory),
    }


def _summary(r: dict[str, Any]) -> str:
    from ca2vdm_cli.cli.progress import format_bytes

    if r["peak_gpu_memory_bytes"] is not None:
        peak = f"peak GPU memory {format_bytes(r['peak_gpu_memory_bytes'])}"
    else:
        peak = f"peak RSS {format_bytes(r['peak_rss_bytes'])}"
    return (
        f"saved {r['frames']} frames ({r['duration']:.1f} s at {r['fps']:g} fps, {r['width']}x{r['height']}, "
        f"{r['codec']}) to {r['path']} in {r['seconds']:.1f} s; generation {r['generate_seconds']:.1f} s "
        f"({r['frames_per_second']:.2f} frames/s), {peak}"
    )


def _close_partial(writer: Any) -> int:
    """Close the video after a failure; remove it when it holds no frame. Returns the frames it holds."""
    with contextlib.suppress(Exception):  # a second failure must not hide the first one
        writer.close()
    if writer.frames_written == 0:
        writer.path.unlink(missing_ok=True)
    return writer.frames_written


def _saved_text(saved: int, total: int, out: Path) -> str:
    if saved == 0:
        return "no frames were written"
    return f"{saved} of {total} frames saved to {out} (playable)"

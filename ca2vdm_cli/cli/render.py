"""One render, shared by `generate` and `batch`: plan it (every input, the output and what is already on disk
checked before any weights are loaded), plan its memory, load the model, stream the chunks into the MP4
while saving each chunk's latents in the resume sidecar, and describe the result.

A render always keeps a sidecar (`out.mp4.parts/`, see `resume.py`) while it runs, so a killed render can be
resumed: `plan_render(existing="resume")` replays the saved chunks, the video is rebuilt from them and the
render continues. The sidecar is removed once the video is complete.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Existing = Literal["refuse", "overwrite", "resume"]  # what to do when the output file already exists


@dataclass
class Plan:
    """A checked render: everything is validated before any weights are loaded."""

    model_dir: Path
    card: Any  # ModelCard
    request: Any  # GenerateRequest
    inputs: Any  # CheckedInputs
    out: Path
    codec: str
    quality: int
    fps: float
    frames_dir: Any  # FrameDirWriter | None
    sidecar: Any  # resume.Sidecar
    state: Any  # resume.OutputState: render | resume | skip
    replay: tuple[Any, ...] = ()  # latents of the chunks saved by an interrupted render (resume)

    @property
    def resumed_frames(self) -> int:
        """Output frames that come from the sidecar rather than from new denoising."""
        from ca2vdm_cli.engine.request import video_frames

        replayed = len(self.replay)
        if not replayed:
            return 0
        given, per_chunk = video_frames(
            self.card.frames_per_latent, self.inputs.num_given, self.inputs.chunks
        )
        return min(self.request.frames, given + sum(per_chunk[:replayed]))


class Interrupted(Exception):
    """A render stopped by Ctrl-C / SIGTERM; `saved` says what the (playable) output holds."""

    def __init__(self, signum: int, saved: str) -> None:
        super().__init__(saved)
        self.signum, self.saved = signum, saved


def resolve_model(settings: dict[str, Any], yes: bool) -> tuple[Path, Any]:
    """The local model directory and its checked card (downloads only with consent)."""
    from ca2vdm_cli.cli.settings import consent_prompt, resolve_model_dir
    from ca2vdm_cli.store.modeldir import check_model_dir
    from ca2vdm_cli.store.presets import DEFAULT_MODEL

    model_dir = resolve_model_dir(settings.get("model") or DEFAULT_MODEL, consent_prompt(yes))
    return model_dir, check_model_dir(model_dir)


def plan_render(
    settings: dict[str, Any], model_dir: Path, card: Any, device: Any, dtype: Any, existing: Existing
) -> Plan:
    """Check one render in seconds. `settings` holds merged values with `seed` and `out` set."""
    from ca2vdm_cli.cli.settings import as_paths
    from ca2vdm_cli.engine.request import DEFAULT_FRAMES, GenerateRequest, check_inputs, check_replay
    from ca2vdm_cli.engine.resume import OutputState, Sidecar, inspect_output, sidecar_dir
    from ca2vdm_cli.errors import OutputError
    from ca2vdm_cli.media.video import FrameDirWriter, check_codec, check_frame_size, check_output_path

    prompt, timeline = prompt_timeline(settings.get("prompt"), settings.get("at"))
    request = GenerateRequest(
        prompt=prompt,
        timeline=timeline,
        images=as_paths(settings.get("image")),
        frames=settings["frames"] if settings.get("frames") is not None else DEFAULT_FRAMES,
        seed=settings["seed"],
        steps=settings.get("steps"),
        sampler=settings.get("sampler"),
        cfg_scale=settings.get("cfg_scale"),
        chunk=settings.get("chunk"),
        cache_frames=settings.get("cache_frames"),
        prefix_perturb_t=settings.get("prefix_perturb_t"),
        window=settings.get("window"),
        sink_frames=settings.get("sink_frames"),
        position_mode=settings.get("positions"),
        attention=attention_options(settings),
    )
    inputs = check_inputs(card, request)
    out = Path(settings["out"])
    if existing == "refuse" and out.is_file() and sidecar_dir(out).is_dir():
        raise OutputError(
            f"--out {out} already exists and its render was interrupted; pass --resume to continue it, "
            "--overwrite to start again, or choose another name"
        )
    out = check_output_path(out, overwrite=existing != "refuse")
    codec = settings.get("codec") or "h264"
    _, quality = check_codec(codec, settings.get("crf"))
    check_frame_size(card.width, card.height)
    fps = float(settings["fps"]) if settings.get("fps") is not None else float(card.fps)
    if fps <= 0:
        raise OutputError(f"--fps {fps:g} must be > 0")
    key = render_fingerprint(model_dir, card, request, inputs, device, dtype, codec, quality, fps)
    sidecar = Sidecar(out, key)
    state = OutputState("render", "overwrite" if out.exists() else "new")
    replay: tuple[Any, ...] = ()
    if existing == "resume":
        state = inspect_output(out, sidecar, request.frames, card.width, card.height)
        replay = tuple(state.chunks)
        check_replay(card, inputs, replay)
    frames_dir = None
    if settings.get("frames_dir"):  # rewritten from frame 0 on resume: the replayed chunks come back too
        frames_dir = FrameDirWriter(settings["frames_dir"], existing != "refuse")
    return Plan(
        model_dir, card, request, inputs, out, codec, quality, fps, frames_dir, sidecar, state, replay
    )


ATTENTION_SETTINGS = {  # setting / flag name -> AttentionOptions field
    "kv_compress": "kv_compress",
    "tempcache_threshold": "tempcache_threshold",
    "tempcache_budget": "tempcache_budget_frames",
    "tempcache_max_count": "tempcache_max_count",
    "sparse_cross": "sparse_cross",
    "cross_topk": "cross_topk",
    "sparse_self": "sparse_self",
    "topk_density": "topk_density",
    "lsh_bits": "lsh_bits",
}


def attention_options(settings: dict[str, Any]) -> Any:
    """The TempCache / AnnCA / AnnSA settings as one `AttentionOptions` (None when none is given: the card's
    dense attention); a value out of range is one ConfigError naming it."""
    given = {
        field: settings[key] for key, field in ATTENTION_SETTINGS.items() if settings.get(key) is not None
    }
    if not given:
        return None
    from ca2vdm_cli.errors import ConfigError
    from ca2vdm_cli.models.attention_opts import AttentionOptions

    try:
        return AttentionOptions(**given)
    except ConfigError as exc:  # name the flag, not the field
        message = str(exc)
        for key, field in sorted(ATTENTION_SETTINGS.items(), key=lambda kv: -len(kv[1])):
            message = message.replace(field, "--" + key.replace("_", "-"))
        raise ConfigError(message) from None


def prompt_timeline(prompt: Any, at: Any) -> tuple[str, tuple[tuple[int, str], ...]]:
    """`--prompt A --prompt B --at 120` (or TOML / JSONL `prompt = [...]`, `at = [...]`) → the first prompt
    and the (frame, prompt) switches; InputError when the counts do not match."""
    from ca2vdm_cli.errors import InputError

    prompts = prompt if isinstance(prompt, list) else [prompt or ""]
    marks = list(at or [])
    if len(marks) != len(prompts) - 1 or not all(isinstance(m, int) for m in marks):
        raise InputError(
            f"{len(prompts)} prompts and {len(marks)} --at frames: give one --at FRAME (an integer) for "
            "every --prompt after the first"
        )
    if not all(isinstance(p, str) for p in prompts):
        raise InputError("every prompt of a timeline must be a string")
    return prompts[0], tuple(zip(marks, prompts[1:], strict=True))


def render_fingerprint(
    model_dir: Path,
    card: Any,
    request: Any,
    inputs: Any,
    device: Any,
    dtype: Any,
    codec: str,
    q: int,
    fps: float,
) -> str:
    """The identity of a render's frames: a sidecar is only replayed into a render with the same one."""
    from dataclasses import asdict

    from ca2vdm_cli.engine.resume import file_sha256, fingerprint, model_identity
    from ca2vdm_cli.engine.runtime import dtype_name

    return fingerprint(
        {
            "model": card.name,
            "model_files": model_identity(model_dir),
            "prompt": request.prompt,
            "timeline": [list(t) for t in request.timeline],
            "images": [file_sha256(p) for p in request.images],
            "seed": request.seed,
            "frames": request.frames,
            "sampling": asdict(inputs.sampling),
            "engine": request.engine,
            "device": device.type,
            "dtype": dtype_name(dtype),
            "video": [codec, q, fps, card.width, card.height],
        }
    )


def _estimate(plan: Plan, dtype: Any, text_encoder: str) -> dict[str, int]:
    from ca2vdm_cli.store.memory import estimate_memory

    s = plan.inputs.sampling
    return estimate_memory(
        plan.card,
        dtype,
        cfg=s.cfg_scale != 1.0,
        text_encoder_on_cpu=text_encoder == "cpu",
        free_text_encoder=text_encoder == "free",
        model_dir=plan.model_dir,
        sampling=s,
    )


def choose_text_encoder(plan: Plan, device: Any, dtype: Any, available: int | None = None) -> str:
    """Where the text encoder goes when the user did not say: beside the model if everything fits, else
    encoded then freed, else on the CPU — decided by the memory plan before anything loads."""
    from ca2vdm_cli.store.memory import MemoryPlanError, check_fits

    for placement in ("device", "free", "cpu"):
        try:
            check_fits(_estimate(plan, dtype, placement), device, available)
            return placement
        except MemoryPlanError:
            continue
    return "device"  # nothing fits: check_memory refuses with the knobs


def check_memory(plan: Plan, device: Any, dtype: Any, text_encoder: str, available: int | None = None) -> str:
    """Estimate the device memory before loading anything; refuse early when it cannot fit (CUDA)."""
    from ca2vdm_cli.errors import ConfigError
    from ca2vdm_cli.store.memory import check_fits, describe_estimate

    if text_encoder not in ("device", "cpu", "free"):
        raise ConfigError(f"text_encoder = {text_encoder!r} must be device, cpu or free")
    estimate = _estimate(plan, dtype, text_encoder)
    check_fits(estimate, device, available, cache_knob=plan.card.spec.CACHE_KNOB)
    where = "" if text_encoder == "device" else f"; text encoder: {text_encoder}"
    return f"planned memory on {device}: {describe_estimate(estimate)}{where}"


def acceleration(settings: dict[str, Any]) -> Any:
    """`--compile` / `--cuda-graphs` as the `engine.accel.Acceleration` that bench times too."""
    from ca2vdm_cli.engine.accel import Acceleration

    return Acceleration(compile=bool(settings.get("compile")), cuda_graphs=bool(settings.get("cuda_graphs")))


def load_pipeline(plan: Plan, device: Any, dtype: Any, debug: bool, settings: dict[str, Any]) -> Any:
    """Load the model directory into a pipeline with the run's text-encoder placement and acceleration."""
    import torch

    from ca2vdm_cli.cli.progress import quiet_libraries
    from ca2vdm_cli.engine.pipeline import Pipeline
    from ca2vdm_cli.engine.runtime import is_out_of_memory, out_of_memory_error
    from ca2vdm_cli.store.modeldir import load_model_dir

    text_encoder = settings.get("text_encoder") or "device"
    accel = acceleration(settings)  # a CUDA-graph request on another device is refused by the pipeline
    quiet_libraries(debug)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        text_device = "cpu" if text_encoder == "cpu" else None
        components = load_model_dir(plan.model_dir, device, dtype, text_device=text_device)
        return Pipeline(components, free_text_encoder=text_encoder == "free", accel=accel)
    except Exception as exc:
        if is_out_of_memory(exc):
            s = plan.inputs.sampling
            raise out_of_memory_error(
                exc, device, dtype, s.cache_frames, s.chunk, "loading the model"
            ) from exc
        raise


def describe(plan: Plan, pipeline: Any) -> str:
    """The up-front line: where it runs, weight and KV-cache memory, and the shape of the job."""
    from ca2vdm_cli.engine.runtime import dtype_name
    from ca2vdm_cli.store.card import CARD_FILE
    from ca2vdm_cli.units import format_bytes

    s, weights = plan.inputs.sampling, pipeline.weight_bytes()
    rows = pipeline.family.model_rows(s, 1)
    return (
        f"model {plan.card.name} ({plan.model_dir / CARD_FILE}) on {pipeline.device} "
        f"{dtype_name(pipeline.dtype)}: weights {format_bytes(sum(weights.values()))} "
        f"(transformer {format_bytes(weights['transformer'])}, VAE {format_bytes(weights['vae'])}, "
        f"text encoder {format_bytes(weights['text_encoder'])}) + KV cache "
        f"{format_bytes(pipeline.cache_bytes(s))} ({plan.card.spec.cache_summary(s, rows)}); "
        f"{plan.request.frames} frames = {plan.inputs.num_given} given + {len(plan.inputs.chunks)} AR steps "
        f"of <= {s.chunk} latent frames, {s.steps} {s.sampler} steps each, seed {plan.request.seed}"
    )


def render_video(plan: Plan, pipeline: Any, reporter: Any, stop: Any) -> float:
    """Stream the chunks into the video (and PNGs), saving each new chunk's latents in the sidecar first.
    On a stop request (`stop`, a StopRequests the caller has installed) raise Interrupted; on an error raise
    it with what was saved in the message. Either way the video is closed, so it stays playable, and the
    sidecar stays for a resume. Returns the generation seconds."""
    import signal

    from ca2vdm_cli.cli.interrupts import Stopped
    from ca2vdm_cli.engine.runtime import is_out_of_memory, out_of_memory_error
    from ca2vdm_cli.errors import Ca2VDMError
    from ca2vdm_cli.media.video import VideoWriter

    card, request, s = plan.card, plan.request, plan.inputs.sampling
    if not plan.replay:
        plan.sidecar.start()  # a fresh render: any stale sidecar of this output goes
    writer = VideoWriter(plan.out, card.width, card.height, plan.fps, plan.codec, plan.quality, s.chunk)

    def on_event(event: Any) -> None:
        reporter.on_event(event)
        stop.check()  # once per denoising step: a clean stop within one step's time

    started = time.perf_counter()
    try:
        for piece in pipeline.generate(request, on_event, inputs=plan.inputs, replay=plan.replay):
            if piece.index >= 0 and not piece.replayed:
                plan.sidecar.append(piece.latents)  # before the frames: a kill between them loses nothing
            writer.write(piece.frames)
            if plan.frames_dir is not None:
                plan.frames_dir.write(piece.frames)
            stop.check()
    except (KeyboardInterrupt, Stopped) as exc:
        reporter.stop()
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        raise Interrupted(signum, _saved_text(_close_partial(writer), request.frames, plan.out)) from None
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
    plan.sidecar.remove()
    return time.perf_counter() - started


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

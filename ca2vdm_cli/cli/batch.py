"""`ca2vdm batch SOURCE|-`: render a list of jobs with one model load, isolating failures and resuming.

SOURCE is a text file (one prompt per line) or JSONL (`jobs.py`), `-` reads stdin. Every item inherits the
command's flags and may override some. Per item: plan it (a bad line, a missing image or a bad value fails
that item only) → skip it when its output is complete (verified by decoding) → otherwise load the model
once (lazily: a batch with nothing to do never loads it) and render it, resuming from its sidecar when an
earlier run was interrupted (`render.py`). stdout gets exactly one JSON line per item as it finishes;
progress goes to stderr. Under `torchrun` the items are sharded across the ranks (`distributed.py`), each on
its own device; rank 0 reads SOURCE and shares the lines. Exit code 1 when an item failed.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from ca2vdm_cli.cli import app, options

EPILOG = (
    "\b\nExamples:\n"
    "  cat prompts.txt | ca2vdm batch -\n"
    "  ca2vdm batch jobs.jsonl --out-dir renders/ --frames 97\n"
    "  find shots -name '*.png' | jq -Rc '{prompt: \"a sky timelapse\", image: .}' | ca2vdm batch -\n"
    "  torchrun --standalone --nproc-per-node=8 -m ca2vdm_cli batch jobs.jsonl --out-dir renders/\n\n"
    "A line is a prompt, or a JSON object with prompt, image, frames, seed, out, steps, sampler, cfg_scale, "
    "chunk, cache_frames, window, sink_frames, positions, prefix_perturb_t, fps, prompts + at (a prompt "
    "timeline); blank lines and # "
    "comments are skipped. Outputs are named "
    "<prompt-slug>-<hash>-s<seed>.mp4 unless the item gives 'out'. Running the same batch again skips "
    "finished videos and resumes interrupted ones from their last finished chunk."
)


@app.command(epilog=EPILOG)
def batch(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE|-",
            help="Job list: text (a prompt per line) or JSONL; - reads stdin.",
            show_default=False,
        ),
    ],
    out_dir: Annotated[
        Path, typer.Option("--out-dir", "-o", help="Directory for outputs of items without 'out'.")
    ] = Path("renders"),
    results_dir: Annotated[
        Path | None,
        typer.Option(
            help="Write the JSON lines to DIR/results-rank<R>.jsonl (one file per rank), not stdout."
        ),
    ] = None,
    image: Annotated[
        Path | None,
        typer.Option("--image", "-i", metavar="PATH", help="First frame of items without 'image'."),
    ] = None,
    frames: options.Frames = None,
    model: options.Model = None,
    seed: Annotated[int | None, typer.Option(help="Seed of items without 'seed'. [default: 0]")] = None,
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
    text_encoder: Annotated[
        Literal["device", "cpu"] | None,
        typer.Option("--text-encoder", help="T5 on the run device or kept on the CPU. [default: device]"),
    ] = None,
    compile: options.Compile = False,
    cuda_graphs: options.CudaGraphs = False,
    config: options.Config = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Render every item again, even finished ones.")
    ] = False,
    yes: options.Yes = False,
    quiet: options.Quiet = False,
    debug: options.Debug = False,
) -> None:
    """Render many videos from a job list (file or stdin): one JSON line per item on stdout."""
    from ca2vdm_cli.cli.settings import BATCH_KEYS, load_config_file, merge_settings

    flags = {
        "image": None if image is None else str(image),
        "frames": frames,
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
        "text_encoder": text_encoder,
        "compile": compile or None,
        "cuda_graphs": cuda_graphs or None,
    }
    settings = merge_settings(flags, load_config_file(config, BATCH_KEYS) if config is not None else {})
    run = BatchRun(settings, out_dir, overwrite=overwrite, yes=yes, quiet=quiet, debug=debug)
    raise typer.Exit(run.main(source, results_dir))


def read_source(source: str) -> tuple[list[str], str | None]:
    """The job lines and the directory relative JSON paths are taken from (None: the current one)."""
    from ca2vdm_cli.errors import InputError

    if source == "-":
        return sys.stdin.read().splitlines(), None
    path = Path(source)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise InputError(f"job list {source} {what}; pass a text or JSONL file, or - to read stdin")
    try:
        return path.read_text(encoding="utf-8").splitlines(), str(path.parent)
    except UnicodeDecodeError:
        raise InputError(f"job list {source} is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise InputError(f"job list {source} cannot be read: {exc.strerror or exc}") from None


class ResultLines:
    """The JSON result lines: on stdout, or in DIR/results-rank<R>.jsonl. Each line is one flushed write
    (< 4 KiB pipe writes are atomic), so the ranks of one node can share stdout without mixing lines."""

    def __init__(self, results_dir: Path | None, rank: int) -> None:
        self.file: Any = None
        if results_dir is not None:
            from ca2vdm_cli.errors import OutputError

            try:
                results_dir.mkdir(parents=True, exist_ok=True)
                self.file = open(results_dir / f"results-rank{rank}.jsonl", "w", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise OutputError(f"--results-dir {results_dir}: {exc.strerror or exc}") from None

    def emit(self, result: dict[str, Any]) -> None:
        target = self.file if self.file is not None else sys.stdout
        target.write(json.dumps(result) + "\n")  # ASCII: safe in any locale
        target.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class BatchRun:
    """One `ca2vdm batch` invocation on one rank."""

    def __init__(
        self, settings: dict[str, Any], out_dir: Path, *, overwrite: bool, yes: bool, quiet: bool, debug: bool
    ) -> None:
        self.settings, self.out_dir = settings, out_dir
        self.overwrite, self.yes, self.quiet, self.debug = overwrite, yes, quiet, debug
        self.pipeline: Any = None

    def main(self, source: str, results_dir: Path | None) -> int:
        """Run the batch; returns the exit code (0, 1 when an item failed, 128+signal when stopped)."""
        from ca2vdm_cli.cli.batch_progress import BatchReporter
        from ca2vdm_cli.cli.progress import configure_logging
        from ca2vdm_cli.cli.render import resolve_model
        from ca2vdm_cli.engine.distributed import Ranks, process_group, rank_device
        from ca2vdm_cli.engine.runtime import resolve_dtype
        from ca2vdm_cli.errors import ConfigError

        self.ranks = Ranks.from_env()
        tag = f"rank {self.ranks.rank}/{self.ranks.world_size}: " if self.ranks.distributed else ""
        configure_logging(debug=self.debug, quiet=self.quiet, prefix=tag)
        if self.settings.get("text_encoder") == "free":
            raise ConfigError(
                "--text-encoder free frees T5 after the first prompt; a batch needs device or cpu"
            )
        self.device = rank_device(self.ranks, self.settings.get("device") or "auto")
        self.dtype = resolve_dtype(self.settings.get("dtype") or "auto", self.device)
        with process_group(self.ranks, self.device):
            items = self._items(source)
        self.model_dir, self.card = resolve_model(self.settings, self.yes)
        self.reporter = BatchReporter.for_stderr(self.quiet, len(items), tag, self.device)
        self.results = ResultLines(results_dir, self.ranks.rank)
        try:
            return self._render_all(items)
        finally:
            self.results.close()

    def _items(self, source: str) -> list[Any]:
        """This rank's share of the parsed job list (rank 0 reads SOURCE, every rank gets its lines)."""
        from ca2vdm_cli.engine.distributed import share_from_rank0
        from ca2vdm_cli.engine.jobs import mark_duplicate_outputs, parse_jobs, shard
        from ca2vdm_cli.errors import Ca2VDMError, InputError

        loaded: tuple[str, Any, Any] | None = None
        if self.ranks.rank == 0:
            try:
                loaded = ("ok", *read_source(source))
            except Ca2VDMError as exc:  # every rank must fail with it, not wait for the lines
                loaded = ("error", str(exc), None)
        status, lines, base_dir = share_from_rank0(loaded, self.ranks, self.device)
        if status == "error":
            raise InputError(lines)
        seed = self.settings.get("seed")
        items = parse_jobs(
            lines, default_seed=0 if seed is None else seed, base_dir=base_dir and Path(base_dir)
        )
        default_image = self.settings.get("image")
        for item in items:
            if item.image is None and default_image:
                item.image = default_image
        mark_duplicate_outputs(items, self.out_dir)
        return shard(items, self.ranks.rank, self.ranks.world_size)

    def _render_all(self, items: list[Any]) -> int:
        from ca2vdm_cli.cli import fail
        from ca2vdm_cli.cli.interrupts import Stopped, StopRequests
        from ca2vdm_cli.cli.render import Interrupted

        stop = StopRequests()
        signum = None
        self.reporter.start()
        try:
            with stop.installed():
                for item in items:
                    stop.check()
                    self._finish(self._process(item, stop))
        except (Stopped, KeyboardInterrupt, Interrupted) as exc:
            signum = exc.signum if isinstance(exc, Stopped | Interrupted) else signal.SIGINT
        finally:  # also when the model cannot load: the terminal gets its cursor back before the error
            self.reporter.close()
        self.reporter.line(self.reporter.summary())
        if signum is not None:
            name = signal.Signals(signum).name
            fail(f"{self.reporter.tag}interrupted by {name}; run the same batch again to resume")
            return 128 + signum
        return 1 if self.reporter.counts["failed"] else 0

    def _finish(self, result: dict[str, Any]) -> None:
        self.results.emit(result)
        self.reporter.finish_item(result)

    def _process(self, item: Any, stop: Any) -> dict[str, Any]:
        """Plan, skip or render one item; its errors become its result (Interrupted propagates)."""
        from ca2vdm_cli.cli.render import Interrupted, check_memory, plan_render, render_video
        from ca2vdm_cli.engine.jobs import output_path
        from ca2vdm_cli.errors import Ca2VDMError

        started = time.perf_counter()
        result: dict[str, Any] = {
            "status": "failed",
            "path": None,
            "frames": None,
            "seconds": None,
            "seed": item.seed,
            "error": item.error,
            "line": item.line,
            "prompt": item.prompt,
            "image": item.image,
            "resumed_frames": 0,
            "rank": self.ranks.rank,
        }

        def done(status: str, error: str | None = None) -> dict[str, Any]:
            result.update(status=status, error=error, seconds=round(time.perf_counter() - started, 3))
            return result

        if item.error:
            return done("failed", item.error)
        out = output_path(item, self.out_dir)
        result["path"] = str(out)
        settings = {**self.settings, **item.overrides}
        prompt = settings.pop("prompts", None) or item.prompt  # a list: a prompt timeline with `at`
        settings.update(prompt=prompt, image=item.image, seed=item.seed, out=str(out))
        existing = "overwrite" if self.overwrite else "resume"
        try:
            plan = plan_render(settings, self.model_dir, self.card, self.device, self.dtype, existing)
            result["frames"] = plan.request.frames
            if plan.state.action == "skip":
                return done("skipped")
            check_memory(plan, self.device, self.dtype, self.settings.get("text_encoder") or "device")
        except Ca2VDMError as exc:
            return done("failed", str(exc))
        loading = time.perf_counter()
        pipeline = self._pipeline(plan)  # a model that cannot load stops the whole batch
        started += time.perf_counter() - loading  # an item's seconds are its own, not the model load's
        resume = f", resuming at frame {plan.resumed_frames}" if plan.state.action == "resume" else ""
        progress = self.reporter.begin_item(
            f"line {item.line}", f"{out} ({plan.request.frames} frames, seed {item.seed}{resume})"
        )
        for notice in plan.inputs.notices:
            progress.line(f"note: {notice}")
        try:
            render_video(plan, pipeline, progress, stop)
        except Interrupted as exc:
            self._finish(done("failed", f"interrupted by {signal.Signals(exc.signum).name}: {exc.saved}"))
            raise
        except Exception as exc:  # isolate the item: OOM, a bad image, even a bug
            message = str(exc) if isinstance(exc, Ca2VDMError) else f"{type(exc).__name__}: {exc}"
            if self.debug:
                traceback.print_exc(file=sys.stderr)
            self._release_memory()
            return done("failed", message)
        result["resumed_frames"] = plan.resumed_frames
        return done("ok")

    def _pipeline(self, plan: Any) -> Any:
        """The model, loaded on first use and kept for every later item."""
        if self.pipeline is None:
            from ca2vdm_cli.cli.render import describe, load_pipeline

            self.pipeline = load_pipeline(plan, self.device, self.dtype, self.debug, self.settings)
            self.reporter.line(describe(plan, self.pipeline))
        return self.pipeline

    def _release_memory(self) -> None:
        """After a failed item (out of memory above all): free what it held so the next item can run."""
        import gc

        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

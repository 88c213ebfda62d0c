"""Side-by-side timing of the AR engines in one process: the same prompt, given frame and seed through
`cache`, `recompute` and `recompute-full`, each warmed up first (warm-up excluded), repeats interleaved
so that a change in machine load hits every engine alike.

Per engine and run: the time of every AR step (writing the previous chunk + denoising this one), time
to the first chunk, the end-to-end time including text encoding, VAE encoding of the given frame and VAE
decoding of every chunk, and memory: the whole run's peak (CUDA max allocated / host peak RSS) and the
working memory of every AR step (bytes above the step's start: CUDA allocated in the timed runs; on the
CPU, live tensor bytes traced with the profiler in the untimed warm-up, since host RSS mostly shows what
the C allocator keeps). Analytic FLOPs (`flops.py`) turn the
denoising time into achieved FLOP/s and, against a measured matmul peak, model-FLOPs utilisation. The
`per-step-cache` row is accounting only: the memory a Live2Diff-style cache (one K|V slice per denoising
step) would need for the same model.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ca2vdm_cli.bench.hardware import PeakMemory, StepTimer, TensorTrace, describe, matmul_peak, synchronize
from ca2vdm_cli.bench.report import EngineResult, Report, Run, speedups, summarise
from ca2vdm_cli.bench.setups import BenchSetup
from ca2vdm_cli.engine.accel import Acceleration
from ca2vdm_cli.engine.loop import chunk_lengths
from ca2vdm_cli.engine.noise import seeded_noise
from ca2vdm_cli.engine.pipeline import Pipeline
from ca2vdm_cli.engine.request import CheckedInputs, GenerateRequest, ProgressEvent
from ca2vdm_cli.errors import InputError
from ca2vdm_cli.models import FAMILY_NAMES, spec

logger = logging.getLogger(__name__)

PER_STEP_CACHE = "per-step-cache"
DEFAULT_PROMPT = "a red circle moving right"
ALL_ENGINES = tuple(dict.fromkeys(e for name in FAMILY_NAMES for e in spec(name).ENGINES))


@dataclass(frozen=True)
class BenchOptions:
    engines: tuple[str, ...] | None = None  # None: every engine of the model's family
    frames: int = 80  # generated frames after the given frame: K = 10 AR steps of 8
    steps: int | None = None  # denoising steps per chunk; None = the model's default
    seed: int = 0
    prompt: str = DEFAULT_PROMPT
    repeat: int = 1
    warmup_steps: int = 2  # denoising steps per chunk of the untimed warm-up run; 0 = no warm-up
    decode: bool = True  # decode every chunk with the VAE (end-to-end time)
    decode_batch: int = 8
    stat: str = "median"  # over repeats: median | min
    accel: Acceleration = Acceleration()
    measure_peak: bool = True
    compare_dense: bool = False  # with attention options: also time the cache engine with dense attention

    def validate(self) -> None:
        """InputError naming the first bad option (cheap: call before loading a model)."""
        engines = self.engines if self.engines is not None else ALL_ENGINES
        unknown = [e for e in engines if e not in ALL_ENGINES]
        if unknown or not engines:
            raise InputError(f"--engines {','.join(engines)}: choose from {', '.join(ALL_ENGINES)}")
        if self.frames < 1:
            raise InputError(f"--frames {self.frames}: generate at least one frame")
        if self.stat not in ("median", "min"):
            raise InputError(f"--stat {self.stat}: use median or min")


# ----------------------------------------------------------------------------- running
Progress = Callable[[str], None]


class Bench:
    """Runs the engines of `options` on `setup`; `progress` receives one line per finished phase."""

    def __init__(self, setup: BenchSetup, options: BenchOptions, progress: Progress | None = None) -> None:
        options.validate()
        self.setup, self.options = setup, options
        self.sampling = (
            setup.sampling if options.steps is None else setup.sampling.replace(steps=options.steps)
        )
        self.sampling.validate(setup.model.config)
        self.progress = progress or (lambda line: None)
        self.device = next(setup.model.parameters()).device
        self.dtype = next(setup.model.parameters()).dtype
        self.memory = PeakMemory(self.device)
        caption = self._caption if setup.model.config.has_text and setup.text_encoder is None else None
        self.pipeline = Pipeline(setup.components(self.sampling), accel=options.accel, encode_caption=caption)
        self.family = self.pipeline.family
        engines = options.engines if options.engines is not None else self.family.ENGINES
        bad = [e for e in engines if e not in self.family.ENGINES]
        if bad:
            raise InputError(
                f"--engines {','.join(engines)}: a {setup.family} model runs {', '.join(self.family.ENGINES)}"
            )
        self.engine_names = tuple(engines)
        self.given_frames = 1 if setup.accepts_images else 0  # text-to-video families start from nothing
        n = self.sampling.chunk
        if self.family.WHOLE_BLOCKS:  # whole trained blocks: --frames rounds up
            self.chunks = [n] * -(-options.frames // n)
        else:
            self.chunks = chunk_lengths(options.frames, n)
        self.rows = self.family.model_rows(self.sampling, 1)

    def run(self) -> Report:
        opts = self.options
        environment = describe(self.device)
        # the pipeline's own denoisers, accelerated as `generate --compile` would be
        engines = {name: self.pipeline.denoiser(name, self.sampling, 1) for name in self.engine_names}
        attention = getattr(self.sampling, "attention", None)
        if opts.compare_dense and attention is not None and not attention.dense:
            # the same engine, dense: TempCache / AnnCA / AnnSA against dense in one run
            dense = self.sampling.replace(attention=type(attention)())
            engines = {"cache-dense": self.pipeline.denoiser("cache", dense, 1), **engines}
        given = self._given_frame() if self.given_frames else None
        traced: dict[str, list[Run]] = {name: [] for name in engines}
        trace = self.device.type != "cuda"  # CPU working memory comes from a traced untimed run
        if opts.warmup_steps > 0 or trace:
            minimum = 2 if self.sampling.sampler == "iddpm" else 1
            warm = self.sampling  # a few-step flow model runs its own list
            if self.sampling.sampler in ("iddpm", "ddim"):
                warm = self.sampling.replace(steps=max(opts.warmup_steps, minimum))
            for name, engine in engines.items():
                run = self._run_once(engine, given, warm, trace=trace)
                traced[name] = [run] if trace else []
                self.progress(f"warm-up {name} done" + (" (memory traced)" if trace else ""))
        runs: dict[str, list[Run]] = {name: [] for name in engines}
        for r in range(opts.repeat):
            for name, engine in engines.items():
                runs[name].append(self._run_once(engine, given, self.sampling))
                self.progress(f"run {r + 1}/{opts.repeat} {name}: {sum(runs[name][-1].step_s):.2f} s")
        peak = None
        if opts.measure_peak:
            peak = matmul_peak(self.device, self.dtype)
            self.progress(f"measured matmul peak {peak / 1e12:.2f} TFLOP/s")
        environment["end_load_average"] = describe(self.device)["load_average"]
        environment["matmul_peak_flops_per_s"] = peak
        environment["memory"] = {
            "peak": self.memory.kind,
            "per_step": "cuda allocated above the step's start (timed runs)"
            if self.device.type == "cuda"
            else "cpu tensor bytes above the step's start (profiler trace of the untimed warm-up run)",
        }
        results = [self._result(name, engines[name], runs[name], traced[name], peak) for name in engines]
        return Report(
            environment, self._settings(), results, self._per_step_cache(engines), speedups(results)
        )

    # ------------------------------------------------------------------ one run
    def _given_frame(self) -> np.ndarray:
        """A deterministic RGB frame (1, 1, H, W, 3) uint8: a colour gradient with seeded noise."""
        H, W = self.setup.height, self.setup.width
        ramp = torch.linspace(0, 255, W)[None, :, None].expand(H, W, 3)
        noise = seeded_noise([self.options.seed], "bench-frame", 0, (H, W, 3))[0] * 20
        return (ramp + noise).clamp(0, 255).to(torch.uint8)[None, None].numpy()

    def _caption(self, prompts: list[str]) -> tuple[Tensor | None, Tensor | None]:
        """Caption features of T5's shape standing in for a text encoder (random weights, no encoder)."""
        N, C = self.family.caption_shape(self.setup.model.config)
        y = seeded_noise([self.options.seed], "bench-caption", 0, (N, C)).to(self.device)
        return y, torch.ones(1, N, device=self.device)

    def _prefix(self, given: np.ndarray | None) -> Tensor | None:
        """The given frame's latents (1, c, 1, h, w): through the VAE, or seeded latents without one."""
        if given is None:
            return None
        if self.setup.vae is not None:
            return self.pipeline.encode_images(given, [self.options.seed])
        card = self.pipeline.card
        shape = (card.latent_channels, 1, *card.latent_size)
        return seeded_noise([self.options.seed], "bench-latent", 0, shape).to(self.device)

    def _run_once(self, engine: Any, given: np.ndarray | None, sampling: Any, trace: bool = False) -> Run:
        """One timed generation through the pipeline, with `engine` as its denoiser. Clock marks: start,
        given frame encoded, caption encoded, then per AR step its end ("denoised") and the end of its
        decoding (the chunk handed over)."""
        setup, opts, device, memory = self.setup, self.options, self.device, self.memory
        cuda = device.type == "cuda"
        tracer = TensorTrace() if trace else None
        synchronize(device)
        memory.reset()
        clock = StepTimer(device)
        step_peaks: list[int] = []
        peaks: list[int] = []
        decoding = opts.decode and setup.vae is not None
        window = contextlib.ExitStack()
        starts: list[int] = []

        def begin_step(k: int) -> None:
            peaks.append(memory.peak())
            memory.reset()
            starts.append(memory.current() if cuda else 0)
            if tracer is not None:
                window.enter_context(tracer.window(f"ar-step-{k}"))

        def on_event(event: ProgressEvent) -> None:
            if event.stage == "text":
                clock.mark()  # 2: caption encoded
            elif event.stage == "denoised":
                window.close()
                clock.mark()  # AR step k done
                if cuda:
                    step_peaks.append(memory.peak() - starts[-1])

        inputs = CheckedInputs(sampling, None, self.chunks)
        frames = self.given_frames + sum(self.chunks)
        request = GenerateRequest(prompt=opts.prompt, frames=frames, seed=opts.seed)
        with tracer if tracer is not None else contextlib.nullcontext():
            clock.mark()  # 0: start
            prefix = self._prefix(given)
            clock.mark()  # 1: given frame encoded
            chunks = self.pipeline.generate_batch(
                [request], on_event, inputs=[inputs], prefix=prefix, denoiser=engine, decode=decoding
            )
            # no synchronisation in this loop: CUDA times are events, CUDA peaks host-side allocator counts
            for k in itertools.count():
                begin_step(k)
                if next(chunks, None) is None:
                    window.close()
                    break
                clock.mark()  # decoded (a zero-length interval without decoding)
        gaps = clock.intervals()
        if tracer is not None:
            traced = tracer.peaks()
            step_peaks = [traced[f"ar-step-{k}"] for k in range(len(gaps[2:]) // 2)]
        encode_s, text_s, rest = gaps[0], gaps[1], gaps[2:]
        step_s, decode_s = rest[0::2], rest[1::2]
        cpu = clock.cpu_intervals()
        return Run(
            step_s=step_s,
            step_cpu_s=None if cpu is None else cpu[2::2],
            step_peak_bytes=step_peaks if (cuda or tracer is not None) else None,
            peak_bytes=max(peaks),
            e2e_s=sum(gaps),
            e2e_first_chunk_s=text_s + encode_s + step_s[0] + (decode_s[0] if decoding else 0.0),
            text_encode_s=text_s if setup.text_encoder is not None else None,
            vae_encode_s=encode_s if setup.vae is not None else None,
            vae_decode_s=sum(decode_s) if decoding else None,
        )

    # ------------------------------------------------------------------ results
    def _first_full(self) -> int:
        """Index of the first AR step that denoises against a full queue (given frames + chunks)."""
        written = self.given_frames
        for k, n in enumerate(self.chunks):
            if written >= self.sampling.cache_frames:
                return k
            written += n
        return len(self.chunks) - 1

    def _result(
        self,
        name: str,
        engine: Any,
        runs: list[Run],
        traced: list[Run],
        peak: float | None,
    ) -> EngineResult:
        flops = self.family.run_flops(  # dense-attention FLOPs (sparsity is measured, not modelled)
            self.setup.model.config,
            name.removesuffix("-dense"),
            rows=self.rows,
            prefix_frames=self.given_frames,
            chunks=self.chunks,
            sampling=self.sampling,
            latent_size=self.pipeline.card.latent_size,
        )
        cache = getattr(engine, "cache", None)  # the no-cache baselines hold none
        kv = 0 if cache is None else cache.nbytes
        scratch = getattr(cache, "scratch_nbytes", 0)
        result = EngineResult(name, runs, flops, kv, scratch, self.options.stat, memory_runs=traced)
        result.summary = summarise(result, sum(self.chunks), self._first_full(), peak)
        return result

    def _per_step_cache(self, engines: dict[str, Any]) -> dict[str, Any]:
        """Accounting only: one K|V slice per denoising step (Live2Diff-style) instead of one shared one."""
        cache = engines["cache"].cache if "cache" in engines else None
        shared = cache.nbytes if cache is not None else self.pipeline.cache_bytes(self.sampling)
        steps = self.sampling.steps
        return {
            "denoising_steps": steps,
            "kv_cache_bytes": steps * shared,
            "shared_cache_bytes": shared,
        }

    def _settings(self) -> dict[str, Any]:
        setup, opts = self.setup, self.options
        return {
            "model": setup.name,
            "weights": setup.source,
            "params": setup.params,
            "model_config": setup.model.config.to_dict(),
            "sampling": {  # the family's settings + the names every family answers to
                **self.sampling.to_dict(),
                "steps": self.sampling.steps,
                "sampler": self.sampling.sampler,
                "cache_frames": self.sampling.cache_frames,
            },
            "resolution": [setup.height, setup.width],
            "family": setup.family,
            "given_frames": self.given_frames,
            "generated_frames": sum(self.chunks),
            "chunks": self.chunks,
            "engines": list(self.engine_names),
            "dtype": str(self.dtype).removeprefix("torch."),
            "acceleration": opts.accel.label,
            "compile": opts.accel.compile,
            "cuda_graphs": opts.accel.cuda_graphs,
            "warmup_steps": opts.warmup_steps,
            "warmup_excluded": True,
            "repeat": opts.repeat,
            "stat": opts.stat,
            "decode": opts.decode and setup.vae is not None,
            "decode_batch": opts.decode_batch,
            "text_encoder": setup.text_encoder is not None,
            "prompt": opts.prompt,
            "seed": opts.seed,
        }

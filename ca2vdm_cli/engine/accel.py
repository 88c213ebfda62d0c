"""Running the denoising step close to the hardware: `torch.compile` of the cached step and of the full
forward, and CUDA-graph capture of the cached step.

A cached denoising step is planned once per AR step (`CausalSTDiT.plan_step`), so every step of a chunk
is the same computation on same-shaped tensors with no host synchronisation. `GraphedStep` captures it
once per plan key (chunk length × cached frames: four keys for the default 8-frame chunks and a 25-frame
queue, one once the queue is full) and afterwards only copies the new latents, timestep and per-AR-step
positions into the captured buffers and replays. The recompute baselines are left to the compiler: their
shapes change at every AR step until the condition is capped, and at XL/2 their steps are bound by
arithmetic rather than kernel launches.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ca2vdm_cli.errors import ConfigError

logger = logging.getLogger(__name__)

# a family's denoising step: (plan, x, t, prepared caption) -> model output; plans carry `key` and `inputs()`
StepFn = Callable[[Any, Tensor, Tensor, Any], Tensor]
CachedStep = PreparedText = Any


@dataclass(frozen=True)
class Acceleration:
    """What to apply to a model's hot paths; the default is plain eager PyTorch."""

    compile: bool = False
    cuda_graphs: bool = False
    compile_mode: str | None = None  # torch.compile mode; None = the default (no inductor CUDA graphs)

    @property
    def label(self) -> str:
        parts = (["compile"] if self.compile else []) + (["cuda-graphs"] if self.cuda_graphs else [])
        return "+".join(parts) or "eager"


def accelerate(model: Any, accel: Acceleration, device: torch.device) -> tuple[StepFn | None, Any]:
    """The model's cached step (`run_denoise`) and full forward to hand to its denoisers (None: the
    model's own), compiled and/or captured as `accel` says."""
    if accel.cuda_graphs and device.type != "cuda":
        raise ConfigError(f"--cuda-graphs needs a CUDA device, not {device.type}; drop --cuda-graphs")
    if not hasattr(model, "run_denoise"):  # no planned step (the causal Wan DiT): compile its denoise call
        if accel.cuda_graphs:
            raise ConfigError(
                "--cuda-graphs captures CausalSTDiT's planned step; a causal Wan model runs eager or with "
                "--compile: drop --cuda-graphs"
            )
        if accel.compile:  # one graph per visible-past length; the shapes settle once the window is full
            return torch.compile(model.denoise, dynamic=False, mode=accel.compile_mode), None
        return None, None
    step: StepFn | None = None
    forward = None
    if accel.compile:
        # static shapes per plan key: one graph per key, no dynamic-shape guards in the hot step
        step = torch.compile(model.run_denoise, dynamic=False, mode=accel.compile_mode)
        forward = torch.compile(model.forward, mode=accel.compile_mode)
    if accel.cuda_graphs:
        step = GraphedStep(step or model.run_denoise)
    return step, forward


# ----------------------------------------------------------------------------- CUDA graphs
@dataclass
class _Captured:
    graph: Any  # torch.cuda.CUDAGraph (or a stand-in with capture/replay in tests)
    plan: CachedStep  # the plan whose tensors the graph reads
    x: Tensor
    t: Tensor
    text: PreparedText | None
    out: Tensor | None = None


def cuda_graph_capture(fn: Callable[[], Tensor | None]) -> tuple[Any, Tensor | None]:
    """Capture fn() into a CUDA graph; returns the graph (with `.replay()`) and fn's output buffer."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


@dataclass
class GraphedStep:
    """A cached step replayed from one captured graph per plan key.

    Inputs are copied into the captured buffers: the latents and timestep at every call, the per-AR-step
    positions (`CachedStep.inputs`) when a new plan arrives, and the caption when it is not the captured
    one. The cache buffers are read in place, so the graph always sees the current queue. The output is
    cloned, because the next replay overwrites it. `warmup` eager runs precede each capture (lazy cuBLAS
    and allocator state must exist before capturing)."""

    fn: StepFn
    warmup: int = 2
    capture: Callable[[Callable[[], Tensor | None]], tuple[Any, Tensor | None]] = cuda_graph_capture
    graphs: dict[Hashable, _Captured] = field(default_factory=dict)

    def __call__(self, plan: CachedStep, x: Tensor, t: Tensor, text: PreparedText | None) -> Tensor:
        entry = self.graphs.get(plan.key)
        if entry is None:
            entry = self.graphs[plan.key] = self._capture(plan, x, t, text)
        else:
            self._load(entry, plan, x, t, text)
        entry.graph.replay()
        assert entry.out is not None
        return entry.out.clone()

    def _load(
        self, entry: _Captured, plan: CachedStep, x: Tensor, t: Tensor, text: PreparedText | None
    ) -> None:
        entry.x.copy_(x)
        entry.t.copy_(t)
        if plan is not entry.plan:
            for dst, src in zip(entry.plan.inputs(), plan.inputs(), strict=True):
                dst.copy_(src)
        if text is not entry.text:
            if (text is None) != (entry.text is None):
                raise ValueError("a captured step cannot switch between a caption and none")
            if text is not None and entry.text is not None:
                for dst, src in zip(entry.text.tensors(), text.tensors(), strict=True):
                    dst.copy_(src)

    def _capture(self, plan: CachedStep, x: Tensor, t: Tensor, text: PreparedText | None) -> _Captured:
        entry = _Captured(None, plan, x.clone(), t.clone(), text)
        side = torch.cuda.Stream() if x.device.type == "cuda" else None
        if side is not None:
            side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            for _ in range(self.warmup):
                self.fn(plan, entry.x, entry.t, text)
        if side is not None:
            torch.cuda.current_stream().wait_stream(side)
        entry.graph, entry.out = self.capture(lambda: self.fn(plan, entry.x, entry.t, text))
        logger.info("captured the denoising step for plan %s", plan.key)
        return entry

"""Option declarations shared by the rendering commands (`generate`, `batch`): each flag is declared once as
an `Annotated` alias, so both commands spell, type-check and document it the same way. Light: Typer only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

# ----------------------------------------------------------------------------- what to render
Prompt = Annotated[str | None, typer.Option("--prompt", "-p", metavar="TEXT", help="What the video shows.")]
Image = Annotated[
    list[Path] | None,
    typer.Option(
        "--image",
        "-i",
        metavar="PATH",
        help="First frame (repeat for a few leading frames); resized/cropped.",
    ),
]
Frames = Annotated[
    int | None,
    typer.Option(help="Total frames in the video, the --image frame(s) included. [default: 49]"),
]
Model = Annotated[
    str | None,
    typer.Option(metavar="NAME|DIR", help="Preset name or local model directory. [default: sprites]"),
]

# ----------------------------------------------------------------------------- sampling
Steps = Annotated[int | None, typer.Option(help="Denoising steps per chunk. [default: model card]")]
Sampler = Annotated[Literal["iddpm", "ddim"] | None, typer.Option(help="Sampler. [default: model card]")]
CfgScale = Annotated[
    float | None, typer.Option(help="Classifier-free guidance scale; 1 = off. [default: model card]")
]
Chunk = Annotated[int | None, typer.Option(help="Frames per AR step. [default: model card]")]
CacheFrames = Annotated[
    int | None, typer.Option(help="Clean frames kept in the KV cache. [default: model card]")
]
Window = Annotated[
    int | None,
    typer.Option(
        help="Causal Wan: attention window in latent frames, the block being denoised included; -1 = "
        "global. [default: model card]"
    ),
]
SinkFrames = Annotated[
    int | None,
    typer.Option(help="Causal Wan: first frames pinned in the window. [default: model card]"),
]
Positions = Annotated[
    Literal["absolute", "relative"] | None,
    typer.Option(
        help="Causal Wan: RoPE time positions of cached keys; relative = unbounded rollouts. "
        "[default: model card]"
    ),
]
KvCompress = Annotated[
    Literal["none", "tempcache"] | None,
    typer.Option(
        help="Causal Wan and CausalSTDiT: TempCache merges near-duplicate cached keys of consecutive "
        "frames (training-free; docs/tempcache.md). [default: none]"
    ),
]
TempcacheThreshold = Annotated[
    float | None,
    typer.Option(
        help="TempCache: cosine of cached keys (post-RoPE in causal Wan) at which they merge, in (0, 1]. "
        "[default: 0.95]"
    ),
]
TempcacheBudget = Annotated[
    int | None,
    typer.Option(help="Causal Wan TempCache: slots in frames of tokens. [default: the dense cache's]"),
]
TempcacheMaxCount = Annotated[
    int | None, typer.Option(help="TempCache: most keys one slot may merge. [default: unbounded]")
]
SparseCross = Annotated[
    Literal["none", "pad", "topk"] | None,
    typer.Option(
        help="Causal Wan: AnnCA; pad = the prompt's padding rows as one key (exact), topk = also keep the "
        "top --cross-topk prompt tokens per frame. [default: none]"
    ),
]
CrossTopk = Annotated[
    int | None, typer.Option(help="AnnCA topk: prompt tokens kept per frame. [default: 64]")
]
SparseSelf = Annotated[
    Literal["none", "lsh", "topk-blocks"] | None,
    typer.Option(
        help="Causal Wan: AnnSA; each query block reads the cached keys in its LSH buckets (or the "
        "--topk-density best key blocks), plus sink, previous frame and itself. [default: none]"
    ),
]
TopkDensity = Annotated[
    float | None, typer.Option(help="AnnSA topk-blocks: fraction of key blocks kept. [default: 0.25]")
]
LshBits = Annotated[int | None, typer.Option(help="AnnSA lsh: random-projection bits. [default: 6]")]
PrefixPerturbT = Annotated[
    int | None, typer.Option(help="Noise level (0-999) of frames written to the cache. [default: card]")
]

# ----------------------------------------------------------------------------- where and how
Device = Annotated[
    str | None, typer.Option(metavar="auto|cpu|cuda[:i]", help="Where to run. [default: auto]")
]
Dtype = Annotated[
    Literal["auto", "fp32", "bf16", "fp16"] | None,
    typer.Option(help="Weights/cache precision; auto = bf16 on CUDA, fp32 on CPU. [default: auto]"),
]
TextEncoder = Annotated[
    Literal["device", "cpu", "free"] | None,
    typer.Option(
        "--text-encoder",
        help="Text encoder on the run device, kept on the CPU, or freed after encoding. [default: on the "
        "device if the memory plan fits, else freed after encoding, else the CPU]",
    ),
]

Compile = Annotated[
    bool, typer.Option("--compile", help="torch.compile the denoising step (pays off on long videos).")
]
CudaGraphs = Annotated[
    bool, typer.Option("--cuda-graphs", help="Capture the cached denoising step in CUDA graphs (CUDA only).")
]

# ----------------------------------------------------------------------------- the video file
Fps = Annotated[float | None, typer.Option(help="Frames per second. [default: model card]")]
Crf = Annotated[
    int | None,
    typer.Option(help="Quality, lower is better: h264 0-51, av1 0-63, mpeg4 2-31. [default: 20, 35, 3]"),
]
Codec = Annotated[Literal["h264", "av1", "mpeg4"] | None, typer.Option(help="Video codec. [default: h264]")]

# ----------------------------------------------------------------------------- behaviour
Config = Annotated[Path | None, typer.Option(help="TOML file of settings (flags take precedence).")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Consent to downloading the model if needed.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")]


def _remember_debug(value: bool) -> bool:
    """`--debug` as parsed, for `main()` to decide how to report an error (tracebacks or one line)."""
    from ca2vdm_cli.cli import state

    state["debug"] = value
    return value


Debug = Annotated[
    bool, typer.Option("--debug", callback=_remember_debug, help="Show tracebacks and debug logs.")
]

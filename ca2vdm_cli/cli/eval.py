"""`ca2vdm eval`: score a sprites model on held-out seeds (presence, absence, direction, long-horizon drift,
chunk seams), with the full KV-cache queue and with the cache capped to 1 frame. JSON on stdout."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer

from ca2vdm_cli.cli import app, options

ROWS = (
    ("presence", "presence (all frames)"),
    ("presence_first", "presence, first 40"),
    ("presence_last", "presence, last 40"),
    ("absence", "absence of other colours"),
    ("absence_first", "absence, first 40"),
    ("absence_last", "absence, last 40"),
    ("direction", "direction correct (prompts)"),
    ("motion_first", "motion axes, first 40"),
    ("motion_last", "motion axes, last 40"),
    ("boundary_ratio", "boundary/inside change"),
)


def _table(results: dict[str, dict[str, float]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sprites eval")
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")
    for key, label in ROWS:
        cells = []
        for res in results.values():
            v = res.get(key, float("nan"))
            cells.append(f"{v:.3f}" if key == "boundary_ratio" else f"{100 * v:.1f}%")
        table.add_row(label, *cells)
    Console(stderr=True).print(table)


@app.command(name="eval")
def eval_(
    model: Annotated[str, typer.Option(help="Model directory or preset name.")] = "sprites",
    prompts: Annotated[int, typer.Option(min=1, help="Held-out scenes to generate per setting.")] = 32,
    frames: Annotated[
        int, typer.Option(min=48, help="Frames per video (the given first frame included).")
    ] = 240,
    modes: Annotated[
        str, typer.Option(help="Comma-separated: image (first frame given), text.")
    ] = "image,text",
    caches: Annotated[
        str,
        typer.Option(
            help="Comma-separated cache sizes: 'card' (the model's queue) and/or frame counts (1: none).",
        ),
    ] = "card,1",
    batch: Annotated[int, typer.Option(min=1, help="Videos generated together.")] = 8,
    seed_base: Annotated[int, typer.Option(help="First held-out seed (training uses seeds below 10^6).")] = 10
    ** 7,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the card's).")] = None,
    sampler: Annotated[str | None, typer.Option(help="iddpm | ddim (default: the card's).")] = None,
    cfg_scale: Annotated[
        float | None, typer.Option(help="Classifier-free guidance (default: the card's).")
    ] = None,
    kv_compress: options.KvCompress = None,
    tempcache_threshold: options.TempcacheThreshold = None,
    tempcache_max_count: options.TempcacheMaxCount = None,
    threads: Annotated[int, typer.Option(min=0, help="CPU threads (0: torch's default).")] = 0,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Score a sprites model on held-out seeds; prints a table on stderr and one JSON object on stdout.

    Example: ca2vdm eval --model weights/sprites --prompts 32 --frames 240
    (add --kv-compress tempcache --tempcache-threshold 0.95 to score TempCache against the same seeds)
    """
    import torch

    from ca2vdm_cli.cli.progress import quiet_libraries
    from ca2vdm_cli.cli.render import attention_options
    from ca2vdm_cli.cli.settings import resolve_model_dir
    from ca2vdm_cli.errors import InputError
    from ca2vdm_cli.sprites.evaluate import evaluate_model, evaluate_world
    from ca2vdm_cli.store.modeldir import load_model_dir

    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    if not chosen or any(m not in ("image", "text") for m in chosen):
        raise InputError(f"--modes {modes!r}: use image, text or image,text")
    sizes = []
    for item in (c.strip() for c in caches.split(",") if c.strip()):
        if item != "card" and not (item.isdigit() and int(item) >= 1):
            raise InputError(f"--caches {caches!r}: use 'card' and/or frame counts >= 1, e.g. card,1")
        sizes.append(None if item == "card" else int(item))
    if not sizes:
        raise InputError("--caches is empty; use card,1")
    attention = attention_options(  # checked before the model loads
        dict(
            kv_compress=kv_compress,
            tempcache_threshold=tempcache_threshold,
            tempcache_max_count=tempcache_max_count,
        )
    )
    if threads:
        torch.set_num_threads(threads)
    quiet_libraries(debug)
    components = load_model_dir(resolve_model_dir(model), "cpu", torch.float32)
    if "text" in chosen and not components.card.text_to_video:
        raise InputError(f"model {components.card.name!r} cannot start from text; use --modes image")
    card = components.card
    overrides = {"steps": steps, "sampler": sampler, "cfg_scale": cfg_scale, "attention": attention}
    sampling = card.sampling.replace(**{k: v for k, v in overrides.items() if v is not None})
    sampling.validate(card.model)
    settings = [(m, cap) for cap in sizes for m in chosen]
    results: dict[str, dict[str, float]] = {
        "world": evaluate_world(prompts, frames, card.sampling.chunk, seed_base)
    }
    for mode, cap in settings:
        name = f"{mode}, cache {cap if cap else card.sampling.cache_frames}"
        started = time.perf_counter()

        def report(done: int, total: int, name: str = name) -> None:
            print(f"{name}: {done}/{total} videos", file=sys.stderr, flush=True)

        with torch.inference_mode():
            res = evaluate_model(
                components,
                num_prompts=prompts,
                num_frames=frames,
                mode=mode,
                cache_frames=cap,
                sampling=sampling,
                batch=batch,
                seed_base=seed_base,
                on_batch=report,
            )
        res["seconds"] = time.perf_counter() - started
        results[name] = res
    _table(results)
    print(
        json.dumps(
            {
                "model": card.name,
                "prompts": prompts,
                "frames": frames,
                "sampling": sampling.to_dict(),
                "results": results,
            }
        ),
        flush=True,
    )

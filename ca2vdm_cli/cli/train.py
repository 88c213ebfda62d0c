"""`ca2vdm train`: train a causal Ca2-VDM from a recipe (from scratch, or fine-tuning a preset) and export a
model directory. Multi-process with torchrun: `torchrun --nproc_per_node N -m ca2vdm_cli train ...`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from ca2vdm_cli.cli import app

STAGE_HELP = "Comma-separated stages to run, in order: vae, latents, dit, export."


class _Progress:
    """Rich progress on stderr (loss, it/s, ETA) for the stage being trained; rank 0 only."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} it/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> _Progress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, stage: str, step: int, total: int, metrics: dict[str, float]) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total, completed=step, loss="-", rate="-")
        fields = {}
        if metrics:
            fields = {
                "loss": f"{metrics['loss']:.4f}",
                "rate": f"{1 / max(metrics['sec_per_step'], 1e-9):.2f}",
            }
        self.progress.update(self.tasks[stage], completed=step, **fields)


def _setup_logging(rank: int, quiet: bool, rich_console=None) -> None:
    level = logging.WARNING if quiet or rank != 0 else logging.INFO
    if rich_console is not None:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=rich_console, show_path=False, show_level=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("ca2vdm_cli")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@app.command()
def train(
    config: Annotated[
        str, typer.Option("--config", "-c", help="Recipe: a TOML/JSON file or a built-in name (sprites).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (checkpoints, caches, model/).")],
    init: Annotated[
        str | None,
        typer.Option(
            help="Fine-tune a preset (e.g. opensora-v1-256) or a model directory instead of --config's card."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a recipe value, e.g. --set train.steps=100.")
    ] = None,
    stages: Annotated[str, typer.Option(help=STAGE_HELP)] = "vae,latents,dit,export",
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoints in --out.")] = False,
    device: Annotated[
        str, typer.Option(help="auto | cpu | cuda | cuda:N (torchrun: one GPU per rank).")
    ] = "auto",
    threads: Annotated[int, typer.Option(min=0, help="CPU threads per process (0: torch's default).")] = 0,
    quiet: Annotated[bool, typer.Option(help="Only warnings and the result.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Train a causal Ca2-VDM with the clean-prefix objective and write OUT/model (a model directory).

    Examples: ca2vdm train --config sprites --out runs/sprites;
    torchrun --nproc_per_node 8 -m ca2vdm_cli train --config my.toml --init opensora-v1-256 --out runs/ft
    """
    import torch

    from ca2vdm_cli.cli.progress import quiet_libraries
    from ca2vdm_cli.errors import ConfigError
    from ca2vdm_cli.train.checkpoint import list_checkpoints
    from ca2vdm_cli.train.loop import init_distributed
    from ca2vdm_cli.train.recipe import load_recipe, override
    from ca2vdm_cli.train.run import STAGES, train_all

    chosen = tuple(s.strip() for s in stages.split(",") if s.strip())
    bad = [s for s in chosen if s not in STAGES]
    if bad or not chosen:
        raise ConfigError(f"--stages {stages!r}: unknown {bad}; choose from {','.join(STAGES)}")
    if threads:
        torch.set_num_threads(threads)
    recipe = override(load_recipe(config), set_ or [])
    info = init_distributed(device)
    if not resume and any(
        list_checkpoints(out / "checkpoints" / s) for s in ("vae", "decoder", "dit") if s in chosen
    ):
        raise ConfigError(
            f"{out} already holds checkpoints; pass --resume to continue, or choose another --out"
        )

    interactive = info.is_main and not quiet and sys.stderr.isatty()
    progress = _Progress() if interactive else None
    _setup_logging(info.rank, quiet, progress.console if progress else None)
    quiet_libraries(debug)
    if progress is not None:
        with progress:
            result = train_all(recipe, out, info, init=init, stages=chosen, on_log=progress)
    else:
        result = train_all(recipe, out, info, init=init, stages=chosen)
    if info.world_size > 1:
        torch.distributed.destroy_process_group()
    if info.is_main and result is not None:
        print(result, flush=True)

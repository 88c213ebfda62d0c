"""`ca2vdm download PRESET`: fetch, verify and convert a model; print its local paths on stdout."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from ca2vdm_cli.cli import app


def _log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("ca2vdm_cli")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


@app.command()
def download(
    preset: Annotated[str, typer.Argument(help="A preset from `ca2vdm models`, or a model card .json file.")],
    weights: Annotated[
        Path | None,
        typer.Option("--weights", help="Local official checkpoint, for the ca2vdm-official-* presets."),
    ] = None,
    revision: Annotated[
        str | None,
        typer.Option(
            "--revision", help="Use this revision of the transformer repo instead of the pinned one."
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Keep everything here (DIR/hub for Hub files, DIR/models for converted models) instead of "
            "the Hugging Face cache and the user cache.",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before a large download.")] = False,
) -> None:
    """Download a model into the Hugging Face cache, verify every file's checksum, convert the transformer to
    safetensors once, and print the model directory (first line; pass it to --model) and the files it uses.

    A card that leaves a revision null (the causal Wan presets) is pinned on its first download: the repo's
    current commit, and every file's size and sha256, are recorded in <cache>/models/PRESET/pins.json and
    are the only ones trusted afterwards (delete that file to pin again).

    Honours HF_TOKEN, HF_ENDPOINT (mirrors) and HF_HUB_OFFLINE. Progress goes to stderr.
    """
    from ca2vdm_cli.store.card import read_card
    from ca2vdm_cli.store.presets import embedded_dir, load_preset
    from ca2vdm_cli.store.weights import prepare

    _log_to_stderr()
    built_in = embedded_dir(preset)
    if built_in is not None:  # shipped inside the package: nothing to download
        print(built_in, flush=True)
        return
    path = Path(preset).expanduser()
    card = read_card(path) if path.suffix == ".json" and path.is_file() else load_preset(preset)

    def consent(message: str) -> bool:
        if yes or not sys.stdin.isatty():  # running the command is the consent; ask only at a terminal
            return True
        return typer.confirm(message, default=True, err=True)

    result = prepare(card, weights=weights, cache_dir=cache_dir, consent=consent, revision=revision)
    print(result.directory, flush=True)
    for file in result.files:
        print(file, flush=True)

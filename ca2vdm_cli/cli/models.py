"""`ca2vdm models`: the table of models this build knows (presets and the embedded default), on stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ca2vdm_cli.cli import app


@app.command()
def models(
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help="Look for downloaded models here (as given to `ca2vdm download`)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per model instead.")] = False,
) -> None:
    """List the models: resolution, parameters, download size, whether it is cached, licence, purpose.

    Use a name with `ca2vdm download NAME` or `ca2vdm generate --model NAME`.
    """
    from rich.console import Console
    from rich.table import Table

    from ca2vdm_cli.store.pins import cache_status
    from ca2vdm_cli.store.presets import card_summary, load_preset, preset_names

    rows = []
    for name in preset_names():
        card = load_preset(name)
        row = card_summary(card)
        row["params"] = f"{card.spec.param_count(card.model) / 1e6:.1f}M"
        row["cached"] = cache_status(card, cache_dir)
        rows.append(row)
    if as_json:
        for row in rows:
            print(json.dumps(row), flush=True)
        return
    columns = ["name", "resolution", "params", "download", "cached", "license", "use"]
    table = Table(*columns, title=None, box=None, header_style="bold")
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    console = Console(file=sys.stdout, soft_wrap=False, width=None if sys.stdout.isatty() else 200)
    console.print(table)

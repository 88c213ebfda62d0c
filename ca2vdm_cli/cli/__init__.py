"""The `ca2vdm` command line: a Typer app whose commands live one per module in this package.

Only this package prints. Heavy libraries (torch, diffusers, transformers) are imported inside the
commands, so `ca2vdm --help` stays instant. Known errors (`Ca2VDMError`) become one line on stderr with
exit code 1; `--debug` shows the traceback instead. Usage errors keep Typer's exit code 2.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ca2vdm_cli import __version__
from ca2vdm_cli.errors import Ca2VDMError

app = typer.Typer(
    name="ca2vdm",
    help="Generate long videos with Ca2-VDM, a causal autoregressive video diffusion transformer.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=True,
    rich_markup_mode=None,
)

state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        print(f"ca2vdm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Generate long videos with Ca2-VDM, a causal autoregressive video diffusion transformer."""


def fail(message: str) -> None:
    """Print one error line on stderr."""
    print(f"error: {message}", file=sys.stderr, flush=True)


def main() -> None:
    """Console-script entry point: run the app, turning known errors into one line and exit code 1."""
    from ca2vdm_cli.cli import commands  # noqa: F401  (registers the commands)

    try:
        app()  # standalone: usage errors print and exit 2, typer.Exit carries its code
    except KeyboardInterrupt:
        fail("interrupted")
        sys.exit(130)
    except Ca2VDMError as exc:
        if state["debug"]:  # set by the commands' --debug option while parsing
            raise
        fail(str(exc))
        sys.exit(1)

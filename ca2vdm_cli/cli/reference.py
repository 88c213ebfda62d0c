"""The CLI reference (`docs/cli.md`), built from the `--help` of every command.

`render_reference()` returns the markdown; `python -m ca2vdm_cli.cli.reference > docs/cli.md` regenerates
the file, and `tests/test_docs.py` checks that the committed file equals it. The help is rendered by Click
at a fixed width with colours off, so the output does not depend on the terminal it runs in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

WIDTH = 100
REGENERATE = "python -m ca2vdm_cli.cli.reference > docs/cli.md"

HEADER = f"""# CLI reference

<!-- Generated from the `--help` of every command; do not edit by hand. Regenerate with:
     {REGENERATE} -->

This page is generated from the `--help` output of every `ca2vdm` command. Regenerate it with

    {REGENERATE}

(a test fails when it is stale). The [README](../README.md) and the other pages in this folder
explain the commands; this one lists every option as the program states it.
"""

_ENV = {"COLUMNS": str(WIDTH), "LINES": "50", "NO_COLOR": "1", "TERM": "dumb", "FORCE_COLOR": None}


def _app() -> Any:
    from ca2vdm_cli.cli import app, commands

    del commands  # imported for its side effect: it registers the commands on the app
    return app


def _walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Yield the argument path of the command and of every (sub)command under it, in --help order."""
    yield path
    if hasattr(command, "list_commands"):  # a group (Typer bundles its own copy of Click)
        ctx = command.context_class(command, info_name="ca2vdm")
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, (*path, name))


def _help(app: Any, path: tuple[str, ...]) -> str:
    from typer.testing import CliRunner

    runner = CliRunner()
    result = runner.invoke(
        app,
        [*path, "--help"],
        prog_name="ca2vdm",
        env=_ENV,
        color=False,
        terminal_width=WIDTH,
        max_content_width=WIDTH,
    )
    if result.exit_code != 0:
        command = " ".join(("ca2vdm", *path))
        raise RuntimeError(f"`{command} --help` exited with {result.exit_code}:\n{result.output}")
    lines = [line.rstrip() for line in result.output.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def render_reference() -> str:
    """The markdown of docs/cli.md: one section per command, each holding that command's --help."""
    import typer

    app = _app()
    paths = list(_walk(typer.main.get_command(app)))
    parts = [HEADER, "## Commands\n"]
    for path in paths[1:]:
        name = " ".join(path)
        parts.append(f"- [`ca2vdm {name}`](#ca2vdm-{'-'.join(path)})")
    parts.append("")
    for path in paths:
        title = " ".join(("ca2vdm", *path))
        parts.append(f"## `{title}`\n")
        parts.append("```text")
        parts.append(f"$ {title} --help")
        parts.append(_help(app, path))
        parts.append("```\n")
    return "\n".join(parts).rstrip("\n") + "\n"


def main() -> None:
    """Print the reference to stdout."""
    print(render_reference(), end="")


if __name__ == "__main__":
    main()

"""Imports every command module so that each registers itself on the app."""

from ca2vdm_cli.cli import batch, bench, download, generate, info, models  # noqa: F401

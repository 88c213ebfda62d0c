"""Imports every command module so that each registers itself on the app."""

from ca2vdm_cli.cli import generate, batch, info  # noqa: F401, I001  (registration order = --help order)
from ca2vdm_cli.cli import bench, download, models  # noqa: F401
from ca2vdm_cli.cli import train, eval  # noqa: F401

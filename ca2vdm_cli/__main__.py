"""`python -m ca2vdm_cli` runs the command-line interface."""

from ca2vdm_cli.cli import main

main()

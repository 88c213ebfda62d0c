"""Packaging and start-up: the console script resolves, `--help` is instant and imports no torch."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_console_script_target_exists():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for target in scripts.values():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr))


def test_help_is_fast_and_does_not_import_torch():
    code = (
        "import sys, runpy; sys.argv = ['ca2vdm', '--help']\n"
        "try:\n    runpy.run_module('ca2vdm_cli', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'av') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    elapsed = time.perf_counter() - start
    assert "Usage" in out.stdout and "HEAVY []" in out.stdout
    assert elapsed < 3.0  # generous for a loaded CI machine; typically ~0.3 s


def test_version_and_usage_error_exit_codes():
    ok = subprocess.run(
        [sys.executable, "-m", "ca2vdm_cli", "--version"], capture_output=True, text=True, cwd=ROOT
    )
    assert ok.returncode == 0 and ok.stdout.startswith("ca2vdm ")
    bad = subprocess.run(
        [sys.executable, "-m", "ca2vdm_cli", "--no-such-flag"], capture_output=True, text=True, cwd=ROOT
    )
    assert bad.returncode == 2 and "No such option" in bad.stderr and bad.stdout == ""


def test_importing_the_package_has_no_side_effects():
    code = (
        "import ca2vdm_cli, ca2vdm_cli.models.stdit.config, ca2vdm_cli.errors, sys; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"

"""`ca2vdm eval`: bad options fail fast with one message; a run on a tiny model prints one JSON object."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ca2vdm_cli.cli import (
    app,
    commands,  # noqa: F401  (registers the commands)
)
from ca2vdm_cli.errors import InputError
from tests.factories import write_tiny_model_dir


def test_bad_options(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--model", str(tmp_path), "--modes", "video"])
    assert isinstance(res.exception, InputError) and "--modes" in str(res.exception)
    res = runner.invoke(app, ["eval", "--model", str(tmp_path), "--caches", "card,0"])
    assert isinstance(res.exception, InputError) and "--caches" in str(res.exception)


def test_eval_tiny_model_prints_json(tmp_path):
    model = write_tiny_model_dir(tmp_path / "m")
    args = [
        "eval",
        "--model",
        str(model),
        "--modes",
        "text",
        "--prompts",
        "2",
        "--frames",
        "48",
        "--threads",
        "1",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(report["results"]) == {"world", "text, cache 8", "text, cache 1"}
    world = report["results"]["world"]
    assert world["presence"] > 0.95 and world["direction"] == 1.0
    for row in report["results"].values():
        assert 0 <= row["presence"] <= 1 and 0 <= row["absence"] <= 1 and row["videos"] == 2

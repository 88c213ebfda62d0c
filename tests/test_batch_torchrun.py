"""`torchrun --nproc-per-node=2 -m ca2vdm_cli batch -` on the CPU (gloo), for real: rank 0 reads stdin and
shares the lines, the items are sharded so every item is rendered exactly once, and both ranks write their
JSON lines to the one stdout without mixing them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ca2vdm_cli.engine.jobs import output_name, parse_jobs
from ca2vdm_cli.media.video import probe_video
from tests.cli_helpers import ROOT, cli_env
from tests.factories import write_tiny_model_dir

PROMPTS = ["one", "two", "three", '{"prompt": "four", "seed": 2, "frames": 3}', "five"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny")


def test_two_ranks_render_every_item_exactly_once(model_dir, tmp_path):
    out_dir = tmp_path / "renders"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "ca2vdm_cli", "batch", "-", "--model", str(model_dir), "--frames", "5", "--steps", "2",
        "--device", "cpu", "--out-dir", str(out_dir),
    ]  # fmt: skip
    done = subprocess.run(
        command,
        input="# five items for two ranks\n" + "\n".join(PROMPTS) + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=cli_env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]  # stdout: JSON lines and nothing else
    assert sorted(r["line"] for r in results) == [2, 3, 4, 5, 6]  # each item reported once
    assert all(r["status"] == "ok" for r in results)
    for r in results:  # items are dealt round-robin: item i (line i + 2) on rank i % 2
        assert r["rank"] == (r["line"] - 2) % 2
    items = parse_jobs(PROMPTS)
    expected = sorted(str(out_dir / output_name(item)) for item in items)
    assert sorted(r["path"] for r in results) == expected  # distinct files: nothing rendered twice
    assert sorted(probe_video(p).frames for p in expected) == [3, 5, 5, 5, 5]
    # each rank loaded the model once and rendered only its share
    assert (
        done.stderr.count("rank 0/2: model tiny (") == 1 and done.stderr.count("rank 1/2: model tiny (") == 1
    )
    assert "rank 0/2: batch: 3 of 3 items, 3 ok" in done.stderr
    assert "rank 1/2: batch: 2 of 2 items, 2 ok" in done.stderr

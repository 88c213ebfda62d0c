"""The optimisation loop: the loss function draws allowed prefix lengths, training moves the weights and
the EMA, a resumed run is exactly the uninterrupted one, and a 2-process torchrun (gloo) ends with identical
weights on both ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ca2vdm_cli.train.checkpoint import list_checkpoints, load_checkpoint
from ca2vdm_cli.train.loop import DistInfo, step_generator
from ca2vdm_cli.train.objective import allowed_prefix_lengths
from tests.train_helpers import tiny_trainer

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
ROOT = Path(__file__).resolve().parents[1]


def test_loss_fn_draws_prefix_lengths_from_the_allowed_set(tmp_path):
    trainer = tiny_trainer(tmp_path, CPU)
    card_allowed = set(allowed_prefix_lengths(4, 8, p_zero=0.2, t2v=True))  # tiny card: chunk 4, cache 8
    seen = set()
    for step in range(16):
        with torch.no_grad():
            out = trainer.loss_fn(trainer.module, step, step_generator(0, "t", 0, step), CPU.device)
        seen.add(int(out["prefix_len"]))
        assert torch.isfinite(out["loss"])
    assert seen <= card_allowed and len(seen) >= 3


def test_training_updates_weights_and_ema(tmp_path):
    trainer = tiny_trainer(tmp_path, CPU, steps=3)
    before = {k: v.clone() for k, v in trainer.params.items()}
    trainer.fit()
    assert trainer.step == 3
    changed = [k for k, v in trainer.params.items() if not torch.equal(v, before[k])]
    assert "model.final_layer.linear.weight" in changed and any(
        k.startswith("text_encoder.") for k in changed
    )
    k = "model.final_layer.linear.weight"
    assert not torch.equal(trainer.ema[k], before[k]) and not torch.equal(trainer.ema[k], trainer.params[k])
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]


def test_resume_is_exact(tmp_path):
    straight = tiny_trainer(tmp_path / "a", CPU, steps=4)
    straight.fit()

    first = tiny_trainer(tmp_path / "b", CPU, steps=4)
    while first.step < 2:
        first.train_step()
    first.save()
    ckpt = load_checkpoint(list_checkpoints(tmp_path / "b")[-1][1])
    assert ckpt["step"] == 2
    resumed = tiny_trainer(tmp_path / "b", CPU, steps=4)
    assert resumed.resume() and resumed.step == 2
    for name, value in first.ema.items():
        assert torch.equal(resumed.ema[name], value)
    resumed.fit()

    assert resumed.step == straight.step == 4
    for name, value in straight.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[name], value), name
    for name, value in straight.ema.items():
        assert torch.equal(resumed.ema[name], value), name
    a, b = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for index, state in a["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(b["state"][index][key]), torch.as_tensor(value)), (index, key)


def test_torchrun_two_processes_end_with_identical_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests" / "train_helpers.py"),
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    initial = tiny_trainer(tmp_path / "init", CPU).module.state_dict()
    assert not torch.equal(
        initial["model.final_layer.linear.weight"], rank0["model.final_layer.linear.weight"]
    )
    assert [s for s, _ in list_checkpoints(tmp_path / "ckpt")] == [2, 3]  # written once, by rank 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_step_on_cuda(tmp_path):
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cuda"))
    trainer = tiny_trainer(tmp_path, info, steps=2, mixed_precision="bf16")
    assert trainer.amp_dtype == torch.bfloat16
    trainer.fit()
    assert trainer.step == 2 and all(torch.isfinite(v).all() for v in trainer.ema.values())

"""Rank and device selection for torchrun runs (the real 2-process run is in test_batch_process.py)."""

from __future__ import annotations

import pytest
import torch

from ca2vdm_cli.engine.distributed import Ranks, rank_device, share_from_rank0
from ca2vdm_cli.errors import InputError


def test_ranks_come_from_the_torchrun_environment():
    assert Ranks.from_env({}) == Ranks(0, 1, 0) and not Ranks.from_env({}).distributed
    ranks = Ranks.from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert ranks == Ranks(5, 8, 1) and ranks.distributed
    with pytest.raises(InputError, match="RANK=8 is outside 0..WORLD_SIZE-1"):
        Ranks.from_env({"RANK": "8", "WORLD_SIZE": "8"})
    with pytest.raises(InputError, match="must be integers; start multi-process runs with torchrun"):
        Ranks.from_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_each_rank_gets_its_own_device():
    alone, rank1 = Ranks(), Ranks(1, 2, 1)
    assert rank_device(alone, "cpu") == torch.device("cpu")
    assert rank_device(rank1, "cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="each rank uses its own GPU, cuda:LOCAL_RANK; pass --device cuda"):
        rank_device(rank1, "cuda:0")
    if torch.cuda.is_available():
        if torch.cuda.device_count() > 1:
            assert rank_device(rank1, "auto") == torch.device("cuda", 1)
        else:
            with pytest.raises(InputError, match="LOCAL_RANK 1 but this node has 1 CUDA device"):
                rank_device(rank1, "cuda")
    else:
        assert rank_device(rank1, "auto") == torch.device("cpu")  # no GPU: every rank on the CPU
        with pytest.raises(InputError, match="CUDA is not available"):
            rank_device(rank1, "cuda")
    with pytest.raises(InputError, match="is not one of auto, cpu"):
        rank_device(rank1, "tpu")


def test_a_single_process_shares_without_a_process_group():
    assert share_from_rank0(["a", "b"], Ranks(), torch.device("cpu")) == ["a", "b"]

"""Shared fixtures: tiny CausalSTDiT models whose every branch (including the zero-initialised ones)
carries weight, so equality tests have teeth; isolated user/cache directories; no network."""

from __future__ import annotations

import os

import pytest
import torch

from ca2vdm_cli.models.stdit.config import ModelConfig
from ca2vdm_cli.models.stdit.model import CausalSTDiT

TINY = dict(
    latent_size=(8, 8),
    hidden_size=64,
    depth=3,
    num_heads=4,
    caption_channels=32,
    model_max_length=7,
    max_tpe_len=33,
    tpe_mode="cyclic",
    mask_channel=True,
    pe_mode="prev_frames",
    pe_frames=3,
)


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**TINY, **overrides})


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> CausalSTDiT:
    """A tiny model with random weights everywhere (zero-init projections perturbed too)."""
    torch.manual_seed(seed)
    model = CausalSTDiT(tiny_config(**overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.to(dtype).eval()


def caption(batch: int, cfg: ModelConfig, seed: int = 1, dtype: torch.dtype = torch.float32):
    """Random caption features and a mask with a different number of valid tokens per sample."""
    if not cfg.has_text:
        return None, None
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(batch, cfg.model_max_length, cfg.caption_channels, generator=g, dtype=dtype)
    mask = torch.ones(batch, cfg.model_max_length)
    for b in range(batch):
        mask[b, cfg.model_max_length - 1 - b :] = 0  # sample b has N-1-b valid tokens
    return y, mask


def sample_chunks(
    model, config, engine="cache", frames=24, seeds=(1, 2), prefix_frames=1, **kw
) -> list[torch.Tensor]:
    """The chunks `sample_video` yields for a random latent prefix of `prefix_frames` frames (8×8) and the
    test caption, one sample per seed."""
    from ca2vdm_cli.models.stdit.family import sample_video

    B = len(seeds)
    g = torch.Generator().manual_seed(9)
    prefix = torch.randn(B, 4, prefix_frames, 8, 8, generator=g) if prefix_frames else None
    y, mask = caption(B, model.config, dtype=next(model.parameters()).dtype)
    return list(
        sample_video(
            model,
            config,
            num_frames=frames,
            seeds=list(seeds),
            prefix=prefix,
            y=y,
            y_mask=mask,
            engine=engine,
            **kw,
        )
    )


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory, monkeypatch):
    """Point every cache/config directory at a temp dir and forbid hub network access."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "1"))
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield

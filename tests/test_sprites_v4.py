"""The pooled-caption conditioning and the foreground-weighted loss of the sprites v4 recipe (issue 12)."""

import numpy as np
import pytest
import torch

from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.models.stdit.config import ModelConfig
from ca2vdm_cli.models.stdit.flops import caption_flops
from ca2vdm_cli.models.stdit.model import CausalSTDiT
from ca2vdm_cli.models.stdit.sizes import count_parameters
from ca2vdm_cli.sampling.ddpm import Diffusion
from ca2vdm_cli.sprites import world
from ca2vdm_cli.train.data import LatentClips, foreground_masks, load_clips, save_clips
from ca2vdm_cli.train.losses import training_losses
from ca2vdm_cli.train.objective import foreground_weight
from ca2vdm_cli.train.recipe import TrainSettings
from tests.conftest import caption, tiny_config, tiny_model


def _cfg(**kw) -> ModelConfig:
    return tiny_config(depth=1, **kw)


def test_pooled_caption_is_off_by_default_and_adds_only_the_pooler_keys():
    plain, pooled = CausalSTDiT(_cfg()), CausalSTDiT(_cfg(pooled_caption=True))
    extra = set(pooled.state_dict()) - set(plain.state_dict())
    assert extra == {f"y_pooler.fc{i}.{w}" for i in (1, 2) for w in ("weight", "bias")}
    assert set(plain.state_dict()) <= set(pooled.state_dict())
    assert count_parameters(pooled.config) == sum(p.numel() for p in pooled.parameters())
    assert caption_flops(pooled.config, 2) > caption_flops(plain.config, 2)
    with pytest.raises(ConfigError, match="pooled_caption"):
        _cfg(pooled_caption=True, caption_channels=0)


def test_pooled_caption_starts_as_a_no_op_for_fine_tuning_but_not_from_scratch():
    model = CausalSTDiT(_cfg(pooled_caption=True))
    assert model.y_pooler.fc2.weight.abs().sum() == 0  # zero_init_new=True (the default)
    model.initialize_weights(zero_init_new=False)
    assert model.y_pooler.fc2.weight.abs().sum() > 0


def test_pooled_caption_moves_the_output_through_the_timestep_embedding_only_over_valid_tokens():
    model = tiny_model(pooled_caption=True)
    cfg = model.config
    y, mask = caption(2, cfg)
    x = torch.randn(2, cfg.in_channels, 3, *cfg.latent_size)
    t = torch.tensor([500.0, 500.0])
    with torch.no_grad():
        text = model.prepare_text(y, mask, 2)
        assert text.pooled is not None and text.pooled.shape == (2, cfg.hidden_size)
        # padding tokens do not enter the pooled vector
        y2 = y.clone()
        y2[mask == 0] = 100.0
        assert torch.allclose(model.prepare_text(y2, mask, 2).pooled, text.pooled, atol=1e-6)
        # the pooled vector changes the output (beyond what cross-attention does): switch it off
        out = model(x, t, y, mask)
        model.y_pooler.fc2.weight.zero_()
        model.y_pooler.fc2.bias.zero_()
        assert (model(x, t, y, mask) - out).abs().max() > 1e-3


def test_foreground_masks_mark_the_sprites_with_a_margin():
    scene = world.sample_scene(3, num_sprites=1)
    px = world.render(scene, 2)[None]  # (1, 2, 64, 64, 3)
    m = foreground_masks(px, (16, 16))
    assert m.shape == (1, 2, 16, 16) and m.dtype == torch.uint8
    s = scene.sprites[0]
    cy, cx = (s.y + s.size // 2) // 4, (s.x + s.size // 2) // 4
    assert m[0, 0, cy, cx] == 1
    assert m[0, 0, 0:1].sum() + m[0, 0].sum() < 16 * 16  # not everything
    assert 0 < float(m.float().mean()) < 0.5
    black = np.zeros((1, 1, 64, 64, 3), dtype=np.uint8)
    assert foreground_masks(black, (16, 16)).sum() == 0


def test_masks_round_trip_through_the_latent_cache(tmp_path):
    fg = torch.randint(0, 2, (3, 5, 4, 4), dtype=torch.uint8)
    clips = LatentClips(torch.randn(3, 5, 2, 4, 4).half(), ["a", "b", "c"], True, fg)
    save_clips(tmp_path / "l.safetensors", clips, {"x": 1})
    back = load_clips(tmp_path / "l.safetensors", {"x": 1})
    assert torch.equal(back.foreground, fg)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x_a, cap_a, m = back.sample_with_foreground(g1, 4, 3, from_start=False)
    x_b, cap_b = back.sample(g2, 4, 3, from_start=False)
    assert torch.equal(x_a, x_b) and cap_a == cap_b and m.shape == (4, 3, 4, 4)
    old = LatentClips(clips.latents, clips.captions, True)
    save_clips(tmp_path / "old.safetensors", old, {"x": 1})
    assert load_clips(tmp_path / "old.safetensors").foreground is None


def test_foreground_weighted_mse_is_a_weighted_mean():
    d = Diffusion(1000)
    B, c, T, H, W = 2, 2, 3, 4, 4
    x0, noise = torch.randn(B, c, T, H, W), torch.randn(B, c, T, H, W)
    t = torch.tensor([10, 700])
    x_t = d.q_sample(x0, t, noise)
    out = torch.randn(B, c, T, H, W)  # no learned variance: the MSE term only
    frames = torch.tensor([[0, 1, 1], [0, 0, 1]], dtype=torch.float32)
    fg = torch.zeros(B, T, H, W)
    fg[:, :, 0, 0] = 1
    w = foreground_weight(fg, 5.0, x0.shape)
    weighted = training_losses(d, out, x0, x_t, t, noise, frames, weight=w)["mse"]
    err = (d.target(x0, t, noise) - out) ** 2 * frames[:, None, :, None, None]
    ww = w * frames[:, None, :, None, None]
    expect = (err * w).sum((1, 2, 3, 4)) / ww.expand_as(err).sum((1, 2, 3, 4))
    assert torch.allclose(weighted, expect)
    ones = training_losses(d, out, x0, x_t, t, noise, frames, weight=torch.ones_like(w))["mse"]
    assert torch.allclose(ones, training_losses(d, out, x0, x_t, t, noise, frames)["mse"])
    assert not torch.allclose(weighted, ones)


def test_foreground_weight_setting_is_checked_and_needs_masks():
    assert TrainSettings().foreground_weight == 1.0
    with pytest.raises(ConfigError, match="foreground_weight"):
        TrainSettings(foreground_weight=0.5)
    with pytest.raises(ConfigError, match="latents.safetensors"):
        foreground_weight(None, 5.0, torch.Size((1, 1, 1, 1, 1)))

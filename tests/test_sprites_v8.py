"""Per-channel latent normalisation folded into the VAE (issue 12, v8): the folded VAE decodes what the
original decoded, its latents are zero-mean and unit-std per channel, and the vae stage applies it when the
recipe says `vae.normalise_channels`."""

from __future__ import annotations

import copy

import pytest
import torch

from ca2vdm_cli.train import vae as vae_lib
from ca2vdm_cli.train.loop import DistInfo
from ca2vdm_cli.train.run import vae_stage
from tests.factories import tiny_vae
from tests.test_train_run import tiny_recipe

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _frames(n: int = 16) -> torch.Tensor:
    return vae_lib.to_pixels(vae_lib.sprite_frames(torch.Generator().manual_seed(1), n))  # (n, 3, 64, 64)


def _shifted_vae():
    """A tiny VAE whose latent channels have very different means and spreads (as the sprites VAE's do)."""
    vae = tiny_vae().eval()
    with torch.no_grad():
        vae.quant_conv.weight[:4] *= torch.tensor([0.2, 1.0, 3.0, 0.5])[:, None, None, None]
        vae.quant_conv.bias[:4] += torch.tensor([0.5, -2.0, 4.0, 1.0])
    return vae


@torch.no_grad()
def test_folding_keeps_the_decoded_pixels_and_normalises_every_channel():
    vae, x = _shifted_vae(), _frames()
    z = vae.encode(x).latent_dist.mean  # (n, 4, 16, 16)
    before = vae.decode(z).sample
    flat = z.transpose(0, 1).flatten(1)
    mean, std = flat.mean(1), flat.std(1)
    assert float(std.max() / std.min()) > 3 and float(mean.abs().max()) > 1  # the test is not vacuous

    folded = copy.deepcopy(vae)
    vae_lib.fold_channel_normalisation(folded, mean, std)
    z2 = folded.encode(x).latent_dist.mean
    flat2 = z2.transpose(0, 1).flatten(1)
    torch.testing.assert_close(flat2.mean(1), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(flat2.std(1), torch.ones(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        z2, (z - mean[None, :, None, None]) / std[None, :, None, None], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(folded.decode(z2).sample, before, atol=1e-4, rtol=0)
    assert folded.config.scaling_factor == 1.0
    # the posterior's std is rescaled with its mean (the KL term and sampled latents stay consistent)
    torch.testing.assert_close(
        folded.encode(x).latent_dist.std,
        vae.encode(x).latent_dist.std / std[None, :, None, None],
        rtol=1e-4,
        atol=1e-6,
    )


def test_folding_rejects_bad_statistics():
    vae = tiny_vae()
    with pytest.raises(ValueError, match="std > 0"):
        vae_lib.fold_channel_normalisation(vae, torch.zeros(4), torch.tensor([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        vae_lib.fold_channel_normalisation(vae, torch.zeros(3), torch.ones(3))


@pytest.mark.parametrize("normalise", [False, True])
def test_vae_stage_normalises_channels_when_the_recipe_says_so(tmp_path, normalise):
    recipe = tiny_recipe()
    recipe["vae"]["normalise_channels"] = normalise
    vae = vae_stage(recipe, tmp_path, CPU)
    mean, std = vae_lib.channel_stats(vae, CPU.device)  # the frames the stage measured on
    if normalise:
        assert vae.config.scaling_factor == 1.0
        torch.testing.assert_close(mean, torch.zeros(4), atol=1e-3, rtol=0)
        torch.testing.assert_close(std, torch.ones(4), atol=1e-3, rtol=0)
    else:
        assert vae.config.scaling_factor == pytest.approx(1.0 / vae_lib.latent_std(vae, CPU.device))
        scaled = std * vae.config.scaling_factor
        assert float((scaled - 1).abs().max()) > 1e-2  # one global factor leaves the channels unequal


def test_a_loaded_vae_is_normalised_only_when_asked(tmp_path):
    vae = _shifted_vae()
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    plain = vae_stage({"vae": {"path": str(tmp_path / "vae")}}, tmp_path / "a", CPU)
    assert plain.config.scaling_factor == 0.5
    spec = {"path": str(tmp_path / "vae"), "normalise_channels": True}
    folded = vae_stage({"vae": spec}, tmp_path / "b", CPU)
    mean, std = vae_lib.channel_stats(folded, CPU.device)
    assert folded.config.scaling_factor == 1.0
    torch.testing.assert_close(mean, torch.zeros(4), atol=1e-3, rtol=0)
    torch.testing.assert_close(std, torch.ones(4), atol=1e-3, rtol=0)

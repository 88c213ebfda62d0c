"""The Wan VAE wrapper on a tiny random AutoencoderKLWan (float32, CPU): frame arithmetic, normalisation,
posterior-mean encoding, and block-streamed decoding equal to diffusers' whole-clip decode."""

from __future__ import annotations

import pytest
import torch

from ca2vdm_cli.errors import InputError
from ca2vdm_cli.models.wan.vae import WanVAE, plan_frames, to_uint8, video_frames

diffusers = pytest.importorskip("diffusers")

LATENT = 2  # latent frames are LATENT×LATENT; video frames 8× that


def tiny_wan_vae(seed: int = 0) -> WanVAE:
    """Wan2.1's VAE structure (dim_mult [1,2,4,4], temporal down [F,T,T], 16 latent channels) at base 8."""
    from tests.factories import tiny_wan_video_vae

    return WanVAE(tiny_wan_video_vae(seed))


@pytest.fixture(scope="module")
def wan_vae() -> WanVAE:
    return tiny_wan_vae()


def test_frame_arithmetic() -> None:
    assert [video_frames(n) for n in (1, 2, 21, 63)] == [1, 5, 81, 249]
    plan = plan_frames(240, 3)
    assert (plan.latent_frames, plan.blocks, plan.decoded_frames, plan.trimmed) == (63, 21, 249, 9)
    assert (
        plan.describe()
        == "240 frames: 63 latent frames (21 blocks of 3) decode to 249 frames, trimmed to 240"
    )
    assert plan_frames(81, 3).describe() == "81 frames: 21 latent frames (7 blocks of 3) decode to 81 frames"
    assert plan_frames(81, 1).latent_frames == 21
    assert plan_frames(1, 3).decoded_frames == 9 and plan_frames(2, 1).latent_frames == 2
    with pytest.raises(InputError, match="--frames must be >= 1"):
        plan_frames(0, 3)


def test_normalisation_uses_the_config_mean_and_std(wan_vae) -> None:
    cfg = wan_vae.vae.config
    mu = torch.randn(2, 16, 3, LATENT, LATENT)
    z = wan_vae.normalize(mu)
    c = 7
    torch.testing.assert_close(z[:, c], (mu[:, c] - cfg.latents_mean[c]) / cfg.latents_std[c])
    torch.testing.assert_close(wan_vae.denormalize(z), mu, rtol=1e-6, atol=1e-6)
    assert cfg.latents_mean[0] == -0.7571 and cfg.latents_std[-1] == 1.9160  # Wan2.1's values (spec §6)


def test_encode_image_is_the_normalised_posterior_mean(wan_vae) -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (2, 8 * LATENT, 8 * LATENT, 3), generator=g, dtype=torch.uint8)
    z = wan_vae.encode_image(image)
    assert z.shape == (2, 16, 1, LATENT, LATENT) and z.dtype == torch.float32
    x = image.permute(0, 3, 1, 2).unsqueeze(2).float() / 127.5 - 1  # (B, 3, 1, H, W)
    with torch.no_grad():
        mean = wan_vae.vae.encode(x).latent_dist.mean
    torch.testing.assert_close(z, wan_vae.normalize(mean))
    assert torch.equal(wan_vae.encode_image(image), z)  # the mean: no sampling
    video = torch.randint(0, 256, (1, 9, 8 * LATENT, 8 * LATENT, 3), generator=g, dtype=torch.uint8)
    assert wan_vae.encode(video).shape == (1, 16, 3, LATENT, LATENT)  # 1 + 4·2 frames → 3 latents
    with pytest.raises(InputError, match=r"1 \+ 4·k frames \(e\.g\. 5\)"):
        wan_vae.encode(video[:, :6])
    with pytest.raises(InputError, match="not a multiple of 8"):
        wan_vae.encode_image(image[:, :12])


@pytest.mark.parametrize("blocks", [(3, 3, 1), (1, 3, 3), (1, 1, 2, 3)])
def test_streamed_decode_equals_whole_clip_decode(wan_vae, blocks) -> None:
    torch.manual_seed(1)
    z = torch.randn(2, 16, sum(blocks), LATENT, LATENT)  # (B, C, L, h, w), normalised
    whole = wan_vae.decode(z)  # (B, 3, 1 + 4(L − 1), H, W)
    assert whole.shape == (2, 3, video_frames(sum(blocks)), 8 * LATENT, 8 * LATENT)
    streamer = wan_vae.stream()
    parts, start = [], 0
    for n in blocks:
        expected = streamer.frames_for(n)
        part = streamer.decode(z[:, :, start : start + n])
        assert part.shape[2] == expected == (4 * n - 3 if start == 0 else 4 * n)
        parts.append(part)
        start += n
    streamed = torch.cat(parts, dim=2)
    err = (streamed - whole).abs().max().item()
    print(f"streamed vs whole decode, blocks {blocks}: max |diff| = {err:.3g}")  # noqa: T201
    assert err <= 1e-5
    assert whole.std() > 0.05  # the comparison is not between two near-constant clips


def test_stream_reset_starts_a_new_video_and_public_decode_per_block_does_not_stream(wan_vae) -> None:
    torch.manual_seed(2)
    z = torch.randn(1, 16, 6, LATENT, LATENT)
    streamer = wan_vae.stream()
    streamer.decode(torch.randn(1, 16, 3, LATENT, LATENT))  # another video first
    streamer.reset()
    streamed = torch.cat([streamer.decode(z[:, :, :3]), streamer.decode(z[:, :, 3:])], dim=2)
    whole = wan_vae.decode(z)
    assert (streamed - whole).abs().max() <= 1e-5
    naive = wan_vae.decode(z[:, :, 3:])  # the public decode restarts the causal state: 9 frames, not 12
    assert naive.shape[2] == 9
    assert (naive[:, :, 0] - whole[:, :, 9]).abs().max() > 0.1  # and without the state the frames differ


def test_to_uint8() -> None:
    video = torch.tensor([-2.0, -1.0, 0.0, 1.0]).view(1, 1, 4, 1, 1).expand(1, 3, 4, 1, 1)
    frames = to_uint8(video)
    assert frames.shape == (1, 4, 1, 1, 3) and frames[0, :, 0, 0, 0].tolist() == [0, 0, 128, 255]


def test_streamed_decode_in_bfloat16() -> None:
    bf16 = WanVAE(tiny_wan_vae().vae.to(torch.bfloat16))
    torch.manual_seed(3)
    z = torch.randn(1, 16, 6, LATENT, LATENT)
    streamer = bf16.stream()
    streamed = torch.cat([streamer.decode(z[:, :, :3]), streamer.decode(z[:, :, 3:])], dim=2)
    whole = bf16.decode(z)
    assert streamed.dtype == whole.dtype == torch.bfloat16
    assert torch.equal(streamed, whole)  # same operations in the same order: bit for bit on the CPU

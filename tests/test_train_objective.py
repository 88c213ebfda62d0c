"""The clean-prefix objective: prefix lengths, the loss mask (no gradient through prefix outputs), the
noising of the clip, and the loss function the trainer runs."""

from __future__ import annotations

import torch

from ca2vdm_cli.sampling.ddpm import Diffusion
from ca2vdm_cli.train import objective as obj
from tests.conftest import caption, tiny_model


def test_allowed_prefix_lengths():
    assert obj.allowed_prefix_lengths(8, 25, p_zero=0.0, t2v=False) == [1, 9, 17, 25]  # spec §5.2
    assert obj.allowed_prefix_lengths(8, 25, p_zero=0.1, t2v=False) == [0, 1, 9, 17, 25]
    assert obj.allowed_prefix_lengths(4, 9, p_zero=0.1, t2v=True) == [0, 1, 4, 5, 8, 9]


def test_prefix_lengths_are_drawn_from_the_allowed_set():
    allowed = obj.allowed_prefix_lengths(4, 13, p_zero=0.2, t2v=False)
    gen = torch.Generator().manual_seed(0)
    draws = [obj.sample_prefix_length(gen, allowed, 0.2) for _ in range(2000)]
    assert set(draws) == set(allowed)  # every allowed length occurs, nothing else does
    assert abs(draws.count(0) / len(draws) - 0.2) < 0.04


def test_prefix_batch_layout():
    diffusion = Diffusion(1000)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 4, 9, 8, 8)
    clean = obj.make_prefix_batch(x0, 5, gen, diffusion, perturb_t=0, tpe_start=2)
    assert torch.equal(clean.x_in[:, :, :5], x0[:, :, :5])  # clean prefix
    assert torch.equal(clean.x_in[:, :, 5:], clean.x_t[:, :, 5:])  # noisy frames
    assert torch.equal(clean.prefix_mask[:, :5], torch.ones(3, 5)) and clean.prefix_mask[:, 5:].sum() == 0
    assert (clean.frame_t[:, :5] == 0).all() and torch.equal(
        clean.frame_t[:, 5:], clean.t[:, None].float().expand(3, 4)
    )
    perturbed = obj.make_prefix_batch(
        x0, 5, torch.Generator().manual_seed(1), diffusion, perturb_t=50, tpe_start=0
    )
    assert not torch.equal(perturbed.x_in[:, :, :5], x0[:, :, :5])
    assert (perturbed.frame_t[:, :5] == 0).all()  # perturbed prefixes keep the t = 0 label
    err = (perturbed.x_in[:, :, :5] - x0[:, :, :5]).std()
    assert 0.05 < err < 0.3  # √(1−ᾱ_50) ≈ 0.15


def test_prefix_outputs_get_no_gradient():
    model = tiny_model().train()
    cfg = model.config
    diffusion = Diffusion(1000)
    x0 = torch.randn(2, 4, 9, *cfg.latent_size)
    batch = obj.make_prefix_batch(x0, 5, torch.Generator().manual_seed(0), diffusion, 50, 0)
    y, mask = caption(2, cfg)
    out = model(batch.x_in, batch.frame_t, y, mask, prefix_mask=batch.prefix_mask)
    out.retain_grad()
    obj.prefix_loss(diffusion, out, batch)["loss"].backward()
    assert out.grad is not None
    assert torch.count_nonzero(out.grad[:, :, :5]) == 0  # loss mask: nothing flows from prefix outputs
    assert torch.count_nonzero(out.grad[:, :, 5:]) > 0.9 * out.grad[:, :, 5:].numel()


def test_prefix_frames_do_not_see_noisy_frames():
    """Clean-prefix consistency: changing the noisy frames leaves prefix outputs unchanged."""
    model = tiny_model()
    cfg = model.config
    diffusion = Diffusion(1000)
    x0 = torch.randn(1, 4, 9, *cfg.latent_size)
    batch = obj.make_prefix_batch(x0, 5, torch.Generator().manual_seed(0), diffusion, 0, 0)
    y, mask = caption(1, cfg)
    a = model(batch.x_in, batch.frame_t, y, mask, prefix_mask=batch.prefix_mask)
    changed = batch.x_in.clone()
    changed[:, :, 5:] += 1.0
    b = model(changed, batch.frame_t, y, mask, prefix_mask=batch.prefix_mask)
    assert torch.allclose(a[:, :, :5], b[:, :, :5], atol=1e-5)
    assert not torch.allclose(a[:, :, 5:], b[:, :, 5:], atol=1e-3)


def test_tpe_start():
    gen = torch.Generator().manual_seed(0)
    assert {obj.draw_tpe_start(gen, 9, 13, "full") for _ in range(50)} == {0}
    assert len({obj.draw_tpe_start(gen, 13, 13, "full") for _ in range(200)}) == 13
    assert len({obj.draw_tpe_start(gen, 5, 13, "all") for _ in range(200)}) == 13
    assert {obj.draw_tpe_start(gen, 13, 13, "none") for _ in range(50)} == {0}


def test_gradient_checkpointing_gives_the_same_gradients():
    diffusion = Diffusion(1000)
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            obj.enable_gradient_checkpointing(model)
        x0 = torch.randn(2, 4, 6, *model.config.latent_size, generator=torch.Generator().manual_seed(3))
        batch = obj.make_prefix_batch(x0, 2, torch.Generator().manual_seed(4), diffusion, 50, 1)
        y, mask = caption(2, model.config)
        out = model(batch.x_in, batch.frame_t, y, mask, prefix_mask=batch.prefix_mask, tpe_start=1)
        obj.prefix_loss(diffusion, out, batch)["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        assert set(model.state_dict()) == set(tiny_model().state_dict())  # official keys unchanged
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6, rtol=1e-5), name

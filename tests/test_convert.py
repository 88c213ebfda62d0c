"""Checkpoint conversion: Open-Sora v1.0 → CausalSTDiT (§9.7) checked against an independent
Open-Sora reference forward, and official checkpoints (wrapped) loaded strictly and round-tripped exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from ca2vdm_cli.errors import WeightsError
from ca2vdm_cli.models.stdit.config import ModelConfig
from ca2vdm_cli.models.stdit.convert import (
    build_meta,
    convert_checkpoint,
    load_into_meta,
    read_checkpoint,
    remap_opensora,
    unwrap_state_dict,
)
from ca2vdm_cli.models.stdit.model import CausalSTDiT
from tests.conftest import caption, tiny_model
from tests.opensora_reference import opensora_checkpoint, opensora_forward
from tests.test_official_layout import official_layout

C, DEPTH, HEADS, CAPTION, TOKENS, LATENT = 32, 2, 2, 16, 6, 8


def converted_config(**overrides) -> ModelConfig:
    """The Ca2-VDM text+image architecture at toy size, as the opensora-v1-* cards use at full size."""
    base = dict(
        latent_size=(LATENT, LATENT),
        hidden_size=C,
        depth=DEPTH,
        num_heads=HEADS,
        caption_channels=CAPTION,
        model_max_length=TOKENS,
        space_scale=0.5,
        max_tpe_len=33,
        tpe_mode="cyclic",
        mask_channel=True,
        pe_mode="prev_frames",
        pe_frames=3,
    )
    return ModelConfig(**{**base, **overrides})


@pytest.fixture
def opensora_pth(tmp_path):
    sd = opensora_checkpoint(
        hidden=C, depth=DEPTH, caption=CAPTION, tokens=TOKENS, latent=LATENT, space_scale=0.5
    )
    path = tmp_path / "OpenSora-v1-HQ-16x256x256.pth"
    torch.save(sd, path)
    return path, sd


def converted_model(path, tmp_path, **overrides) -> CausalSTDiT:
    cfg = converted_config(**overrides)
    out = convert_checkpoint(path, converted_config(), "opensora-v1", tmp_path / "transformer.safetensors")
    model = CausalSTDiT(cfg)
    model.load_official_state_dict(load_file(out))
    return model.eval()


def inputs(frames: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, frames, LATENT, LATENT, generator=g)
    y, mask = caption(2, converted_config(), seed=seed)
    return x, torch.tensor([10.0, 700.0]), y, mask


@torch.no_grad()
def test_converted_opensora_equals_the_reference_on_a_single_frame(opensora_pth, tmp_path):
    path, sd = opensora_pth
    model = converted_model(path, tmp_path)  # causal, PE and mask channel on: the card's architecture
    x, t, y, mask = inputs(frames=1)
    got = model(x, t, y, mask)
    want = opensora_forward(sd, x, t, y, mask, HEADS, DEPTH)
    assert got.shape == want.shape == (2, 8, 1, LATENT, LATENT)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_converted_weights_equal_the_reference_bidirectionally_on_several_frames(opensora_pth, tmp_path):
    """With full temporal attention the mapping of attn_temp and of the temporal positions (rows 0..T-1
    regenerated, not copied) must reproduce Open-Sora on every frame."""
    path, sd = opensora_pth
    model = converted_model(path, tmp_path, temporal_attention="full")
    x, t, y, mask = inputs(frames=5)
    torch.testing.assert_close(
        model(x, t, y, mask), opensora_forward(sd, x, t, y, mask, HEADS, DEPTH), atol=2e-5, rtol=1e-4
    )
    # and the causal model differs on later frames: the comparison above can fail
    causal = converted_model(path, tmp_path)
    assert not torch.allclose(causal(x, t, y, mask)[:, :, 1:], model(x, t, y, mask)[:, :, 1:], atol=1e-3)


@torch.no_grad()
def test_new_modules_are_exact_noops(opensora_pth, tmp_path):
    """Spec §9.7: the converted PE + mask-channel model computes exactly the model without them, with a clean
    prefix (so the PE branch runs) on the full-sequence path and on the cached path."""
    path, _ = opensora_pth
    full = converted_model(path, tmp_path)
    plain = CausalSTDiT(converted_config(pe_mode="off", pe_frames=0, mask_channel=False)).eval()
    sd = {k: v for k, v in full.state_dict().items() if ".attn_cf." not in k and "pre_merge" not in k}
    plain.load_official_state_dict(sd)
    x, _, y, mask = inputs(frames=6)
    prefix = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    t = torch.tensor([[0.0, 0, 500, 500, 500, 500], [0.0, 0, 20, 20, 20, 20]])
    assert torch.equal(full(x, t, y, mask, prefix_mask=prefix), plain(x, t, y, mask, prefix_mask=prefix))

    caches = [m.new_cache(2, max_frames=4) for m in (full, plain)]
    for model, cache in zip((full, plain), caches, strict=True):
        model.write_cache(cache, x[:, :, :2], y, mask)
    a = full.denoise(caches[0], x[:, :, 2:], torch.tensor([300.0, 300.0]), y, mask)
    b = plain.denoise(caches[1], x[:, :, 2:], torch.tensor([300.0, 300.0]), y, mask)
    assert torch.equal(a, b)
    assert full.blocks[0].attn_cf.qkv.weight.abs().sum() > 0  # the branch is live, only its output is zero


def test_remap_table_maps_the_full_opensora_layout_onto_causal_stdit():
    """All 550 Open-Sora v1.0 STDiT-XL/2 tensors become the 665 of the text+PE+mask
    CausalSTDiT2-XL/2 (on the meta device: shapes only)."""
    os_layout = official_layout(text=True, pe=False, mask_channel=False)
    del os_layout["bov_token"]
    os_layout["pos_embed_temporal"] = (1, 16, 1152)
    sd = {k: torch.empty(shape, device="meta") for k, shape in os_layout.items()}
    assert len(sd) == 550
    cfg = ModelConfig(mask_channel=True, pe_mode="prev_frames", pe_frames=3, space_scale=0.5)
    target = {k: v.shape for k, v in build_meta(cfg).state_dict().items()}
    mapped = remap_opensora(sd, target, cfg)
    model = load_into_meta(mapped, cfg, "xl")
    assert len(model.state_dict()) == 665
    assert set(mapped) == set(target) - {"pos_embed", "pos_embed_temporal"}


def test_caption_table_is_cut_or_extended_to_model_max_length():
    sd = opensora_checkpoint(hidden=C, depth=1, caption=CAPTION, tokens=4, latent=LATENT, space_scale=0.5)
    for rows in (2, 7):
        cfg = converted_config(depth=1, model_max_length=rows)
        target = {k: v.shape for k, v in build_meta(cfg).state_dict().items()}
        table = remap_opensora(sd, target, cfg)["y_embedder.y_embedding"]
        assert table.shape == (rows, CAPTION)
        assert torch.equal(table[: min(rows, 4)], sd["y_embedder.y_embedding"][: min(rows, 4)])
        assert all(torch.equal(r, sd["y_embedder.y_embedding"][-1]) for r in table[4:])


def test_text_free_target_drops_the_caption_weights():
    sd = opensora_checkpoint(hidden=C, depth=1, caption=CAPTION, tokens=4, latent=LATENT, space_scale=0.5)
    cfg = converted_config(depth=1, caption_channels=0)
    target = {k: v.shape for k, v in build_meta(cfg).state_dict().items()}
    mapped = remap_opensora(sd, target, cfg)
    assert not any("cross_attn" in k or "y_embedder" in k for k in mapped)
    load_into_meta(mapped, cfg, "no-text")


def test_unknown_opensora_keys_are_listed(opensora_pth, tmp_path):
    path, sd = opensora_pth
    sd["blocks.0.attn_temp.rope.freqs"] = torch.zeros(4)
    torch.save(sd, path)
    with pytest.raises(
        WeightsError, match=r"1 keys are not Open-Sora v1.0 STDiT keys: blocks\.0\.attn_temp\.rope"
    ):
        convert_checkpoint(path, converted_config(), "opensora-v1", tmp_path / "out.safetensors")


# ----------------------------------------------------------------------------- official checkpoints
class NotATensor:
    """A class a weights_only unpickler must refuse."""


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"ema": {f"module.{k}": v for k, v in sd.items()}, "model": {}, "epoch": 3},
        lambda sd: {"state_dict": {f"_orig_mod.{k}": v for k, v in sd.items()}, "optimizer": {"lr": 1e-4}},
        lambda sd: {"model": {"module": sd}},
        lambda sd: {**sd, "global_step": 11000},
    ],
    ids=["ema+module.", "state_dict+_orig_mod.", "model/module", "flat+extra"],
)
def test_wrapped_official_checkpoint_loads_strictly_and_round_trips_bit_exactly(tmp_path, wrap):
    model = tiny_model(seed=5, dtype=torch.float32)
    original = model.state_dict()
    path = tmp_path / "epoch2-global_step11000.pth"
    torch.save(wrap(original), path)
    out = convert_checkpoint(path, model.config, "ca2vdm-official", tmp_path / "transformer.safetensors")
    saved = load_file(out)
    assert set(saved) == set(original)
    for key, value in original.items():
        assert saved[key].dtype == value.dtype and torch.equal(saved[key], value), key
    reloaded = CausalSTDiT(model.config).eval()
    reloaded.load_official_state_dict(saved)
    x = torch.randn(1, 4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x, torch.zeros(1)), reloaded(x, torch.zeros(1)))


def test_official_checkpoint_in_bf16_keeps_its_dtype(tmp_path):
    model = tiny_model(seed=6, dtype=torch.bfloat16)
    torch.save({"ema": model.state_dict()}, tmp_path / "ema.pt")
    out = convert_checkpoint(tmp_path / "ema.pt", model.config, "ca2vdm-official", tmp_path / "t.safetensors")
    saved = load_file(out)
    assert saved["blocks.0.attn.qkv.weight"].dtype == torch.bfloat16
    assert torch.equal(saved["blocks.0.attn.qkv.weight"], model.state_dict()["blocks.0.attn.qkv.weight"])


def test_wrong_architecture_lists_keys_and_the_likely_cause(opensora_pth, tmp_path):
    path, _ = opensora_pth  # an Open-Sora checkpoint given as an official Ca2-VDM one
    with pytest.raises(WeightsError) as err:
        convert_checkpoint(path, converted_config(), "ca2vdm-official", tmp_path / "out.safetensors")
    msg = str(err.value)
    assert "missing keys: blocks.0.attn_cf.proj.bias" in msg and "opensora-v1-256" in msg and "\n" not in msg
    sky = tiny_model(seed=1, caption_channels=0)  # a text-free (SkyTimelapse-style) checkpoint ...
    torch.save({"ema": sky.state_dict()}, tmp_path / "sky.pth")
    with pytest.raises(WeightsError, match=r"missing keys: .*cross_attn.*try ca2vdm-official-sky"):
        convert_checkpoint(
            tmp_path / "sky.pth", tiny_model().config, "ca2vdm-official", tmp_path / "o.safetensors"
        )


def test_refuses_pickles_with_code_and_names_the_fix(tmp_path):
    torch.save({"model": {"w": torch.zeros(1)}, "cfg": NotATensor()}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"cannot be loaded safely .*weights_only=True"):
        read_checkpoint(tmp_path / "bad.pth")


def test_unwrap_reports_what_it_found():
    with pytest.raises(WeightsError, match=r"no state dict found in x.pt: top-level keys are \[epoch, lr\]"):
        unwrap_state_dict({"epoch": 1, "lr": 0.1}, "x.pt")
    with pytest.raises(WeightsError, match="does not exist"):
        read_checkpoint("/nonexistent/official.pth")

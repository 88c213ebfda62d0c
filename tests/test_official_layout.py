"""The official CausalSTDiT2 state-dict layout, written out here independently of the model,
and strict loading with errors that name the offending keys."""

from __future__ import annotations

import pytest
import torch

from ca2vdm_cli.errors import ConfigError, WeightsError
from ca2vdm_cli.models.stdit.config import ModelConfig
from ca2vdm_cli.models.stdit.model import CausalSTDiT
from tests.conftest import tiny_model

C, D, M = 1152, 28, 33


def official_layout(text: bool, pe: bool, mask_channel: bool) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of spec §6.1 for XL/2 at 256² (latent 32×32, S = 256)."""
    keys: dict[str, tuple[int, ...]] = {
        "pos_embed": (1, 256, C),
        "pos_embed_temporal": (1, M, C),
        "bov_token": (4, 32, 32),
        "x_embedder.proj.weight": (C, 4, 1, 2, 2),
        "x_embedder.proj.bias": (C,),
        "t_embedder.mlp.0.weight": (C, 256),
        "t_embedder.mlp.0.bias": (C,),
        "t_embedder.mlp.2.weight": (C, C),
        "t_embedder.mlp.2.bias": (C,),
        "t_block.1.weight": (6 * C, C),
        "t_block.1.bias": (6 * C,),
        "final_layer.scale_shift_table": (2, C),
        "final_layer.linear.weight": (32, C),
        "final_layer.linear.bias": (32,),
    }
    if text:
        keys |= {
            "y_embedder.y_embedding": (120, 4096),
            "y_embedder.y_proj.fc1.weight": (C, 4096),
            "y_embedder.y_proj.fc1.bias": (C,),
            "y_embedder.y_proj.fc2.weight": (C, C),
            "y_embedder.y_proj.fc2.bias": (C,),
        }
    for i in range(D):
        b = f"blocks.{i}."
        keys[b + "scale_shift_table"] = (6, C)
        attns = ["attn", "attn_temp"] + (["attn_cf"] if pe else [])
        for a in attns:
            keys |= {
                b + a + ".qkv.weight": (3 * C, C),
                b + a + ".qkv.bias": (3 * C,),
                b + a + ".proj.weight": (C, C),
                b + a + ".proj.bias": (C,),
            }
        keys |= {
            b + "mlp.fc1.weight": (4 * C, C),
            b + "mlp.fc1.bias": (4 * C,),
            b + "mlp.fc2.weight": (C, 4 * C),
            b + "mlp.fc2.bias": (C,),
        }
        if text:
            keys |= {
                b + "cross_attn.q_linear.weight": (C, C),
                b + "cross_attn.q_linear.bias": (C,),
                b + "cross_attn.kv_linear.weight": (2 * C, C),
                b + "cross_attn.kv_linear.bias": (2 * C,),
                b + "cross_attn.proj.weight": (C, C),
                b + "cross_attn.proj.bias": (C,),
            }
    if mask_channel:
        keys |= {"blocks.0.attn_temp_pre_merge.weight": (C, C + 1), "blocks.0.attn_temp_pre_merge.bias": (C,)}
    return keys


VARIANTS = {
    # name: (official kwargs, text, pe, mask channel, tensors, parameters in millions)
    "sky": (
        dict(caption_channels=0, temp_extra_in_channels=1, spatial_attn_enhance="prev_frames_3"),
        False,
        True,
        True,
        492,
        754.90,
    ),
    "text+pe": (dict(spatial_attn_enhance="prev_frames_3"), True, True, False, 663, 908.39),
    "text+pe+mask": (
        dict(spatial_attn_enhance="prev_frames_3", temp_extra_in_channels=1),
        True,
        True,
        True,
        665,
        909.71,
    ),
    "text (= Open-Sora v1.0)": (dict(), True, False, False, 551, 759.62),
}


def meta_model(**kwargs) -> CausalSTDiT:
    official = dict(
        type="CausalSTDiT2-XL/2", input_size=(33, 32, 32), max_tpe_len=M, relative_tpe_mode="cyclic"
    )
    with torch.device("meta"):
        return CausalSTDiT(ModelConfig.from_official({**official, **kwargs}))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_xl2_state_dict_matches_the_official_layout(name):
    kwargs, text, pe, mask, tensors, params = VARIANTS[name]
    model = meta_model(**kwargs)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == official_layout(text, pe, mask)
    assert len(got) == tensors
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params


def test_official_state_dict_loads_strictly_on_meta():
    model = meta_model(spatial_attn_enhance="prev_frames_3", temp_extra_in_channels=1)
    sd = {k: torch.empty(shape, device="meta") for k, shape in official_layout(True, True, True).items()}
    model.load_official_state_dict(sd, assign=True)
    assert model.pos_embed.device.type == "cpu"  # regenerated, not taken from the checkpoint


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (
            lambda sd: sd.pop("blocks.3.attn_cf.qkv.weight"),
            r"missing keys: blocks\.3\.attn_cf\.qkv\.weight.*prefix-enhanced",
        ),
        (
            lambda sd: sd.__setitem__("blocks.28.mlp.fc1.bias", torch.empty(4 * C, device="meta")),
            r"unexpected keys: blocks\.28\.mlp\.fc1\.bias.*depth",
        ),
        (
            lambda sd: sd.__setitem__("t_block.1.bias", torch.empty(5, device="meta")),
            r"wrong shapes: t_block\.1\.bias \(5,\) != \(6912,\)",
        ),
    ],
)
def test_bad_official_state_dict_names_the_key(edit, pattern):
    model = meta_model(spatial_attn_enhance="prev_frames_3", temp_extra_in_channels=1)
    sd = {k: torch.empty(shape, device="meta") for k, shape in official_layout(True, True, True).items()}
    edit(sd)
    with pytest.raises(WeightsError, match=pattern):
        model.load_official_state_dict(sd, assign=True)


def test_state_dict_round_trip_is_exact():
    a, b = tiny_model(seed=0), tiny_model(seed=1)
    b.load_official_state_dict(a.state_dict())
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    x = torch.randn(1, 4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(a(x, torch.zeros(1)), b(x, torch.zeros(1)))


def test_from_official_understands_legacy_names():
    cfg = ModelConfig.from_official(
        dict(
            type="CausalSTDiT2-Base",
            temporal_max_len=49,
            cross_frame_attn="prev_prefix_2",
            relative_tpe_mode="rope",
            temp_extra_in_channels=1,
            enable_flashattn=True,
            caption_channels=0,
            input_size=(49, 64, 64),
        )
    )
    assert (cfg.depth, cfg.max_tpe_len, cfg.pe_mode, cfg.pe_frames, cfg.tpe_mode) == (
        14,
        49,
        "prev_frames",
        2,
        "rope",
    )
    assert cfg.mask_channel and not cfg.has_text and cfg.latent_size == (64, 64)
    assert ModelConfig.from_official({}).tpe_mode == "fixed"  # official default relative_tpe_mode=None


def test_from_official_rejects_unknown_arguments():
    with pytest.raises(ConfigError, match="unknown CausalSTDiT2 arguments.*hiddden_size"):
        ModelConfig.from_official(dict(hiddden_size=64))

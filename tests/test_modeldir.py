"""Model directories: save/load round trip, local-only loading, clear errors for incomplete directories."""

from __future__ import annotations

import json

import pytest
import torch

from ca2vdm_cli.errors import ConfigError, WeightsError
from ca2vdm_cli.media.text import encode_text
from ca2vdm_cli.media.vae import decode_latents, encode_frames
from ca2vdm_cli.store.card import CARD_FILE, TRANSFORMER_FILE, read_card
from ca2vdm_cli.store.modeldir import load_model_dir
from tests.factories import tiny_card, tiny_model, write_tiny_model_dir


def test_round_trip_gives_the_same_networks(tmp_path):
    path = write_tiny_model_dir(tmp_path / "m")
    comp = load_model_dir(path)
    assert comp.card == tiny_card()
    reference = tiny_model()
    assert all(
        torch.equal(a, b)
        for a, b in zip(comp.model.state_dict().values(), reference.state_dict().values(), strict=True)
    )
    x = torch.randn(1, 4, 2, 8, 8)
    with torch.no_grad():  # same weights; memory alignment of mmapped tensors may change the summation order
        torch.testing.assert_close(
            comp.model(x, torch.zeros(1)), reference(x, torch.zeros(1)), rtol=0, atol=1e-5
        )
    y, mask = encode_text(comp.tokenizer, comp.text_encoder, ["a red circle", "b"], comp.card.text_max_length)
    assert y.shape == (2, 7, 32) and mask.tolist()[1] == [1, 1, 0, 0, 0, 0, 0]  # "b" + </s>
    frames = torch.randint(0, 256, (1, 3, 32, 32, 3), dtype=torch.uint8)
    z = encode_frames(comp.vae, frames, comp.card.vae_scaling_factor, seeds=[0])
    assert z.shape == (1, 4, 3, 8, 8)
    assert torch.equal(z, encode_frames(comp.vae, frames, comp.card.vae_scaling_factor, seeds=[0]))
    back = decode_latents(comp.vae, z, comp.card.vae_scaling_factor, micro_batch=2)
    assert back.shape == (1, 3, 32, 32, 3) and back.dtype == torch.uint8


def test_incomplete_directory_names_what_is_missing(tmp_path):
    path = write_tiny_model_dir(tmp_path / "m")
    (path / TRANSFORMER_FILE).unlink()
    with pytest.raises(WeightsError, match="missing transformer.safetensors"):
        load_model_dir(path)


def test_corrupt_weights_are_a_clear_error(tmp_path):
    path = write_tiny_model_dir(tmp_path / "m")
    (path / TRANSFORMER_FILE).write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError, match="cannot read"):
        load_model_dir(path)


def test_card_errors(tmp_path):
    path = write_tiny_model_dir(tmp_path / "m")
    data = json.loads((path / CARD_FILE).read_text())
    data["video"]["height"] = 40  # 40 / 4 = 10 latent rows, the model has 8
    (path / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="gives latents"):
        read_card(path)
    (path / CARD_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read model card"):
        read_card(path)
    with pytest.raises(ConfigError, match="no model card"):
        read_card(tmp_path)

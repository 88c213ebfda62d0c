"""`resolve_model` in-process against the fake Hub (huggingface_hub.constants patched, as environment.md §6
allows): consent before downloading, an Open-Sora .pth converted once through the whole path, and an
official local checkpoint assembled with downloaded VAE/T5 files."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from ca2vdm_cli.errors import DownloadError
from ca2vdm_cli.models.stdit.model import CausalSTDiT
from ca2vdm_cli.store.card import read_card
from ca2vdm_cli.store.weights import resolve_model
from tests.conftest import tiny_config, tiny_model
from tests.fakehub import FakeHub, FakeRepo
from tests.opensora_reference import opensora_checkpoint
from tests.test_hub import REV, card_dict, fake_repos


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants

    server = FakeHub(fake_repos()).start(ttl=120)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server
    server.stop()


def test_consent_is_asked_before_downloading(hub, tmp_path):
    card = tmp_path / "fake-model.json"
    card.write_text(json.dumps(card_dict()))
    cache = tmp_path / "cache"
    with pytest.raises(
        DownloadError,
        match=r"not downloaded yet \(.* from fake-org/t5, fake-org/transformer"
        r", fake-org/vae\); run `ca2vdm download fake-model` first, or pass --yes",
    ):
        resolve_model(str(card), cache_dir=cache)
    asked: list[str] = []
    with pytest.raises(DownloadError, match="declined"):
        resolve_model(str(card), cache_dir=cache, consent=lambda m: asked.append(m) or False)
    assert not [r for r in hub.requests if r.startswith("GET")]  # nothing fetched without consent
    directory = resolve_model(str(card), cache_dir=cache, consent=lambda m: asked.append(m) or True)
    assert "Download now?" in asked[-1] and "11.50 KB" in asked[-1]  # planned sizes from the card
    assert (directory / "transformer.safetensors").is_file()
    assert resolve_model(str(card), cache_dir=cache) == directory  # cached: no consent needed


def test_opensora_checkpoint_is_converted_once_through_the_hub(hub, tmp_path):
    cfg = tiny_config(space_scale=0.5)
    sd = opensora_checkpoint(hidden=64, depth=3, caption=32, tokens=5, latent=8, space_scale=0.5)
    torch.save(sd, tmp_path / "os.pth")
    data = (tmp_path / "os.pth").read_bytes()
    hub.repos["fake-org/transformer"] = FakeRepo(
        REV["transformer"], {"OpenSora-v1-HQ-16x256x256.pth": data}, {"OpenSora-v1-HQ-16x256x256.pth"}
    )
    d = card_dict(
        files=[{"path": "OpenSora-v1-HQ-16x256x256.pth", "approx_size": len(data)}], format="opensora-v1"
    )
    d["model"] = cfg.to_dict()
    (tmp_path / "os.json").write_text(json.dumps(d))
    directory = resolve_model(str(tmp_path / "os.json"), cache_dir=tmp_path / "c", consent=lambda m: True)

    weights = load_file(directory / "transformer.safetensors")
    model = CausalSTDiT(read_card(directory).model)
    model.load_official_state_dict(weights)  # strict
    assert torch.equal(weights["blocks.1.attn_temp.qkv.weight"], sd["blocks.1.attn_temp.qkv.weight"])
    assert torch.equal(weights["y_embedder.y_embedding"][:5], sd["y_embedder.y_embedding"])  # 5 -> 7 rows
    assert not weights["blocks.2.attn_cf.proj.weight"].any()
    mtime = os.stat(directory / "transformer.safetensors").st_mtime_ns
    assert resolve_model(str(tmp_path / "os.json"), cache_dir=tmp_path / "c") == directory
    assert os.stat(directory / "transformer.safetensors").st_mtime_ns == mtime  # converted once


def test_official_checkpoint_with_weights_path(hub, tmp_path):
    model = tiny_model(seed=4)
    torch.save({"ema": model.state_dict()}, tmp_path / "official.pth")
    d = card_dict(name="official-tiny")
    d["sources"]["transformer"] = {"format": "ca2vdm-official", "license": "own"}
    (tmp_path / "official.json").write_text(json.dumps(d))
    with pytest.raises(Exception, match="pass --weights PATH"):
        resolve_model(str(tmp_path / "official.json"), cache_dir=tmp_path / "c", consent=lambda m: True)
    directory = resolve_model(
        str(tmp_path / "official.json"),
        weights=tmp_path / "official.pth",
        cache_dir=tmp_path / "c",
        consent=lambda m: True,
    )
    saved = load_file(directory / "transformer.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert (directory / "vae" / "config.json").is_file() and (
        directory / "text_encoder" / "spiece.model"
    ).is_file()
    torch.save({"ema": tiny_model(seed=5).state_dict()}, tmp_path / "official.pth")  # a new checkpoint
    other = resolve_model(
        str(tmp_path / "official.json"),
        weights=tmp_path / "official.pth",
        cache_dir=tmp_path / "c",
        consent=lambda m: True,
    )
    assert other != directory and other.parent == directory.parent

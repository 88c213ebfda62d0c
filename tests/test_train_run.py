"""`ca2vdm train` end to end on a tiny recipe: every stage runs, the exported model directory loads with
the EMA weights, generates sprites-sized frames, and the CLI reports bad input as one line."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ca2vdm_cli.cli import (
    app,
    commands,  # noqa: F401  (registers the commands)
)
from ca2vdm_cli.store.modeldir import load_model_dir
from ca2vdm_cli.train.checkpoint import list_checkpoints, load_checkpoint
from ca2vdm_cli.train.loop import DistInfo
from ca2vdm_cli.train.recipe import SPRITES, load_recipe, override
from ca2vdm_cli.train.run import train_all

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def tiny_recipe() -> dict:
    r = copy.deepcopy(SPRITES)
    r["card"]["model"].update(hidden_size=32, depth=2, num_heads=2, caption_channels=16)
    r["text_encoder"]["config"].update(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    r["vae"]["config"].update(block_out_channels=[8, 16, 16], norm_num_groups=8)
    r["vae"].update(steps=2, batch_size=2, decoder_steps=1, log_every=1)
    r["data"].update(videos=3, frames=16)
    r["train"].update(steps=2, batch_size=2, checkpoint_every=1, log_every=1)
    return r


def test_export_round_trip(tmp_path):
    """The exported directory (EMA weights of transformer and text encoder) loads back bit-exactly."""
    from ca2vdm_cli.train.objective import TextToVideoObjective
    from ca2vdm_cli.train.run import export_stage
    from tests.conftest import tiny_model
    from tests.factories import tiny_card, tiny_text_encoder, tiny_vae

    card = tiny_card()
    module = TextToVideoObjective(tiny_model(), tiny_text_encoder(card.model.caption_channels), True)
    path = export_stage({}, tmp_path, card, module, tiny_vae(), None, CPU)
    comps = load_model_dir(path)
    assert comps.card == card
    for name, value in module.model.state_dict().items():
        assert torch.equal(comps.model.state_dict()[name], value), name
    for name, value in module.text_encoder.state_dict().items():
        assert torch.equal(comps.text_encoder.state_dict()[name], value), name


@pytest.mark.slow
def test_all_stages_and_the_exported_model(tmp_path):
    from ca2vdm_cli.sprites.evaluate import generate_batch

    torch.set_num_threads(1)
    model_dir = train_all(tiny_recipe(), tmp_path, CPU)
    assert model_dir == tmp_path / "model"
    for name in ("vae", "vae-decoder", "latents.safetensors", "recipe.json"):
        assert (tmp_path / name).exists(), name
    comps = load_model_dir(model_dir)
    assert comps.card.name == "sprites" and comps.card.text_to_video and comps.card.tokenizer == "files"
    assert comps.card.vae_scaling_factor == pytest.approx(comps.vae.config.scaling_factor)
    ckpt = load_checkpoint(list_checkpoints(tmp_path / "checkpoints" / "dit")[-1][1])
    weight = "final_layer.linear.weight"
    assert torch.equal(comps.model.state_dict()[weight], ckpt["ema"][f"model.{weight}"])  # EMA is shipped
    text_key = "encoder.block.0.layer.0.SelfAttention.q.weight"
    assert torch.equal(comps.text_encoder.state_dict()[text_key], ckpt["ema"][f"text_encoder.{text_key}"])
    videos = generate_batch(comps, ["a red circle moving right"], [0], 6, comps.card.sampling)
    assert videos.shape == (1, 6, 64, 64, 3) and videos.dtype == np.uint8


def test_recipe_overrides_and_errors(tmp_path):
    r = override(load_recipe("sprites"), ["train.steps=7", "data.videos=2", "card.description=x y"])
    assert r["train"]["steps"] == 7 and r["data"]["videos"] == 2 and r["card"]["description"] == "x y"
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path)])
    assert res.exit_code != 0 and "not a built-in recipe" in str(res.exception)
    res = runner.invoke(app, ["train", "--config", "sprites", "--out", str(tmp_path), "--stages", "vae,oops"])
    assert res.exit_code != 0 and "--stages" in str(res.exception)
    toml = tmp_path / "r.toml"
    toml.write_text('[card]\nname = "x"\n[data]\nkind = "sprites"\n[train]\nsteps = 0\n')
    res = runner.invoke(app, ["train", "--config", str(toml), "--out", str(tmp_path)])
    assert res.exit_code != 0 and "steps must be >= 1" in str(res.exception)


def test_init_from_model_dir_on_a_video_folder(tmp_path):
    """--init DIR + data from a folder of real MP4s: fine-tunes the transformer, keeps the text encoder
    frozen, and exports a loadable model directory."""
    from tests.factories import write_tiny_model_dir
    from tests.test_train_data import write_mp4

    torch.set_num_threads(1)
    init = write_tiny_model_dir(tmp_path / "init")
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4"):
        write_mp4(videos / name, 14, 40, 32)
    (videos / "captions.csv").write_text("path,caption\na.mp4,a grey fade\nb.mp4,another fade\n")
    recipe = {
        "name": "ft",
        "seed": 0,
        "card": {"name": "unused"},
        "data": {
            "kind": "videos",
            "dir": str(videos),
            "captions": str(videos / "captions.csv"),
            "clip_frames": 12,
            "stride": 1,
            "size": 32,
        },
        "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "log_every": 1},
    }
    out = train_all(recipe, tmp_path / "run", CPU, init=str(init), stages=("latents", "dit", "export"))
    before, after = load_model_dir(init), load_model_dir(out)
    assert after.card == before.card
    w = "final_layer.linear.weight"
    assert not torch.equal(before.model.state_dict()[w], after.model.state_dict()[w])
    for name, value in before.text_encoder.state_dict().items():
        assert torch.equal(after.text_encoder.state_dict()[name], value), name  # frozen by default

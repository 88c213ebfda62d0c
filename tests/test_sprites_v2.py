"""The word-level sprites tokenizer and the from-scratch init option (fast, no weights)."""

import torch

from ca2vdm_cli.media.text import load_tokenizer
from ca2vdm_cli.models.stdit.config import ModelConfig
from ca2vdm_cli.models.stdit.model import CausalSTDiT
from ca2vdm_cli.train.recipe import TrainSettings
from ca2vdm_cli.train.run import sprites_word_tokenizer, tokenize


def test_word_tokenizer_round_trips_through_the_loader(tmp_path):
    tok = sprites_word_tokenizer()
    prompt = "a red circle moving up-left and a blue square moving down-right"
    ids, mask = tokenize(tok, [prompt], 16)
    assert int(mask.sum()) == 12  # 11 words + </s>, no <unk>
    assert 2 not in ids[0].tolist()
    tok.save_pretrained(str(tmp_path))
    again = load_tokenizer("files", tmp_path)
    ids2 = again([prompt], max_length=16, padding="max_length", truncation=True, return_tensors="pt")
    assert ids2.input_ids.tolist() == ids.tolist()


def test_zero_init_new_is_the_default_and_can_be_turned_off():
    assert TrainSettings().zero_init_new is True
    cfg = ModelConfig(
        latent_size=(8, 8),
        patch_size=(1, 4, 4),
        hidden_size=32,
        depth=1,
        num_heads=2,
        caption_channels=16,
        model_max_length=4,
        max_tpe_len=5,
        mask_channel=True,
        pe_frames=2,
    )
    model = CausalSTDiT(cfg)
    block = model.blocks[0]
    assert block.attn_temp.proj.weight.abs().sum() == 0
    y = torch.randn(3, 4, 16)  # unit-scale features, as a T5 encoder's final norm gives
    small = float(model.y_embedder(y).pow(2).mean().sqrt())
    assert 0.015 < float(model.y_embedder.y_proj.fc1.weight.std()) < 0.025  # PixArt's std 0.02 by default
    model.initialize_weights(zero_init_new=False)
    assert block.attn_temp.proj.weight.abs().sum() > 0
    assert block.cross_attn.proj.weight.abs().sum() > 0
    assert model.final_layer.linear.weight.abs().sum() == 0
    # the caption projection keeps xavier init: the text features reach the blocks at their own scale
    big = float(model.y_embedder(y).pow(2).mean().sqrt())
    assert big > 5 * small and big > 0.2

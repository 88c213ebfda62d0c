"""Joint image-video training (issue 12, v6): a fraction of the steps trains text-to-image on single frames,
and the trainer's log averages each metric over the steps that reported it."""

from __future__ import annotations

import pytest
import torch
from transformers import ByT5Tokenizer

from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.train.loop import DistInfo, Trainer
from ca2vdm_cli.train.recipe import TrainSettings
from ca2vdm_cli.train.run import dit_loss_fn
from tests.factories import tiny_card
from tests.train_helpers import tiny_clips, tiny_trainer


class Spy(torch.nn.Module):
    """Stands in for the objective: records each batch's shape, prefix length and caption count; the
    loss is the clip length."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[tuple[int, ...], int, int]] = []

    def forward(self, batch, ids, mask, drop):
        prefix = int(batch.prefix_mask[0].sum())
        self.seen.append((tuple(batch.x_in.shape), prefix, int(ids.shape[0])))
        return {"loss": self.w + batch.x_in.shape[2]}


def _loss_fn(**settings):
    train = TrainSettings(batch_size=2, p_zero_prefix=0.2, **settings)
    loss_fn, _ = dit_loss_fn(tiny_clips(), ByT5Tokenizer(), train, tiny_card())
    return loss_fn


def test_image_steps_train_single_frames_from_text_alone():
    spy, fn = Spy(), _loss_fn(image_fraction=1.0, image_batch_size=5)
    outs = [fn(spy, s, torch.Generator().manual_seed(s), torch.device("cpu")) for s in range(6)]
    for (shape, prefix, n_text), out in zip(spy.seen, outs, strict=True):
        assert shape == (5, 4, 1, 8, 8) and prefix == 0 and n_text == 5  # T = 1, P = 0, 5 captions
        assert float(out["image_step"]) == 1.0 and "image_loss" in out and "prefix_len" not in out


def test_image_fraction_mixes_steps_and_zero_keeps_the_video_objective():
    spy, fn = Spy(), _loss_fn(image_fraction=0.5, image_batch_size=3)
    for s in range(40):
        fn(spy, s, torch.Generator().manual_seed(s), torch.device("cpu"))
    frames = [shape[2] for shape, _, _ in spy.seen]
    images = sum(1 for shape, _, _ in spy.seen if shape[0] == 3 and shape[2] == 1)
    assert 10 <= images <= 30 and max(frames) > 1  # both kinds of step happen
    spy0, fn0 = Spy(), _loss_fn()
    for s in range(20):
        out = fn0(spy0, s, torch.Generator().manual_seed(s), torch.device("cpu"))
        assert float(out["image_step"]) == 0.0 and "video_loss" in out
    assert all(shape[0] == 2 and shape[2] >= 4 for shape, _, _ in spy0.seen)  # clips of P + chunk


def test_image_settings_are_checked():
    with pytest.raises(ConfigError, match="image_fraction"):
        TrainSettings(image_fraction=1.5)
    with pytest.raises(ConfigError, match="image_batch_size"):
        TrainSettings(image_batch_size=0)
    card = tiny_card(card_overrides={"text_to_video": False})
    with pytest.raises(ConfigError, match="text_to_video"):
        dit_loss_fn(tiny_clips(), ByT5Tokenizer(), TrainSettings(image_fraction=0.3), card)


def test_log_averages_each_metric_over_the_steps_that_reported_it(tmp_path):
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    trainer: Trainer = tiny_trainer(tmp_path, info, steps=4, log_every=4, checkpoint_every=100)
    reports = iter(
        [
            {"loss": 1.0, "image_loss": 1.0},
            {"loss": 3.0, "video_loss": 3.0},
            {"loss": 5.0, "image_loss": 5.0},
            {"loss": 7.0, "video_loss": 7.0},
        ]
    )

    def fake_step():
        trainer.step += 1
        return next(reports)

    trainer.train_step = fake_step
    logged = []
    trainer.fit(lambda stage, step, total, avg: logged.append(avg) if avg else None)
    assert logged[-1]["loss"] == pytest.approx(4.0)
    assert logged[-1]["image_loss"] == pytest.approx(3.0) and logged[-1]["video_loss"] == pytest.approx(5.0)

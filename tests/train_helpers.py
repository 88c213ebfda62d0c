"""Tiny but real training setups (CausalSTDiT + T5 text encoder + random latent clips) for the trainer
tests, also run as a script by the torchrun test: `torchrun --nproc_per_node 2 tests/train_helpers.py OUT`."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script by torchrun
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ca2vdm_cli.train.data import LatentClips
from ca2vdm_cli.train.loop import DistInfo, Trainer
from ca2vdm_cli.train.objective import TextToVideoObjective
from ca2vdm_cli.train.recipe import TrainSettings
from ca2vdm_cli.train.run import dit_loss_fn
from tests.conftest import tiny_model
from tests.factories import tiny_card, tiny_text_encoder

CAPTIONS = ["a red circle moving right", "a blue square moving up and a white circle moving left"]


def tiny_clips(n: int = 6, frames: int = 16) -> LatentClips:
    gen = torch.Generator().manual_seed(5)
    latents = torch.randn(n, frames, 4, 8, 8, generator=gen).to(torch.float16)
    return LatentClips(latents, [CAPTIONS[i % 2] for i in range(n)], start_is_described=True)


def tiny_trainer(out: Path, info: DistInfo, steps: int = 4, **settings) -> Trainer:
    from transformers import ByT5Tokenizer

    card = tiny_card()
    model = tiny_model().train()
    text = tiny_text_encoder(card.model.caption_channels).train()
    kw = dict(
        steps=steps,
        batch_size=2,
        lr=1e-3,
        warmup_steps=1,
        ema_decay=0.9,
        checkpoint_every=2,
        log_every=1,
        p_zero_prefix=0.2,
        text_dropout=0.3,
        tpe_random_start="all",
    )
    train = TrainSettings(**{**kw, **settings})
    loss_fn, _ = dit_loss_fn(tiny_clips(), ByT5Tokenizer(), train, card)
    module = TextToVideoObjective(model, text, train_text=True)
    return Trainer(module, loss_fn, train, info, out, stage="dit", seed=3)


if __name__ == "__main__":
    from ca2vdm_cli.train.loop import init_distributed

    torch.set_num_threads(1)
    info = init_distributed("cpu")
    trainer = tiny_trainer(Path(sys.argv[1]) / "ckpt", info, steps=3)
    trainer.fit()
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in trainer.module.state_dict().items()}
    save_file(state, str(Path(sys.argv[1]) / f"rank{info.rank}.safetensors"))
    torch.distributed.destroy_process_group()

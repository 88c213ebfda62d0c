"""The stages of `ca2vdm train`, in order, each skipped when its output already exists:

    vae      train the sprites VAE (or load `vae.path`)                        -> OUT/vae/
    decoder  fine-tune its decoder only (the latent space does not change)     -> OUT/vae-decoder/
    latents  encode the training clips once with OUT/vae's encoder             -> OUT/latents.safetensors
    dit      train CausalSTDiT (+ text encoder) with the clean-prefix objective -> OUT/checkpoints/dit/
    export   EMA weights + VAE (fine-tuned decoder) + text encoder + card      -> OUT/model/

The decoder stage and the latents/dit stages only share OUT/vae, so they may run at the same time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ca2vdm_cli.train.loop import DistInfo, LogFn, Trainer, barrier
from ca2vdm_cli.train.recipe import TrainSettings

logger = logging.getLogger(__name__)

STAGES = ("vae", "decoder", "latents", "dit", "export")


def vae_stage(recipe: dict[str, Any], out: Path, info: DistInfo, on_log: LogFn | None = None):
    """Train (or load) the VAE; returns it on `info.device` in eval mode with config.scaling_factor set."""
    from diffusers import AutoencoderKL

    from ca2vdm_cli.train import vae as vae_lib

    spec = recipe["vae"]
    target = out / "vae"
    if "path" in spec:
        vae = AutoencoderKL.from_pretrained(spec["path"]).to(info.device).eval()
        if spec.get("normalise_channels", False):
            _normalise_channels(vae, info)
        return vae
    if (target / "config.json").is_file():
        logger.info("vae: using the trained VAE in %s", target)
        return AutoencoderKL.from_pretrained(target).to(info.device).eval()
    if "config" not in spec:
        raise_config("the recipe's [vae] table needs `path` (a diffusers AutoencoderKL folder) or `config`")
    if recipe["data"].get("kind") != "sprites":
        raise_config("training a VAE is only supported on the sprites world; give vae.path for video data")

    torch.manual_seed(recipe["seed"])
    vae = vae_lib.build_vae(spec["config"])
    settings = _vae_settings(spec, steps=int(spec.get("steps", 1000)), lr=float(spec.get("lr", 1e-3)))
    objective = vae_lib.VAEObjective(vae, float(spec.get("kl_weight", 1e-6)))
    _fit_vae(objective, vae, settings, "vae", recipe, out, info, on_log)
    vae.eval()
    if spec.get("normalise_channels", False):  # per-channel zero mean / unit std, folded into the weights
        _normalise_channels(vae, info)
        scaling = 1.0
    else:
        scaling = 1.0 / vae_lib.latent_std(vae, info.device)
        vae.register_to_config(scaling_factor=scaling)
    report = vae_lib.reconstruction_report(vae, scaling, info.device)
    logger.info("vae: scaling_factor=%.5f mae=%.3f bad_pixels=%.5f", scaling, *report.values())
    if info.is_main:
        vae.save_pretrained(target)
        (out / "vae-report.json").write_text(json.dumps({"scaling_factor": scaling, **report}, indent=2))
    barrier(info)
    return vae


def _normalise_channels(vae, info: DistInfo) -> None:
    """Fold the per-channel latent mean and std of random sprite frames into `vae` (scaling factor 1)."""
    from ca2vdm_cli.train import vae as vae_lib

    mean, std = vae_lib.channel_stats(vae, info.device)
    vae_lib.fold_channel_normalisation(vae, mean, std)
    logger.info("vae: folded per-channel latent mean %s and std %s", mean.tolist(), std.tolist())


def decoder_stage(recipe: dict[str, Any], out: Path, info: DistInfo, on_log: LogFn | None = None):
    """Fine-tune the decoder of OUT/vae (recipe vae.decoder_steps > 0) -> OUT/vae-decoder; returns the VAE
    to ship (OUT/vae when there is nothing to fine-tune)."""
    from diffusers import AutoencoderKL

    from ca2vdm_cli.train import vae as vae_lib

    spec = recipe["vae"]
    target = out / "vae-decoder"
    if (target / "config.json").is_file():
        return AutoencoderKL.from_pretrained(target).to(info.device).eval()
    vae = AutoencoderKL.from_pretrained(out / "vae").to(info.device)
    steps = int(spec.get("decoder_steps", 0))
    if steps <= 0:
        return vae.eval()
    settings = _vae_settings(
        spec,
        steps=steps,
        lr=float(spec.get("decoder_lr", 3e-4)),
        batch_size=int(spec.get("decoder_batch_size", spec.get("batch_size", 16))),
    )
    objective = vae_lib.DecoderObjective(vae, float(spec.get("foreground_weight", 10.0)))
    _fit_vae(objective, vae, settings, "decoder", recipe, out, info, on_log)
    vae.eval()
    report = vae_lib.reconstruction_report(vae, float(vae.config.scaling_factor), info.device)
    logger.info("decoder: mae=%.3f bad_pixels=%.5f", *report.values())
    if info.is_main:
        vae.save_pretrained(target)
        (out / "decoder-report.json").write_text(json.dumps(report, indent=2))
    barrier(info)
    return vae


def _vae_settings(
    spec: dict[str, Any], *, steps: int, lr: float, batch_size: int | None = None
) -> TrainSettings:
    """Trainer settings for a VAE stage from the recipe's [vae] table."""
    return TrainSettings(
        steps=steps,
        batch_size=batch_size if batch_size is not None else int(spec.get("batch_size", 16)),
        lr=lr,
        warmup_steps=int(spec.get("warmup_steps", 50)),
        min_lr_ratio=float(spec.get("min_lr_ratio", 0.1)),
        ema_decay=float(spec.get("ema_decay", 0.99)),
        checkpoint_every=int(spec.get("checkpoint_every", 250)),
        log_every=int(spec.get("log_every", 25)),
    )


def _fit_vae(objective, vae, settings: TrainSettings, stage: str, recipe, out: Path, info, on_log) -> None:
    """Train `objective` (a VAE or decoder objective over `vae`) on sprite frames, resuming from
    OUT/checkpoints/<stage>/, and leave the EMA weights in it."""
    from ca2vdm_cli.train import vae as vae_lib

    down = 2 ** (len(vae.config.block_out_channels) - 1)
    size = int(vae.config.sample_size)
    latent_shape = (int(vae.config.latent_channels), size // down, size // down)
    trainer = Trainer(
        objective,
        vae_lib.vae_loss_fn(settings.batch_size, latent_shape),
        settings,
        info,
        out / "checkpoints" / stage,
        stage=stage,
        seed=recipe["seed"],
    )
    trainer.resume()
    trainer.fit(on_log)
    objective.load_state_dict(trainer.ema_state_dict())


def raise_config(message: str) -> None:
    from ca2vdm_cli.errors import ConfigError

    raise ConfigError(message)


# ----------------------------------------------------------------------------- stage 2: latents
def _frame_encoder(vae, scale: float, micro_batch: int = 64):
    """uint8 (B, T, H, W, 3) -> latents (B, c, T, h, w) × scaling factor (posterior means), on the CPU."""
    from ca2vdm_cli.media.vae import encode_frames

    def encode(frames) -> torch.Tensor:
        return encode_frames(vae, torch.from_numpy(frames), scale, micro_batch=micro_batch).cpu()

    return encode


def latents_stage(recipe: dict[str, Any], out: Path, vae, scale: float, info: DistInfo):
    """Encode the training clips once (rank 0) and load them on every rank."""
    from ca2vdm_cli.train import data

    spec = recipe["data"]
    path = out / "latents.safetensors"
    fingerprint = {"data": spec, "vae_scaling_factor": round(scale, 6), "foreground_masks": 1}
    clips = data.load_clips(path, fingerprint) if info.is_main else None
    if info.is_main and clips is None:
        encode = _frame_encoder(vae, scale)
        kind = spec.get("kind")
        if kind == "sprites":
            clips = data.sprite_clips(int(spec["videos"]), int(spec["frames"]), encode)
        elif kind == "videos":
            clips = data.folder_clips(
                Path(spec["dir"]),
                Path(spec["captions"]),
                int(spec["clip_frames"]),
                int(spec.get("stride", 1)),
                int(spec["size"]),
                encode,
            )
        else:
            raise_config(f"data.kind={kind!r}: use 'sprites' or 'videos'")
        data.save_clips(path, clips, fingerprint)
        logger.info("latents: wrote %s %s", path, tuple(clips.latents.shape))
    barrier(info)
    return data.load_clips(path)  # from disk on every rank (plain tensors, not inference-mode ones)


# ----------------------------------------------------------------------------- stage 3: transformer
def build_text_encoder(recipe: dict[str, Any]):
    """(text encoder or None, tokenizer or None) from the recipe's [text_encoder] table."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    spec = recipe.get("text_encoder", {})
    if "path" in spec:
        from transformers import AutoTokenizer

        encoder = T5EncoderModel.from_pretrained(spec["path"])
        tokenizer = (
            ByT5Tokenizer()
            if spec.get("tokenizer") == "byt5"
            else AutoTokenizer.from_pretrained(spec["path"])
        )
        return encoder, tokenizer
    if "config" not in spec:
        return None, None
    torch.manual_seed(recipe["seed"] + 1)
    tokenizer = sprites_word_tokenizer() if spec.get("tokenizer") == "words" else ByT5Tokenizer()
    return T5EncoderModel(T5Config(**spec["config"])), tokenizer


def sprites_word_tokenizer():
    """A word-level tokenizer over the sprites grammar's closed vocabulary (a `PreTrainedTokenizerFast`,
    saved with the text encoder; the card says tokenizer = "files")."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from ca2vdm_cli.sprites import world as sprites

    words = ["<pad>", "</s>", "<unk>", "a", "moving", "and", *sprites.COLOURS, *sprites.SHAPES]
    words += list(sprites.DIRECTIONS)
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", padding_side="right"
    )


def tokenize(tokenizer, captions: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> ids (B, N), mask (B, N): padded/truncated to N tokens, as at inference."""
    enc = tokenizer(
        captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )
    return enc.input_ids, enc.attention_mask


def training_diffusion(card):
    """The 1000-step diffusion the card's sampler inverts (its schedule and prediction type)."""
    from ca2vdm_cli.sampling.ddpm import Diffusion

    return Diffusion(1000, schedule=card.sampling.schedule, prediction=card.sampling.prediction)


def dit_loss_fn(clips, tokenizer, settings: TrainSettings, card):
    from ca2vdm_cli.train import objective as obj

    chunk, cache, M = card.sampling.chunk, card.sampling.cache_frames, card.model.max_tpe_len
    allowed = obj.allowed_prefix_lengths(chunk, cache, settings.p_zero_prefix, settings.t2v_prefixes)
    diffusion = training_diffusion(card)
    B = settings.batch_size

    if settings.image_fraction > 0 and not card.text_to_video:
        raise_config("train.image_fraction > 0 trains text-to-image frames; the card must say text_to_video")

    def loss_fn(module, step: int, gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        image_step = (
            settings.image_fraction > 0 and float(torch.rand((), generator=gen)) < settings.image_fraction
        )
        if image_step:  # single frames from text alone: frame 0 of a text-to-video start
            P, T, n, from_start = 0, 1, settings.image_batch_size, False
        else:
            P = obj.sample_prefix_length(gen, allowed, settings.p_zero_prefix)
            T, n = P + chunk, B
            from_start = clips.start_is_described and P <= 1
        x0, captions, fg = clips.sample_with_foreground(gen, n, T, from_start=from_start)
        tpe_start = obj.draw_tpe_start(gen, T, M, settings.tpe_random_start)
        batch = obj.make_prefix_batch(
            x0.to(device), P, gen, diffusion, settings.prefix_perturb_t, tpe_start, settings.prefix_noise_max
        )
        if settings.foreground_weight != 1.0:
            batch.weight = obj.foreground_weight(fg, settings.foreground_weight, x0.shape).to(device)
        ids = mask = drop = None
        if tokenizer is not None:
            ids, mask = (t.to(device) for t in tokenize(tokenizer, captions, card.text_max_length))
            drop = (torch.rand(n, generator=gen) < settings.text_dropout).to(device)
        out = module(batch, ids, mask, drop)
        if image_step:
            out["image_loss"] = out["loss"].detach()
        else:
            out["video_loss"] = out["loss"].detach()
            out["prefix_len"] = torch.tensor(float(P))
        out["image_step"] = torch.tensor(float(image_step))
        return out

    return loss_fn, allowed


def dit_stage(
    recipe: dict[str, Any],
    out: Path,
    card,
    model,
    text_encoder,
    tokenizer,
    clips,
    info: DistInfo,
    on_log: LogFn | None = None,
    train: bool = True,
):
    """Train the transformer (and the text encoder when the recipe says so); returns the objective module
    holding the EMA weights. With `train=False` only the newest checkpoint is loaded."""
    from ca2vdm_cli.train import objective as obj

    settings = TrainSettings.from_dict(recipe.get("train", {}))
    train_text = bool(recipe.get("text_encoder", {}).get("train", False)) and text_encoder is not None
    module = obj.TextToVideoObjective(model, text_encoder, train_text, training_diffusion(card))
    if settings.gradient_checkpointing:
        obj.enable_gradient_checkpointing(model)
    loss_fn, allowed = dit_loss_fn(clips, tokenizer, settings, card)
    logger.info(
        "dit: %.2fM transformer parameters, text encoder %s, prefix lengths %s, %d clips of %d frames",
        sum(p.numel() for p in model.parameters()) / 1e6,
        "trained" if train_text else "frozen",
        allowed,
        len(clips),
        clips.clip_frames,
    )
    trainer = Trainer(
        module, loss_fn, settings, info, out / "checkpoints" / "dit", stage="dit", seed=recipe["seed"]
    )
    resumed = trainer.resume()
    if train:
        trainer.fit(on_log)
    elif not resumed:
        raise_config(f"nothing to export: no checkpoints in {out / 'checkpoints' / 'dit'}")
    module.load_state_dict(trainer.ema_state_dict())
    return module


# ----------------------------------------------------------------------------- stage 4: export
def export_stage(recipe: dict[str, Any], out: Path, card, module, vae, tokenizer, info: DistInfo) -> Path:
    """Write OUT/model: the card, the EMA transformer (in export.dtype), the VAE and the text encoder."""
    from ca2vdm_cli.store.modeldir import save_model_dir

    target = out / "model"
    dtype = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[
        recipe.get("export", {}).get("dtype", "float32")
    ]
    if info.is_main:
        text = module.text_encoder
        if text is not None and dtype is not None and recipe.get("export", {}).get("text_encoder_dtype"):
            text = text.to(dtype)
        save_model_dir(target, card, module.model, vae, text, tokenizer, dtype=dtype)
        logger.info("export: wrote %s", target)
    barrier(info)
    return target


# ----------------------------------------------------------------------------- all stages
def resolved_card(recipe: dict[str, Any], scaling_factor: float):
    from ca2vdm_cli.store.card import ModelCard

    card = dict(recipe["card"])
    card["vae"] = {**card.get("vae", {}), "scaling_factor": scaling_factor}
    return ModelCard.from_dict(card)


def init_from_preset(name: str, info: DistInfo):
    """Components of a preset (e.g. opensora-v1-256) resolved by the weights module, ready to fine-tune."""
    from ca2vdm_cli.store.modeldir import load_model_dir
    from ca2vdm_cli.store.weights import resolve_model

    comps = load_model_dir(resolve_model(name), info.device, torch.float32)
    comps.model.requires_grad_(True).train()
    return comps


def train_all(
    recipe: dict[str, Any],
    out: Path,
    info: DistInfo,
    *,
    init: str | None = None,
    stages: tuple[str, ...] = STAGES,
    on_log: LogFn | None = None,
) -> Path | None:
    """Run the requested stages in order; returns the exported model directory (when exported)."""
    from ca2vdm_cli.models.stdit.model import CausalSTDiT

    out.mkdir(parents=True, exist_ok=True)
    if info.is_main:
        (out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    if init is not None:
        comps = init_from_preset(init, info)
        card, vae, model = comps.card, comps.vae, comps.model
        text_encoder, tokenizer = comps.text_encoder, comps.tokenizer
        if text_encoder is not None and recipe.get("text_encoder", {}).get("train", False):
            text_encoder.requires_grad_(True).train()
    else:
        vae = vae_stage(recipe, out, info, on_log) if "vae" in stages or (out / "vae").is_dir() else None
        if vae is None:
            raise_config(f"no VAE in {out / 'vae'}: run the vae stage first")
        if "decoder" in stages:
            decoder_stage(recipe, out, info, on_log)
        card = resolved_card(recipe, float(vae.config.scaling_factor))
        torch.manual_seed(recipe["seed"])
        model = CausalSTDiT(card.model)
        if not TrainSettings.from_dict(recipe.get("train", {})).zero_init_new:
            model.initialize_weights(zero_init_new=False)  # from scratch: no zero-init branches
        text_encoder, tokenizer = build_text_encoder(recipe) if card.model.has_text else (None, None)
    if not {"latents", "dit", "export"} & set(stages):
        return None
    clips = latents_stage(recipe, out, vae, card.vae_scaling_factor, info)
    if not {"dit", "export"} & set(stages):
        return None
    if card.model.has_text and tokenizer is None:
        raise_config("the card uses text, but the recipe has no [text_encoder] (give config or path)")
    module = dit_stage(
        recipe, out, card, model, text_encoder, tokenizer, clips, info, on_log, train="dit" in stages
    )
    if "export" not in stages:
        return None
    if init is None:  # ship the fine-tuned decoder (same encoder, so the same latent space)
        vae = (
            decoder_stage(recipe, out, info) if "decoder" in stages or (out / "vae-decoder").is_dir() else vae
        )
    return export_stage(recipe, out, card, module, vae, tokenizer, info)

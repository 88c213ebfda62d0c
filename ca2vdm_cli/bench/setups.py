"""What `ca2vdm bench` runs on: a built-in list of architectures that need no files (random weights), or a
model directory / the embedded default / a preset, optionally with random transformer weights (timing
does not need trained weights, so XL/2 can be timed anywhere without downloading)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ca2vdm_cli.errors import InputError
from ca2vdm_cli.models import family
from ca2vdm_cli.models.stdit.config import ModelConfig, SamplingConfig
from ca2vdm_cli.models.wan.config import WanConfig
from ca2vdm_cli.models.wan.spec import WanSampling
from ca2vdm_cli.store.card import ModelCard, read_card
from ca2vdm_cli.store.modeldir import Components
from ca2vdm_cli.store.presets import DEFAULT_MODEL

logger = logging.getLogger(__name__)

# diffusers AutoencoderKL constructor arguments of the VAEs built for random-weight runs
SD_VAE = dict(
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
)  # the Stable Diffusion VAE (sd-vae-ft-ema) architecture, 83.7 M parameters, 8x down
SMALL_VAE = dict(
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    mid_block_add_attention=False,
)  # 8x down, 0.7 M parameters
TINY_VAE = dict(
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(8, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    mid_block_add_attention=False,
)  # 4x down


@dataclass(frozen=True)
class Arch:
    """A built-in architecture: model and sampling configs, frame size, and the random parts around it."""

    model: Any  # the family's architecture config
    sampling: Any  # the family's sampling config
    size: int  # frame height in pixels (= width unless `width` is given)
    vae: dict[str, Any] | None  # AutoencoderKL kwargs; None: no VAE (latents only)
    vae_scaling: float
    text_model: dict[str, Any] | None  # T5Config kwargs of a random text encoder (ByT5 tokenizer); None: none
    description: str
    extra: dict[str, Any] = field(default_factory=dict)
    family: str = "stdit"
    width: int | None = None
    downsample: int | None = None  # pixels per latent pixel when there is no VAE to say it


_XL2 = ModelConfig(mask_channel=True)  # CausalSTDiT2-XL/2, T5 text, prev_frames_3, mask channel, cyclic 33
_PAPER = SamplingConfig(steps=100, chunk=8, cache_frames=25, cfg_scale=1.0, prefix_perturb_t=50)
ARCHS: dict[str, Arch] = {
    "xl2-256": Arch(
        _XL2, _PAPER, 256, SD_VAE, 0.18215, None, "CausalSTDiT2-XL/2 (910 M), 256x256, T5-XXL-sized captions"
    ),
    "xl2-512": Arch(
        _XL2.replace(latent_size=(64, 64)),
        _PAPER,
        512,
        SD_VAE,
        0.18215,
        None,
        "CausalSTDiT2-XL/2 (910 M), 512x512, T5-XXL-sized captions",
    ),
    "small": Arch(
        ModelConfig(
            latent_size=(16, 16),
            hidden_size=128,
            depth=4,
            num_heads=4,
            caption_channels=64,
            model_max_length=32,
            mask_channel=True,
        ),
        _PAPER.replace(steps=20),
        128,
        SMALL_VAE,
        0.18215,
        dict(vocab_size=384, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4),
        "CPU benchmark model: the XL/2 layout at width 128, depth 4, 128x128 (1.8 M parameters)",
    ),
    "tiny": Arch(
        ModelConfig(
            latent_size=(8, 8),
            hidden_size=64,
            depth=3,
            num_heads=4,
            caption_channels=32,
            model_max_length=7,
            mask_channel=True,
        ),
        SamplingConfig(steps=3, chunk=4, cache_frames=8),
        32,
        TINY_VAE,
        0.5,
        dict(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4),
        "smoke-test model (the test suite's size)",
    ),
    # the causal Wan family: latents only (the Wan VAE is not a random-weight part), T5-shaped prompts
    "wan-tiny": Arch(
        WanConfig.tiny(),
        WanSampling(max_frames=24),
        128,
        None,
        1.0,
        None,
        "causal Wan layout at width 192, 4 layers, 16x16 latents (2.3 M parameters), global attention",
        family="wan",
        downsample=8,
    ),
    "wan-1.3b": Arch(
        WanConfig.wan_1_3b(),
        WanSampling(),
        480,
        None,
        1.0,
        None,
        "Wan2.1-T2V-1.3B causal DiT (1.42 B), 480x832 (60x104 latents), blocks of 3, global attention "
        "over 21 latent frames",
        family="wan",
        width=832,
        downsample=8,
    ),
}


@dataclass
class BenchSetup:
    """A model ready to benchmark, with whatever text encoder and VAE it has."""

    name: str
    source: str  # where the weights came from, in words
    model: Any  # the family's transformer
    sampling: Any
    height: int
    width: int
    vae: Any | None = None
    vae_scaling: float = 0.18215
    text_encoder: Any | None = None
    tokenizer: Any | None = None
    text_max_length: int = 120
    family: str = "stdit"
    downsample: int | None = None  # pixels per latent pixel (None: from the STDiT latent size)
    accepts_images: bool = True

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def components(self, sampling: Any) -> Components:
        """What the pipeline runs: these networks under a card that describes them."""
        cfg = self.model.config
        stdit = self.family == "stdit"
        card = ModelCard(
            name=self.name,
            family=self.family,
            model=cfg,
            sampling=sampling,
            height=self.height,
            width=self.width,
            vae_scaling_factor=self.vae_scaling,
            vae_downsample=self.downsample or self.height // cfg.latent_size[0],
            text_max_length=self.text_max_length if cfg.has_text or not stdit else cfg.model_max_length,
            text_to_video=True,
            accepts_images=self.accepts_images,
        )
        return Components(card, self.model, self.vae, self.text_encoder, self.tokenizer, None)


def random_transformer(
    cfg: Any, device: torch.device, dtype: torch.dtype, seed: int, family_name: str = "stdit"
) -> Any:
    """The family's transformer with its official initialisation, except that the zero-initialised
    projections get small random values too (all-zero weights can make some hardware look faster)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = family(family_name).build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    return model.to(dtype).eval().requires_grad_(False)


def load_setup(
    model: str | None,
    arch: str | None,
    *,
    random_weights: bool,
    device: torch.device,
    dtype: torch.dtype,
    seed: int = 0,
    text_on_cpu: bool = False,
) -> BenchSetup:
    """`arch` (random weights, no files) or `model` (a directory, the embedded default, or a preset)."""
    if arch is not None:
        if model is not None:
            raise InputError(f"--arch {arch} and --model {model}: pass one of them")
        return _arch_setup(arch, device, dtype, seed)
    name = model or DEFAULT_MODEL
    directory = Path(name).expanduser()
    if directory.is_dir():
        return _dir_setup(directory, read_card(directory), random_weights, device, dtype, seed, text_on_cpu)
    if os.sep in name or name.startswith("."):
        raise _unknown(name, "no such directory")
    if random_weights:
        card, directory_or_none = _preset_card(name)
        if directory_or_none is not None:
            return _dir_setup(directory_or_none, card, True, device, dtype, seed, text_on_cpu)
        return _card_setup(card, device, dtype, seed)
    resolved = _resolve(name)
    return _dir_setup(resolved, read_card(resolved), False, device, dtype, seed, text_on_cpu)


def _unknown(name: str, why: str) -> InputError:
    return InputError(
        f"--model {name!r}: {why}; pass a model directory, or time an architecture with random weights: "
        f"--arch {' | '.join(ARCHS)}"
    )


def _preset_card(name: str) -> tuple[ModelCard, Path | None]:
    from ca2vdm_cli.store.presets import embedded_dir, load_preset

    return load_preset(name), embedded_dir(name)


def _resolve(name: str) -> Path:
    from ca2vdm_cli.store.weights import resolve_model

    return resolve_model(name)


def _arch_setup(arch: str, device: torch.device, dtype: torch.dtype, seed: int) -> BenchSetup:
    if arch not in ARCHS:
        raise InputError(f"--arch {arch!r} is not one of {', '.join(ARCHS)}")
    spec = ARCHS[arch]
    model = random_transformer(spec.model, device, dtype, seed, spec.family)
    width = spec.width or spec.size
    setup = BenchSetup(
        arch, "random weights", model, spec.sampling, spec.size, width, vae_scaling=spec.vae_scaling
    )
    setup.family, setup.downsample = spec.family, spec.downsample
    setup.accepts_images = spec.family == "stdit"
    setup.text_max_length = family(spec.family).caption_shape(spec.model)[0]
    if spec.vae is not None:
        setup.vae = _random_vae(spec.vae, spec.size, device, dtype, seed)
    if spec.text_model is not None and spec.model.has_text:
        from transformers import T5Config, T5EncoderModel

        from ca2vdm_cli.media.text import load_tokenizer

        torch.manual_seed(seed)
        config = T5Config(**spec.text_model, feed_forward_proj="gated-gelu")
        setup.text_encoder = T5EncoderModel(config).to(device).eval().requires_grad_(False)
        setup.tokenizer = load_tokenizer("byt5")
    return setup


def _card_setup(card: ModelCard, device: torch.device, dtype: torch.dtype, seed: int) -> BenchSetup:
    """A preset whose files are not here: random transformer, and the SD VAE architecture when it fits."""
    model = random_transformer(card.model, device, dtype, seed, card.family)
    setup = BenchSetup(card.name, "random weights (no files)", model, card.sampling, card.height, card.width)
    setup.vae_scaling, setup.text_max_length = card.vae_scaling_factor, card.text_max_length
    setup.family, setup.downsample, setup.accepts_images = (
        card.family,
        card.vae_downsample,
        card.accepts_images,
    )
    if card.family == "stdit" and card.vae_downsample == 8 and card.model.in_channels == 4:
        setup.vae = _random_vae(SD_VAE, card.height, device, dtype, seed)
    return setup


def _dir_setup(
    path: Path,
    card: ModelCard,
    random_weights: bool,
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
    text_on_cpu: bool,
) -> BenchSetup:
    from ca2vdm_cli.store.modeldir import check_model_dir, load_model_dir

    check_model_dir(path)
    text_device = torch.device("cpu") if text_on_cpu else None
    parts = load_model_dir(path, device, dtype, text_device=text_device, text_dtype=None)
    source = f"random transformer weights, VAE/text encoder from {path}" if random_weights else str(path)
    model = (
        random_transformer(card.model, device, dtype, seed, card.family) if random_weights else parts.model
    )
    return BenchSetup(
        card.name,
        source,
        model,
        card.sampling,
        card.height,
        card.width,
        parts.vae,
        card.vae_scaling_factor,
        parts.text_encoder,
        parts.tokenizer,
        card.text_max_length,
        card.family,
        card.vae_downsample,
        card.accepts_images,
    )


def _random_vae(
    kwargs: dict[str, Any], size: int, device: torch.device, dtype: torch.dtype, seed: int
) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, sample_size=size, **kwargs)
    if device.type == "cuda" and dtype != torch.float32:  # half convolutions are slow on CPUs: fp32 there
        vae = vae.to(dtype)
    return vae.to(device).eval().requires_grad_(False)

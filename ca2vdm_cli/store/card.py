"""Model cards and the model-directory layout. Pure Python (no torch), so listing models is instant.

A model directory is what `ca2vdm generate --model DIR` loads, what `ca2vdm train` writes and what
`weights/sprites/` ships:

    DIR/ca2vdm.json              the card: architecture, sampling defaults, video defaults, VAE/text settings
    DIR/transformer.safetensors  the family's transformer under its official key names (CausalSTDiT2, or
                                 the original Wan layout for `family = "wan"`)
    DIR/vae/                     diffusers AutoencoderKL.save_pretrained (kind "wan": AutoencoderKLWan)
    DIR/text_encoder/            transformers T5EncoderModel.save_pretrained (+ tokenizer files, unless the
                                 card says tokenizer = "byt5": the file-free ByT5Tokenizer); with
                                 `text.encoder = "umt5"` a UMT5EncoderModel and its tokenizer files

Downloadable presets (`weights/<name>.json`) use the same card with a `sources` table saying where each
file comes from (Hub repo, filename, revision, size, sha256, licence). Parts: `transformer`, `vae`,
`text_encoder`, `tokenizer` (files linked into text_encoder/). Each part (validated by presets.parse_sources):

    repo      Hub repo id; absent for a local-only transformer (given with --weights PATH)
    revision  pinned 40-hex commit sha
    files     [{path, size (exact bytes or null), approx_size (bytes as the Hub page rounds them),
                sha256 (64 hex or null when unknown: then the Hub's own checksum is checked), note}]
    format    transformer only: "opensora-v1" (converted) | "ca2vdm-official" (a CausalSTDiT2
              checkpoint, strict) | "ca2vdm" (already transformer.safetensors)
    license, params (parameter count, for memory planning), notes
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.models import FAMILY_NAMES, spec

CARD_FILE = "ca2vdm.json"
TRANSFORMER_FILE = "transformer.safetensors"
VAE_DIR = "vae"
TEXT_ENCODER_DIR = "text_encoder"
TOKENIZERS = ("byt5", "files")
VAE_KINDS = {"image": 1, "wan": 4}  # VAE kind -> video frames per latent frame (after the first)
TEXT_ENCODERS = ("t5", "umt5")  # transformers T5EncoderModel | the Wan umT5 (UMT5EncoderModel)


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to build and run a model, except the weights themselves."""

    name: str
    model: Any  # the family's architecture config (`models.spec(family).CONFIG`)
    sampling: Any  # the family's sampling defaults (`models.spec(family).SAMPLING`)
    fps: int = 8
    height: int = 256  # output frame size in pixels
    width: int = 256
    vae_scaling_factor: float = 0.18215
    vae_downsample: int = 8  # pixels per latent pixel
    text_max_length: int = 120  # caption tokens
    tokenizer: str = "files"  # "byt5": file-free ByT5Tokenizer; "files": tokenizer saved in text_encoder/
    text_to_video: bool = False  # can start without a first image (trained with an empty prefix)
    description: str = ""
    intended_use: str = ""
    license: str = ""
    sources: dict[str, Any] = field(default_factory=dict)  # downloadable presets: where each part comes from
    family: str = "stdit"  # the model family (`models.family`): architecture, denoisers, sampler
    accepts_images: bool = True  # can start from given frames (--image)
    vae_kind: str = "image"  # "image": diffusers AutoencoderKL, one video frame per latent frame;
    # "wan": AutoencoderKLWan, 1 + 4·(L − 1) video frames for L latent frames, decoded as a stream
    text_encoder: str = "t5"  # `TEXT_ENCODERS`

    def __post_init__(self) -> None:
        if self.family not in FAMILY_NAMES:
            raise ConfigError(
                f"card {self.name!r}: family {self.family!r} is not one of {', '.join(FAMILY_NAMES)}"
            )
        if self.tokenizer not in TOKENIZERS:
            raise ConfigError(f"card {self.name!r}: tokenizer {self.tokenizer!r} is not one of {TOKENIZERS}")
        if self.vae_kind not in VAE_KINDS:
            raise ConfigError(
                f"card {self.name!r}: vae kind {self.vae_kind!r} is not one of {list(VAE_KINDS)}"
            )
        if self.text_encoder not in TEXT_ENCODERS:
            raise ConfigError(
                f"card {self.name!r}: text encoder {self.text_encoder!r} is not one of {TEXT_ENCODERS}"
            )
        if not self.text_to_video and not self.accepts_images:
            raise ConfigError(f"card {self.name!r}: a model needs text_to_video or accepts_images")
        self.spec.check_card(self)

    @property
    def spec(self) -> Any:
        """The family's card-facing module (`models.spec`)."""
        return spec(self.family)

    @property
    def latent_size(self) -> tuple[int, int]:
        """(h, w) of a latent frame."""
        return (self.height // self.vae_downsample, self.width // self.vae_downsample)

    @property
    def latent_channels(self) -> int:
        return int(self.model.in_channels)

    @property
    def frames_per_latent(self) -> int:
        """Video frames one latent frame covers after the first (1 for an image VAE, 4 for Wan's)."""
        return VAE_KINDS[self.vae_kind]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "description": self.description,
            "intended_use": self.intended_use,
            "license": self.license,
            "model": self.model.to_dict(),
            "sampling": self.sampling.to_dict(),
            "video": {"fps": self.fps, "height": self.height, "width": self.width},
            "vae": {
                "kind": self.vae_kind,
                "scaling_factor": self.vae_scaling_factor,
                "downsample": self.vae_downsample,
            },
            "text": {
                "max_length": self.text_max_length,
                "tokenizer": self.tokenizer,
                "encoder": self.text_encoder,
            },
            "text_to_video": self.text_to_video,
            "accepts_images": self.accepts_images,
            "sources": self.sources,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        known = {
            "name",
            "family",
            "description",
            "intended_use",
            "license",
            "model",
            "sampling",
            "video",
            "vae",
            "text",
            "text_to_video",
            "accepts_images",
            "sources",
        }
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model card keys {unknown}; valid keys: {sorted(known)}")
        if "name" not in d or "model" not in d:
            raise ConfigError("a model card needs at least 'name' and 'model'")
        video, vae, text = d.get("video", {}), d.get("vae", {}), d.get("text", {})
        family = d.get("family", "stdit")
        if family not in FAMILY_NAMES:
            raise ConfigError(
                f"card {d['name']!r}: family {family!r} is not one of {', '.join(FAMILY_NAMES)}"
            )
        fam = spec(family)
        return cls(
            name=d["name"],
            family=family,
            model=fam.CONFIG.from_dict(d["model"]),
            sampling=fam.SAMPLING.from_dict(d.get("sampling", {})),
            fps=int(video.get("fps", 8)),
            height=int(video.get("height", 256)),
            width=int(video.get("width", 256)),
            vae_scaling_factor=float(vae.get("scaling_factor", 0.18215)),
            vae_downsample=int(vae.get("downsample", 8)),
            vae_kind=str(vae.get("kind", "image")),
            text_max_length=int(text.get("max_length", 120)),
            tokenizer=text.get("tokenizer", "files"),
            text_encoder=str(text.get("encoder", "t5")),
            text_to_video=bool(d.get("text_to_video", False)),
            accepts_images=bool(d.get("accepts_images", True)),
            description=d.get("description", ""),
            intended_use=d.get("intended_use", ""),
            license=d.get("license", ""),
            sources=d.get("sources", {}),
        )


def read_card(path: str | Path) -> ModelCard:
    """Read a card from a model directory or a card file; ConfigError if missing or malformed."""
    path = Path(path)
    file = path / CARD_FILE if path.is_dir() else path
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no model card at {file}; a model directory needs {CARD_FILE}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read model card {file}: {exc}") from None
    return ModelCard.from_dict(data)


def write_card(directory: str | Path, card: ModelCard) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    file = directory / CARD_FILE
    file.write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    return file

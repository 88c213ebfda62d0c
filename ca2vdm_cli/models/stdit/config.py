"""Configuration dataclasses: the CausalSTDiT architecture (`ModelConfig`, with the mapping from the official
`CausalSTDiT2` constructor arguments) and sampling (`SamplingConfig`). Pure Python: no torch."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.models.attention_opts import DENSE, AttentionOptions

TPE_MODES = ("fixed", "cyclic", "rope")
SAMPLERS = ("iddpm", "ddim")
SCHEDULES = ("linear", "linear_zsnr", "cosine")  # as sampling.ddpm (this module imports no torch)
PREDICTIONS = ("eps", "v")
PE_MODES = ("off", "first_frame", "prev_frames")

# Official registry names → (depth, hidden size, heads); all use patch (1, 2, 2) and mlp_ratio 4.
OFFICIAL_VARIANTS: dict[str, tuple[int, int, int]] = {
    "CausalSTDiT2-XL/2": (28, 1152, 16),
    "CausalSTDiT2-Base": (14, 1152, 16),
    "CausalSTDiT2-Tiny": (2, 1152, 16),
}

# Official constructor arguments that only select kernels, precision or training behaviour.
_IGNORED_OFFICIAL_KEYS = {
    "type",
    "dtype",
    "enable_flashattn",
    "enable_layernorm_kernel",
    "enable_sequence_parallelism",
    "from_pretrained",
    "freeze",
    "from_scratch",
    "drop_path",
    "no_temporal_pos_emb",
    "kv_cache_dequeue",
    "kv_cache_max_seqlen",
}


def check_keys(cls: type, d: dict[str, Any], what: str) -> None:
    """ConfigError naming the keys of `d` that are not fields of dataclass `cls`, and the valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {what} keys {unknown}; valid keys: {sorted(names)}")


@dataclass(frozen=True)
class ModelConfig:
    """Every number the CausalSTDiT architecture depends on.

    `latent_size` is the (H, W) of the VAE latent; tokens per frame S = (H/2)·(W/2) with patch (1, 2, 2).
    `pe_frames` is N of `prev_frames_N` (1 for `first_frame`, 0 when prefix-enhanced attention is off).
    """

    latent_size: tuple[int, int] = (32, 32)
    in_channels: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    pred_sigma: bool = True
    class_dropout_prob: float = 0.1
    caption_channels: int = 4096  # 0: no text conditioning (no y_embedder, no cross-attention)
    model_max_length: int = 120
    space_scale: float = 1.0
    time_scale: float = 1.0
    max_tpe_len: int = 33  # M: rows of the temporal position table
    tpe_mode: str = "cyclic"
    mask_channel: bool = False  # official temp_extra_in_channels == 1
    mask_channel_all_blocks: bool = False  # official temp_extra_in_all_block
    pe_mode: str = "prev_frames"
    pe_frames: int = 3
    temporal_attention: str = "causal"  # causal | full | partial
    # not in the official architecture (False keeps its keys): the caption's masked mean, through an MLP
    # (`y_pooler`), is added to the timestep embedding, so every block's adaLN sees the prompt (as DiT's
    # class label); for small models trained from scratch, whose cross-attention learns slowly
    pooled_caption: bool = False

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------- derived sizes
    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.pred_sigma else self.in_channels

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.latent_size[0] // self.patch_size[1], self.latent_size[1] // self.patch_size[2]

    @property
    def tokens_per_frame(self) -> int:
        gh, gw = self.grid_size
        return gh * gw

    @property
    def has_text(self) -> bool:
        return self.caption_channels > 0

    @property
    def has_pe(self) -> bool:
        return self.pe_mode != "off"

    def validate(self) -> None:
        """Raise ConfigError naming the first inconsistent value."""
        if self.tpe_mode not in TPE_MODES:
            raise ConfigError(f"tpe_mode={self.tpe_mode!r} is not one of {TPE_MODES}")
        if self.pe_mode not in PE_MODES:
            raise ConfigError(f"pe_mode={self.pe_mode!r} is not one of {PE_MODES}")
        if self.temporal_attention not in ("causal", "full", "partial"):
            raise ConfigError(
                f"temporal_attention={self.temporal_attention!r} is not one of causal, full, partial"
            )
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.tpe_mode == "rope" and self.head_dim % 2:
            raise ConfigError(f"rope needs an even head dim, got {self.head_dim}")
        if self.patch_size[0] != 1:
            raise ConfigError(f"temporal patch size must be 1 (frame-causal model), got {self.patch_size[0]}")
        h, w = self.latent_size
        if h % self.patch_size[1] or w % self.patch_size[2]:
            raise ConfigError(f"latent size {h}x{w} is not divisible by the patch size {self.patch_size[1:]}")
        if self.hidden_size % 4:
            raise ConfigError(f"hidden_size {self.hidden_size} must be a multiple of 4 (2-D sin-cos table)")
        if self.has_pe and self.pe_frames < 1:
            raise ConfigError(f"pe_frames must be >= 1 when pe_mode={self.pe_mode!r}")
        if self.pe_mode == "first_frame" and self.pe_frames != 1:
            raise ConfigError("pe_mode='first_frame' uses exactly one context frame (pe_frames=1)")
        if self.max_tpe_len < 1:
            raise ConfigError(f"max_tpe_len must be >= 1, got {self.max_tpe_len}")
        if self.pooled_caption and not self.has_text:
            raise ConfigError("pooled_caption=true needs text conditioning (caption_channels > 0)")

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["latent_size"] = list(self.latent_size)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        check_keys(cls, d, "model config")
        kw = dict(d)
        for key in ("latent_size", "patch_size"):
            if key in kw:
                kw[key] = tuple(int(v) for v in kw[key])
        return cls(**kw)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- official mapping
    @classmethod
    def from_official(cls, kwargs: dict[str, Any]) -> ModelConfig:
        """Build from the official `CausalSTDiT2(...)` constructor kwargs (or an mmengine model dict).

        Accepts `type="CausalSTDiT2-XL/2"` (or Base/Tiny) for depth/width, the legacy aliases
        `temporal_max_len` and `cross_frame_attn="prev_prefix_N"`, and ignores kernel/precision switches.
        """
        kw = dict(kwargs)
        out: dict[str, Any] = {}
        variant = kw.get("type")
        if variant is not None:
            if variant not in OFFICIAL_VARIANTS:
                raise ConfigError(
                    f"unknown official model type {variant!r}; known: {sorted(OFFICIAL_VARIANTS)}"
                )
            out["depth"], out["hidden_size"], out["num_heads"] = OFFICIAL_VARIANTS[variant]
        if "temporal_max_len" in kw:
            kw.setdefault("max_tpe_len", kw.pop("temporal_max_len"))
        if "cross_frame_attn" in kw:
            legacy = kw.pop("cross_frame_attn")
            if isinstance(legacy, str):
                legacy = legacy.replace("prev_prefix_", "prev_frames_")
            kw.setdefault("spatial_attn_enhance", legacy)

        simple = {
            "in_channels": "in_channels",
            "hidden_size": "hidden_size",
            "depth": "depth",
            "num_heads": "num_heads",
            "mlp_ratio": "mlp_ratio",
            "pred_sigma": "pred_sigma",
            "class_dropout_prob": "class_dropout_prob",
            "caption_channels": "caption_channels",
            "model_max_length": "model_max_length",
            "space_scale": "space_scale",
            "time_scale": "time_scale",
            "max_tpe_len": "max_tpe_len",
            "temp_extra_in_all_block": "mask_channel_all_blocks",
        }
        for src, dst in simple.items():
            if src in kw:
                out[dst] = kw.pop(src)
        if "input_size" in kw:
            size = kw.pop("input_size")
            out["latent_size"] = (int(size[-2]), int(size[-1]))
        if "patch_size" in kw:
            out["patch_size"] = tuple(int(p) for p in kw.pop("patch_size"))
        if "relative_tpe_mode" in kw:
            mode = kw.pop("relative_tpe_mode")
            mode = "fixed" if mode is None else mode
            if mode not in TPE_MODES:
                raise ConfigError(
                    f"relative_tpe_mode={mode!r} is not supported; use None, 'cyclic' or 'rope'"
                )
            out["tpe_mode"] = mode
        else:
            out["tpe_mode"] = "fixed"  # official default (None)
        extra_in = int(kw.pop("temp_extra_in_channels", 0))
        if extra_in not in (0, 1):
            raise ConfigError(f"temp_extra_in_channels={extra_in} is not supported (0 or 1)")
        out["mask_channel"] = extra_in == 1
        enhance = kw.pop("spatial_attn_enhance", None)
        out["pe_mode"], out["pe_frames"] = _parse_spatial_enhance(enhance)
        causal = kw.pop("is_causal", True)
        out["temporal_attention"] = {True: "causal", False: "full", "partial": "partial"}.get(causal, "?")
        if out["temporal_attention"] == "?":
            raise ConfigError(f"is_causal={causal!r} is not one of True, False, 'partial'")
        if not out.get("caption_channels", 4096):
            out["caption_channels"] = 0

        unknown = sorted(k for k in kw if k not in _IGNORED_OFFICIAL_KEYS)
        if unknown:
            raise ConfigError(f"unknown CausalSTDiT2 arguments {unknown}")
        return cls(**out)


def _parse_spatial_enhance(value: Any) -> tuple[str, int]:
    if value is None or value is False:
        return "off", 0
    if value == "first_frame":
        return "first_frame", 1
    match = re.fullmatch(r"prev_frames_(\d+)", str(value))
    if not match:
        raise ConfigError(f"spatial_attn_enhance={value!r} is not None, 'first_frame' or 'prev_frames_N'")
    return "prev_frames", int(match.group(1))


def mismatch_cause(missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    """The likely reason a checkpoint's keys do not fit a CausalSTDiT configuration."""
    keys = missing + unexpected
    if any("attn_cf" in k for k in keys):
        return (
            "the checkpoint and the architecture disagree on prefix-enhanced attention (spatial_attn_enhance)"
        )
    if any("cross_attn" in k or "y_embedder" in k for k in keys):
        return "the checkpoint and the architecture disagree on text conditioning (caption_channels)"
    if any("attn_temp_pre_merge" in k for k in keys):
        return "the checkpoint and the architecture disagree on the mask channel (temp_extra_in_channels)"
    if any(k.startswith("blocks.") for k in keys):
        return "the checkpoint has a different depth than the chosen architecture"
    if wrong:
        return "the checkpoint has a different width or resolution than the chosen architecture"
    return "this is not a CausalSTDiT checkpoint"


PREFIX_TIMESTEPS = ("zero", "perturb")
MODEL_NAME = "CausalSTDiT"


def check_attention(opts: AttentionOptions, model: ModelConfig) -> None:
    """The attention options this family implements: TempCache at radius 0 over the --cache-frames ring
    (no AnnCA / AnnSA, no slot budget). One ConfigError naming the value and the fix."""
    if opts.kv_compress == "tempcache":
        if model.tpe_mode == "rope":
            raise ConfigError(
                "kv_compress='tempcache' compares the cached temporal keys, which this CausalSTDiT "
                "(tpe_mode='rope') stores before its window-relative RoPE; use a model with tpe_mode "
                "'cyclic' or 'fixed', or kv_compress='none'"
            )
        if opts.tempcache_radius != 0:
            raise ConfigError(
                f"tempcache_radius={opts.tempcache_radius}: the CausalSTDiT TempCache merges at the same "
                "spatial location only; use tempcache_radius=0"
            )
        if opts.tempcache_budget_frames is not None:
            raise ConfigError(
                f"--tempcache-budget {opts.tempcache_budget_frames} does not apply to CausalSTDiT: its "
                "TempCache masks merged slots inside the --cache-frames ring; drop --tempcache-budget "
                "(or lower --cache-frames)"
            )
    opts.check_supported(model=MODEL_NAME, has_text=model.has_text, implemented=("kv_compress",))


@dataclass(frozen=True)
class SamplingConfig:
    steps: int = 100
    sampler: str = "iddpm"
    ddim_eta: float = 0.0
    chunk: int = 8  # l: frames generated per AR step
    cache_frames: int = 25  # L_max: clean frames kept in the queue
    cfg_scale: float = 1.0
    prefix_perturb_t: int = 50  # noise level (of 1000) of what is written to the cache; 0 = off
    # the timestep the written frames are run at: "zero" (t = 0, the official models) or "perturb"
    # (t = prefix_perturb_t: models trained with noise-augmented context, train.prefix_noise_max > 0)
    prefix_timestep: str = "zero"
    # What the model was trained for (training reads them from the card): the official models are eps/linear.
    prediction: str = "eps"  # eps | v: what the first c output channels predict
    schedule: str = "linear"  # linear | linear_zsnr (zero terminal SNR) | cosine
    clip_x0: float = 0.0  # > 0: clamp the predicted x0 to ±clip_x0 before each step; 0 = off
    attention: AttentionOptions = DENSE  # TempCache (issue 15, `stdit.tempcache`); dense by default

    def validate(self, model: ModelConfig) -> None:
        """Raise ConfigError naming the bad value and the bound it breaks."""
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler {self.sampler!r} is not one of {SAMPLERS}")
        if self.sampler == "iddpm" and not 2 <= self.steps <= 1000:
            raise ConfigError(f"steps={self.steps}: the iddpm sampler needs 2..1000 steps")
        if self.sampler == "ddim" and not 1 <= self.steps <= 1000:
            raise ConfigError(f"steps={self.steps}: the ddim sampler needs 1..1000 steps")
        if self.chunk < 1:
            raise ConfigError(f"chunk={self.chunk} must be >= 1")
        if self.cache_frames < 1:
            raise ConfigError(f"cache_frames={self.cache_frames} must be >= 1")
        if model.tpe_mode != "fixed" and self.chunk >= model.max_tpe_len:
            raise ConfigError(
                f"chunk={self.chunk}: the model has {model.max_tpe_len} temporal positions for the cached "
                f"frames and the chunk together; use chunk <= {model.max_tpe_len - 1} "
                f"(and cache_frames <= {model.max_tpe_len} - chunk)"
            )
        if model.tpe_mode != "fixed" and self.cache_frames + self.chunk > model.max_tpe_len:
            raise ConfigError(
                f"cache_frames + chunk = {self.cache_frames} + {self.chunk} exceeds the model's "
                f"{model.max_tpe_len} temporal positions; "
                f"use cache_frames <= {model.max_tpe_len - self.chunk}"
            )
        if not 0 <= self.prefix_perturb_t < 1000:
            raise ConfigError(f"prefix_perturb_t={self.prefix_perturb_t} must be in 0..999")
        if self.prefix_timestep not in PREFIX_TIMESTEPS:
            raise ConfigError(f"prefix_timestep {self.prefix_timestep!r} is not one of {PREFIX_TIMESTEPS}")
        if self.cfg_scale != 1.0 and not model.has_text:
            raise ConfigError(f"cfg_scale={self.cfg_scale} needs a text-conditioned model; use cfg_scale=1")
        if self.ddim_eta < 0:
            raise ConfigError(f"ddim_eta={self.ddim_eta} must be >= 0")
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"prediction {self.prediction!r} is not one of {PREDICTIONS}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule {self.schedule!r} is not one of {SCHEDULES}")
        if self.prediction == "eps" and self.schedule == "linear_zsnr":
            raise ConfigError("schedule='linear_zsnr' needs prediction='v' (ε cannot give x0 where ᾱ = 0)")
        if self.clip_x0 < 0:
            raise ConfigError(f"clip_x0={self.clip_x0} must be >= 0 (0: off)")
        check_attention(self.attention, model)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["attention"] = self.attention.to_dict()  # only the knobs of the options in use
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplingConfig:
        check_keys(cls, d, "sampling")
        if "attention" in d:
            d = {**d, "attention": AttentionOptions.from_dict(d["attention"])}
        return cls(**d)

    def replace(self, **changes: Any) -> SamplingConfig:
        """Run-time overrides; an option of another family is one ConfigError naming it."""
        names = {f.name for f in dataclasses.fields(self)}
        if changes.get("attention", DENSE) is None:
            changes = {**changes, "attention": DENSE}
        for name in changes:
            if name not in names:
                flag = "--" + name.replace("_", "-").replace("position-mode", "positions")
                raise ConfigError(
                    f"{flag} applies to the causal Wan family only; this CausalSTDiT model keeps a queue "
                    "of --cache-frames clean frames; drop " + flag
                )
        return dataclasses.replace(self, **changes)

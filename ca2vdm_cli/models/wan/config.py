"""Architecture and attention settings of the causal Wan2.1 DiT, from the official kwargs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ca2vdm_cli.errors import ConfigError

POSITION_MODES = ("absolute", "relative")

# Official CausalWanModel kwargs we accept and the values we support where only one is implemented.
_FIXED = {"model_type": "t2v", "qk_norm": True, "cross_attn_norm": True}
_IGNORED = {"window_size"}  # non-causal Wan's local attention; (-1, -1) in every released config


@dataclass(frozen=True)
class WanConfig:
    """Shapes of the DiT plus its causal attention: blocks of `num_frame_per_block` frames, a window of
    `local_attn_size` frames (−1 = global) that includes the block, with `sink_size` pinned frames."""

    patch_size: tuple[int, int, int]
    in_dim: int
    out_dim: int
    dim: int
    ffn_dim: int
    freq_dim: int
    text_dim: int
    text_len: int
    num_heads: int
    num_layers: int
    eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_positions: int = 1024
    num_frame_per_block: int = 3
    local_attn_size: int = -1
    sink_size: int = 0
    position_mode: str = "absolute"

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ConfigError(
                f"dim {self.dim} is not divisible by num_heads {self.num_heads}; pick a divisor"
            )
        if self.head_dim % 2 or self.head_dim < 6:
            raise ConfigError(f"head_dim {self.head_dim} must be even and >= 6 for the 3-axis RoPE")
        if self.freq_dim % 2:
            raise ConfigError(f"freq_dim must be even, got {self.freq_dim}")
        if self.num_frame_per_block < 1:
            raise ConfigError(f"num_frame_per_block must be >= 1, got {self.num_frame_per_block}")
        if self.position_mode not in POSITION_MODES:
            raise ConfigError(f"position_mode must be one of {POSITION_MODES}, got {self.position_mode!r}")
        if self.sink_size < 0:
            raise ConfigError(f"sink_size must be >= 0, got {self.sink_size}")
        if self.local_attn_size != -1:
            need = self.sink_size + self.num_frame_per_block
            if self.local_attn_size < need:
                raise ConfigError(
                    f"local_attn_size {self.local_attn_size} is smaller than sink_size + num_frame_per_block "
                    f"= {need}; use local_attn_size >= {need} or -1 (global attention)"
                )
            if self.local_attn_size > self.rope_positions and self.position_mode == "relative":
                raise ConfigError(
                    f"local_attn_size {self.local_attn_size} exceeds the {self.rope_positions}-row RoPE table"
                )
        elif self.sink_size:
            raise ConfigError(
                f"sink_size {self.sink_size} needs a window; set local_attn_size or sink_size=0"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def windowed(self) -> bool:
        return self.local_attn_size != -1

    @property
    def has_text(self) -> bool:
        return True  # every causal Wan model is prompt-conditioned

    @property
    def in_channels(self) -> int:
        return self.in_dim

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WanConfig:
        """From a model card's `model` table: our field names (= the official kwargs), all required but
        the defaulted ones; unknown keys are refused."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown model keys {unknown}; valid keys: {sorted(names)}")
        try:
            return cls(**{k: tuple(v) if k == "patch_size" else v for k, v in d.items()})
        except TypeError as exc:
            raise ConfigError(f"model table of a causal Wan card: {exc}") from None

    @classmethod
    def from_official(cls, kwargs: dict[str, Any]) -> WanConfig:
        """From the official CausalWanModel constructor kwargs (plus `num_frame_per_block`); keys starting
        with `_` (config.json metadata) are skipped, unknown keys and unsupported variants are refused."""
        known = {f.name for f in fields(cls)}
        args: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key.startswith("_") or key in _IGNORED:
                continue
            if key in _FIXED:
                if value != _FIXED[key]:
                    raise ConfigError(
                        f"{key}={value!r} is not supported; the causal Wan family uses {_FIXED[key]!r}"
                    )
                continue
            if key not in known:
                raise ConfigError(
                    f"unknown CausalWanModel argument {key!r}; known: {sorted(known | set(_FIXED))}"
                )
            args[key] = tuple(value) if key == "patch_size" else value
        base = {f.name: getattr(cls.wan_1_3b(), f.name) for f in fields(cls)}
        return cls(**{**base, **args})

    @classmethod
    def wan_1_3b(cls) -> WanConfig:
        """Wan2.1-T2V-1.3B, chunk-wise (3 frames per block), global attention."""
        return cls(
            patch_size=(1, 2, 2), in_dim=16, out_dim=16, dim=1536, ffn_dim=8960, freq_dim=256,
            text_dim=4096, text_len=512, num_heads=12, num_layers=30,
        )  # fmt: skip

    @classmethod
    def tiny(cls, **overrides: Any) -> WanConfig:
        """A 2.3 M-parameter model with the same structure, for tests and benches."""
        base: dict[str, Any] = dict(
            patch_size=(1, 2, 2), in_dim=16, out_dim=16, dim=192, ffn_dim=512, freq_dim=64,
            text_dim=64, text_len=16, num_heads=3, num_layers=4,
        )  # fmt: skip
        return cls(**{**base, **overrides})

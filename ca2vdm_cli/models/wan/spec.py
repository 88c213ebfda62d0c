"""The causal Wan family as a model card sees it, in pure Python (no torch): its sampling settings
(`WanSampling`), the checks a card and a request need before anything loads, and the memory of a run.

Run-time attention settings live here, not in the architecture: a card (or `--window`, `--sink-frames`,
`--positions`) may run a model trained with global attention over 21 latent frames with a window and a
sink for longer videos (beyond training), as Self-Forcing's users do. The block size is the one thing a
run cannot change: it is what the model was trained with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ca2vdm_cli.errors import ConfigError, InputError
from ca2vdm_cli.models.attention_opts import DENSE, AttentionOptions
from ca2vdm_cli.models.wan.config import POSITION_MODES, WanConfig
from ca2vdm_cli.models.wan.flops import kv_cache_bytes, param_count, tempcache_nbytes, tokens_per_frame

CONFIG = WanConfig
ENGINES = ("cache", "recompute")
WHOLE_BLOCKS = True  # every AR step is one whole block of the trained size
PROMPT_SWITCHES = True  # a prompt timeline: the window is re-encoded under the new prompt (LongLive)

NUM_TRAIN_STEPS = 1000
# generic request fields that have no meaning here, and what to say instead
_NOT_HERE = {
    "sampler": "the causal Wan family samples with its few-step flow list (the card's timesteps)",
    "steps": "a distilled few-step model runs the step list it was trained with (the card's timesteps)",
    "prefix_perturb_t": "the causal Wan family writes clean blocks (no prefix perturbation)",
    "ddim_eta": "the causal Wan family has no DDIM sampler",
}


@dataclass(frozen=True)
class WanSampling:
    """How a causal Wan model samples and attends at run time.

    `timesteps`/`shift`/`warp` are the few-step list as data (`sampling.flow.FlowSchedule`); `chunk` is the
    block of latent frames (must be the trained one); `window` (latent frames, the block being denoised
    included; −1 = global attention) with `sink_frames` pinned frames; `max_frames` is the past a global
    cache holds; `position_mode` is how cached keys carry their RoPE time position."""

    timesteps: tuple[int, ...] = (1000, 750, 500, 250)
    shift: float = 5.0
    warp: bool = True
    chunk: int = 3
    window: int = -1
    sink_frames: int = 0
    max_frames: int = 18  # + the block being denoised = 21 latent frames = 81 video frames
    position_mode: str = "absolute"
    cfg_scale: float = 1.0  # distilled: no guidance
    attention: AttentionOptions = DENSE  # TempCache / AnnCA / AnnSA (issue 15); dense by default

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def sampler(self) -> str:
        return "flow"

    @property
    def prefix_perturb_t(self) -> int:
        return 0

    @property
    def cache_frames(self) -> int:
        """Latent frames the cache is sized for: the window, or the global past."""
        return self.window if self.window != -1 else self.max_frames

    def validate(self, model: WanConfig) -> None:
        """ConfigError naming the bad value, the bound it breaks and the fix."""
        if self.cfg_scale != 1.0:
            raise ConfigError(
                f"--cfg-scale {self.cfg_scale:g}: this causal Wan model is distilled without classifier-free "
                "guidance; drop --cfg-scale (or pass 1)"
            )
        if not self.timesteps or any(not 0 < t <= NUM_TRAIN_STEPS for t in self.timesteps):
            raise ConfigError(
                f"timesteps {list(self.timesteps)} must be a non-empty list in (0, {NUM_TRAIN_STEPS}]"
            )
        if self.shift <= 0:
            raise ConfigError(f"shift {self.shift} must be > 0; the released models use 5 or 8")
        n = model.num_frame_per_block
        if self.chunk != n:
            raise ConfigError(
                f"--chunk {self.chunk}: this model was trained with blocks of {n} latent frames; "
                f"drop --chunk (or pass {n})"
            )
        if self.position_mode not in POSITION_MODES:
            raise ConfigError(f"--positions {self.position_mode!r} is not one of {', '.join(POSITION_MODES)}")
        if self.sink_frames < 0:
            raise ConfigError(f"--sink-frames {self.sink_frames} must be >= 0")
        self.attention.check_supported(
            model="the causal Wan DiT", has_text=True, absolute_positions=self.position_mode == "absolute"
        )
        if self.window == -1:
            if self.sink_frames:
                raise ConfigError(
                    f"--sink-frames {self.sink_frames} needs a window: pass --window W "
                    f"(W >= {self.sink_frames + n}) or --sink-frames 0"
                )
            if self.max_frames < 1:
                raise ConfigError(f"--cache-frames {self.max_frames} must be >= 1")
            return
        need = self.sink_frames + n
        if self.window < need:
            raise ConfigError(
                f"--window {self.window} is smaller than --sink-frames {self.sink_frames} + the block of "
                f"{n} = {need} latent frames; use --window {need} or more"
            )
        if self.position_mode == "relative" and self.window > model.rope_positions:
            raise ConfigError(
                f"--window {self.window} exceeds the {model.rope_positions}-row RoPE table; "
                f"use --window {model.rope_positions} or less"
            )

    def model_config(self, model: WanConfig) -> WanConfig:
        """The architecture with this run's attention settings (what the cache is built for)."""
        return dataclasses.replace(
            model,
            local_attn_size=self.window,
            sink_size=self.sink_frames,
            position_mode=self.position_mode,
        )

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["timesteps"] = list(self.timesteps)
        d["attention"] = self.attention.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WanSampling:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown sampling keys {unknown}; valid keys: {sorted(names)}")
        d = dict(d)
        if "timesteps" in d:
            d["timesteps"] = tuple(int(t) for t in d["timesteps"])
        if "attention" in d:
            d["attention"] = AttentionOptions.from_dict(d["attention"])
        return cls(**d)

    def replace(self, **changes: Any) -> WanSampling:
        """Run-time overrides. `cache_frames` sets the window when there is one, else the global past; a
        generic option this family has no use for is one ConfigError saying why."""
        for name, why in _NOT_HERE.items():
            if name in changes:
                flag = "--" + name.replace("_", "-").replace("position-mode", "positions")
                raise ConfigError(f"{flag} does not apply: {why}; drop {flag}")
        changes = dict(changes)
        if "cache_frames" in changes:
            frames = changes.pop("cache_frames")
            window = changes.get("window", self.window)
            changes["window" if window != -1 else "max_frames"] = frames
        return dataclasses.replace(self, **changes)


SAMPLING = WanSampling


def model_rows(sampling: WanSampling, batch: int) -> int:
    """Rows the model runs for `batch` videos (no guidance: one each)."""
    return batch


def check_card(card: Any) -> None:
    """A card of this family: pixel size fits the patch, the text length matches, sampling is valid."""
    m: WanConfig = card.model
    _, ph, pw = m.patch_size
    down = card.vae_downsample
    if card.height % (down * ph) or card.width % (down * pw):
        raise ConfigError(
            f"card {card.name!r}: {card.height}x{card.width} pixels are not a multiple of the VAE factor "
            f"{down} x the {ph}x{pw} patch"
        )
    if card.text_max_length != m.text_len:
        raise ConfigError(
            f"card {card.name!r}: text max_length {card.text_max_length} != text_len {m.text_len}"
        )
    card.sampling.validate(m)


def check_frames(card: Any, sampling: WanSampling, given: int, latent_frames: int, engine: str) -> None:
    """InputError when the video does not fit the cache or the RoPE table; names the flag to change."""
    m: WanConfig = card.model
    n = sampling.chunk
    if given and not card.accepts_images:
        raise InputError(
            f"model {card.name!r} generates whole {n}-frame blocks from text and takes no --image; "
            "drop --image, or use a frame-wise image-to-video model (--model causal-forcing-i2v)"
        )
    if sampling.window == -1 and engine == "cache":
        past = latent_frames - n  # the last block is never written
        if past > sampling.max_frames:
            raise InputError(
                f"--frames asks for {latent_frames} latent frames, but global attention holds "
                f"{sampling.max_frames} past frames; pass --cache-frames {past}, or a window for long "
                f"videos (e.g. --window {min(12, past)} --sink-frames {min(3, max(0, past - n))}; "
                "beyond training for a global-attention model)"
            )
    if sampling.position_mode == "absolute" and latent_frames > m.rope_positions:
        raise InputError(
            f"--frames asks for {latent_frames} latent frames, past the {m.rope_positions}-row RoPE table "
            "with absolute positions; pass --positions relative for an unbounded rollout"
        )


def cache_bytes(
    model: WanConfig, sampling: WanSampling, rows: int, latent_hw: tuple[int, int], b: int
) -> int:
    """Bytes of the self-attention KV cache (the spec's formula) for `rows` videos."""
    n, w = sampling.chunk, sampling.window
    # allocated as `WanKVCache` does: the past (one spare slot when it is all sinks) + the block's slots
    frames = sampling.max_frames + n if w == -1 else w + (1 if w - n == sampling.sink_frames else 0)
    tokens = tokens_per_frame(model, latent_hw)
    opts = sampling.attention
    if opts.kv_compress == "tempcache":  # its pool: the budget (or the dense past) + the block's scratch
        pool = opts.tempcache_budget_frames or frames - n
        return tempcache_nbytes(
            num_layers=model.num_layers, batch_size=rows, num_heads=model.num_heads,
            head_dim=model.head_dim, tokens_per_frame=tokens, frames=pool, dtype_bytes=b,
        ) + rows * kv_cache_bytes(model, n, tokens, b)  # fmt: skip
    return rows * kv_cache_bytes(model, frames, tokens, b)


def memory_parts(
    model: WanConfig, sampling: WanSampling, rows: int, latent_hw: tuple[int, int], b: int
) -> dict[str, int]:
    """Transformer weights, KV cache and a rough activation peak (one block's forward) in bytes."""
    tokens = rows * sampling.chunk * tokens_per_frame(model, latent_hw)
    act = tokens * (model.ffn_dim + 6 * model.dim) * b  # FFN hidden + q/k/v/residual streams
    act += rows * model.out_dim * sampling.chunk * latent_hw[0] * latent_hw[1] * 4  # fp32 prediction
    return {
        "transformer": param_count(model) * b,
        "kv_cache": cache_bytes(model, sampling, rows, latent_hw, b),
        "activations": act,
    }


CACHE_KNOB = "use a smaller --window (or --cache-frames with global attention)"


def cache_summary(sampling: WanSampling, rows: int) -> str:
    """How the cache is laid out, for the plan line."""
    n = sampling.chunk
    if sampling.window == -1:
        where = f"global attention: {sampling.max_frames} past + the {n}-frame block"
    else:
        sink = f", {sampling.sink_frames} sink" if sampling.sink_frames else ""
        where = f"window {sampling.window} latent frames incl. the {n}-frame block{sink}"
    opts = sampling.attention
    extra = "" if opts.dense else f", attention {opts.to_dict()}"
    return f"{where}, {sampling.position_mode} positions{extra}, x {rows} rows"


def caption_shape(model: WanConfig) -> tuple[int, int]:
    """(tokens, channels) of the encoded prompt the model takes."""
    return (model.text_len, model.text_dim)

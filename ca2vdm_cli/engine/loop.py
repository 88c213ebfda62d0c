"""The autoregressive loop (spec §4): condition frames → cache; per AR step, denoise a chunk of l frames
with the cache read-only, yield it, write it (perturbed to `prefix_perturb_t`) to the cache.

Engines share the loop and differ only in how a denoising step sees the clean frames:
  cache           Ca2-VDM: K|V of clean frames computed once, shared by every denoising step
  recompute       no cache; the last ≤ L_max clean frames are re-run at every step (OS-Ext baseline)
  recompute-full  no cache and no cap: the condition grows with the video (the quadratic case)

Noise comes from `noise.seeded_noise`, keyed by (seed, purpose, chunk index); the next chunk's noise is
drawn on the host while the device is still busy with the current chunk. The caption is prepared once per
generation (`CausalSTDiT.prepare_text`) and the cache engine plans each AR step once (`plan_step`), so
a denoising step is a fixed, sync-free computation that `accel` can compile or capture in a CUDA graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from ca2vdm_cli.models.stdit.block import CachedStep, PreparedText
from ca2vdm_cli.models.stdit.config import SamplingConfig
from ca2vdm_cli.sampling.ddpm import Diffusion, guide
from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.models.stdit.model import CausalSTDiT
from ca2vdm_cli.engine.noise import seeded_noise

ENGINES = ("cache", "recompute", "recompute-full")

StepCallback = Callable[[int, int, int], None]  # (chunk index, finished step, total steps)


def chunk_lengths(num_frames: int, chunk: int) -> list[int]:
    """Split num_frames new frames into AR chunks of `chunk` (the last one may be shorter)."""
    full, rest = divmod(num_frames, chunk)
    return [chunk] * full + ([rest] if rest else [])


# ----------------------------------------------------------------------------- engines
StepFn = Callable[[CachedStep, Tensor, Tensor, PreparedText | None], Tensor | None]
ForwardFn = Callable[..., Tensor]


class CacheEngine:
    """Clean frames enter the KV cache once; denoising steps only read it. The engine owns its cache: the
    plan of an AR step is made at its first denoising step and dropped when frames are written. `step`
    replaces `model.run_step` (a compiled or CUDA-graph version from `accel`)."""

    def __init__(
        self,
        model: CausalSTDiT,
        rows: int,
        cache_frames: int,
        chunk_frames: int = 0,
        step: StepFn | None = None,
    ) -> None:
        self.model = model
        self.cache = model.new_cache(rows, cache_frames, chunk_frames)
        self.step = step  # None: model.denoise with the AR step's plan
        self._plan: CachedStep | None = None

    def reset(self) -> None:
        """Start a new video with the same buffers (and the same compiled or captured steps)."""
        self.cache.reset()
        self._plan = None

    def add_clean(self, z: Tensor, y: Tensor | PreparedText | None, y_mask: Tensor | None) -> None:
        self.model.write_cache(self.cache, z, y, y_mask)
        self._plan = None

    def predict(self, x: Tensor, t: Tensor, y: Tensor | PreparedText | None, y_mask: Tensor | None) -> Tensor:
        if self._plan is None or self._plan.n_new != x.shape[2]:
            self._plan = self.model.plan_step(self.cache, x.shape[2], write=False)
        if self.step is None:
            return self.model.denoise(self.cache, x, t, y, y_mask, plan=self._plan)
        text = self.model.prepare_text(y, y_mask, x.shape[0])  # a no-op for a prepared caption
        out = self.step(self._plan, x, t, text)
        assert out is not None
        return out


class RecomputeEngine:
    """No cache: [clean condition frames ; noisy chunk] through the full causal forward at every step.
    `forward` replaces `model.forward` (e.g. a compiled version)."""

    def __init__(
        self, model: CausalSTDiT, max_condition: int | None, forward: ForwardFn | None = None
    ) -> None:
        self.model, self.max_condition = model, max_condition
        self.forward = forward or model
        self.condition: Tensor | None = None  # (rows, c, P, H, W)
        self.first_index = 0  # absolute index of the first condition frame

    def reset(self) -> None:
        self.condition, self.first_index = None, 0

    def add_clean(self, z: Tensor, y: Tensor | PreparedText | None, y_mask: Tensor | None) -> None:
        cond = z if self.condition is None else torch.cat([self.condition, z], dim=2)
        if self.max_condition is not None and cond.shape[2] > self.max_condition:
            self.first_index += cond.shape[2] - self.max_condition
            cond = cond[:, :, -self.max_condition :]
        self.condition = cond

    def predict(self, x: Tensor, t: Tensor, y: Tensor | PreparedText | None, y_mask: Tensor | None) -> Tensor:
        if self.condition is None:
            return self.forward(x, t, y, y_mask)
        P, n = self.condition.shape[2], x.shape[2]
        full = torch.cat([self.condition, x], dim=2)  # (rows, c, P + n, H, W)
        frame_t = torch.cat([torch.zeros(x.shape[0], P, device=x.device), t[:, None].expand(-1, n)], dim=1)
        start = self.first_index if self.model.config.tpe_mode != "fixed" else 0
        return self.forward(full, frame_t, y, y_mask, tpe_start=start, num_prefix=P)[:, :, P:]


def make_engine(
    name: str,
    model: CausalSTDiT,
    rows: int,
    cache_frames: int,
    *,
    chunk_frames: int = 0,
    step: StepFn | None = None,
    forward: ForwardFn | None = None,
) -> CacheEngine | RecomputeEngine:
    """An engine by name. `chunk_frames` reserves scratch slots for chunks of that length next to the cache;
    `step` / `forward` replace the model's cached step / full forward (see `accel.accelerate`)."""
    if name == "cache":
        return CacheEngine(model, rows, cache_frames, chunk_frames, step)
    if name == "recompute":
        return RecomputeEngine(model, cache_frames, forward)
    if name == "recompute-full":
        return RecomputeEngine(model, None, forward)
    raise ConfigError(f"engine {name!r} is not one of {ENGINES}")


# ----------------------------------------------------------------------------- the loop
@torch.inference_mode()
def sample_video(
    model: CausalSTDiT,
    config: SamplingConfig,
    *,
    num_frames: int,
    seeds: Sequence[int],
    prefix: Tensor | None = None,
    y: Tensor | None = None,
    y_mask: Tensor | None = None,
    engine: str | CacheEngine | RecomputeEngine = "cache",
    replay: Sequence[Tensor] = (),
    on_step: StepCallback | None = None,
) -> Iterator[Tensor]:
    """Generate `num_frames` new latent frames after `prefix` (B, c, P, H, W), yielding each chunk
    (B, c, l, H, W) in float32 as soon as it is denoised.

    `y` (B, N, C_text) / `y_mask` (B, N) is the caption (None: unconditional / null caption). `replay`
    holds chunks generated earlier (a resumed render): they are written to the cache exactly as they were
    the first time, not yielded. One seed per sample. `engine` is a name from ENGINES or an engine made
    by `make_engine` (with 2B rows under CFG), which lets a caller inspect its cache."""
    cfg = model.config
    config.validate(cfg)
    B = len(seeds)
    if prefix is not None and prefix.shape[0] != B:
        raise ConfigError(f"prefix has batch {prefix.shape[0]} but {B} seeds were given")
    if num_frames < 1:
        raise ConfigError(f"num_frames={num_frames}: at least one new frame must be generated")
    device = next(model.parameters()).device
    num_prefix = 0 if prefix is None else prefix.shape[2]
    if cfg.tpe_mode == "fixed" and num_prefix + num_frames > cfg.max_tpe_len and engine == "cache":
        raise ConfigError(
            f"this model has fixed temporal positions and can generate at most {cfg.max_tpe_len} frames "
            f"with the cache; {num_prefix + num_frames} were asked for"
        )
    diffusion = Diffusion(config.steps)
    use_cfg = config.cfg_scale != 1.0
    rows = 2 * B if use_cfg else B
    y_rows, mask_rows = _text_rows(model, y, y_mask, B, use_cfg, device)
    text = model.prepare_text(y_rows, mask_rows, rows)  # once per generation; passed as y, its mask inside
    if isinstance(engine, str):
        runner = make_engine(engine, model, rows, config.cache_frames, chunk_frames=config.chunk)
    else:
        runner = engine
    latent_shape = (cfg.in_channels, *cfg.latent_size)
    stochastic = config.sampler == "iddpm" or config.ddim_eta > 0

    def to_rows(z: Tensor) -> Tensor:
        return torch.cat([z, z]) if use_cfg else z

    def add_clean(z: Tensor, index: int) -> None:
        if config.prefix_perturb_t > 0:  # perturb what the cache sees, never the output (spec §4.4)
            noise = _to_device(seeded_noise(seeds, "perturb", index, z.shape[1:]), device)
            # q_sample with host-side coefficients: indexing a device table by a tensor would sync
            ac = float(diffusion.base_alphas_cumprod[config.prefix_perturb_t])
            z = math.sqrt(ac) * z + math.sqrt(1 - ac) * noise
        runner.add_clean(to_rows(z), text, None)

    if prefix is not None:
        add_clean(prefix.to(device, torch.float32), 0)
    lengths = chunk_lengths(num_frames, config.chunk)
    replay = list(replay)
    if len(replay) > len(lengths) or any(r.shape[2] != n for r, n in zip(replay, lengths, strict=False)):
        raise ConfigError(
            "replayed chunks do not match this run's chunk lengths (different --chunk or --frames?)"
        )

    # respaced step i -> original timestep, on the device once per generation (a list -> device copy syncs)
    timesteps = _to_device(torch.tensor(diffusion.timestep_map, dtype=torch.float32), device)  # (N,)

    def chunk_noise(k: int) -> tuple[Tensor, Tensor | None]:
        return _chunk_noise(
            seeds, k, (latent_shape[0], lengths[k], *latent_shape[1:]), diffusion, stochastic, device
        )

    pending: tuple[Tensor, Tensor | None] | None = None  # the next chunk's noise, drawn ahead
    for k in range(len(lengths)):
        if k < len(replay):
            z = replay[k].to(device, torch.float32)
        else:
            noise = pending if pending is not None else chunk_noise(k)
            z = _denoise_chunk(runner, diffusion, config, k, noise, timesteps, to_rows, text, on_step)
            # drawn on the host while the device still works on chunk k (asynchronous on CUDA)
            pending = chunk_noise(k + 1) if k + 1 < len(lengths) else None
            yield z
        if k + 1 < len(lengths):
            add_clean(z, k + 1)


def _chunk_noise(
    seeds: Sequence[int],
    k: int,
    shape: tuple[int, ...],
    diffusion: Diffusion,
    stochastic: bool,
    device: torch.device,
) -> tuple[Tensor, Tensor | None]:
    """Initial noise (B, c, l, H, W) and per-step noise (B, N, c, l, H, W) of chunk k, on `device`."""
    x = seeded_noise(seeds, "init", k, shape)
    steps = seeded_noise(seeds, "step", k, (diffusion.num_steps, *shape)) if stochastic else None
    return _to_device(x, device), None if steps is None else _to_device(steps, device)


def _to_device(x: Tensor, device: torch.device) -> Tensor:
    """Host tensor -> device; from pinned memory on CUDA, so the copy does not wait for queued work."""
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def _text_rows(
    model: CausalSTDiT, y: Tensor | None, y_mask: Tensor | None, B: int, use_cfg: bool, device: torch.device
) -> tuple[Tensor | None, Tensor | None]:
    """Caption rows for the model batch: [null; cond] with CFG (the null caption keeps the cond mask)."""
    if not model.config.has_text:
        if y is not None:
            raise ConfigError("this model has no text conditioning; do not pass a caption")
        return None, None
    if y is None:
        y = model.null_caption(B)
    y = y.to(device)
    mask = None if y_mask is None else y_mask.to(device)
    if not use_cfg:
        return y, mask
    null = model.null_caption(B).to(device, y.dtype)
    return torch.cat([null, y]), None if mask is None else torch.cat([mask, mask])


def _denoise_chunk(
    runner: CacheEngine | RecomputeEngine,
    diffusion: Diffusion,
    config: SamplingConfig,
    k: int,
    noise: tuple[Tensor, Tensor | None],
    timesteps: Tensor,
    to_rows: Callable[[Tensor], Tensor],
    text: PreparedText | None,
    on_step: StepCallback | None,
) -> Tensor:
    """Run every denoising step of chunk k from its noise; returns the clean chunk (B, c, l, H, W) float32."""
    N = diffusion.num_steps
    x, step_noise = noise  # (B, c, l, H, W), (B, N, c, l, H, W) or None
    rows = x.shape[0] * (2 if config.cfg_scale != 1.0 else 1)
    for n, i in enumerate(reversed(range(N))):
        out = runner.predict(to_rows(x), timesteps[i].expand(rows), text, None)  # (rows, 2c, l, H, W)
        if config.cfg_scale != 1.0:
            out = guide(out, config.cfg_scale, x.shape[1])
        noise_i = None if step_noise is None else step_noise[:, i]
        if config.sampler == "iddpm":
            x = diffusion.p_sample(out, x, i, noise_i)
        else:
            x = diffusion.ddim_sample(out, x, i, noise_i, config.ddim_eta)
        if on_step is not None:
            on_step(k, n + 1, N)
    return x

"""The optimisation loop shared by every training stage: DDP under torchrun, AdamW with warm-up and cosine
decay, gradient clipping, an fp32 EMA, bf16/fp16 autocast on CUDA, resumable checkpoints.

Every random draw of step s on rank r comes from a generator seeded with (seed, stage, r, s), so a run
resumed from a checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.train.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from ca2vdm_cli.train.recipe import TrainSettings

logger = logging.getLogger(__name__)

# loss_fn(module, step, generator, device) -> {"loss": scalar to minimise, other scalars to log}
LossFn = Callable[[nn.Module, int, torch.Generator, torch.device], dict[str, Tensor]]
# on_log(stage, step, total steps, metrics averaged since the last log line; {} between log lines)
LogFn = Callable[[str, int, int, dict[str, float]], None]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu")
        dev = torch.device("cuda", local if world > 1 else torch.device(device).index or 0)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def step_seed(seed: int, stage: str, rank: int, step: int) -> int:
    digest = hashlib.sha256(f"ca2vdm-train/{seed}/{stage}/{rank}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def step_generator(seed: int, stage: str, rank: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, stage, rank, step))


class Trainer:
    """Owns the module under training, its optimizer, EMA and checkpoints for one stage."""

    def __init__(
        self,
        module: nn.Module,
        loss_fn: LossFn,
        settings: TrainSettings,
        info: DistInfo,
        checkpoint_dir: Path,
        *,
        stage: str,
        seed: int,
    ) -> None:
        self.module = module.to(info.device)
        self.loss_fn, self.settings, self.info = loss_fn, settings, info
        self.checkpoint_dir, self.stage, self.seed = checkpoint_dir, stage, seed
        self.params = {n: p for n, p in self.module.named_parameters() if p.requires_grad}
        if not self.params:
            raise ConfigError(f"stage {stage}: nothing to train (every parameter is frozen)")
        self.wrapped: nn.Module = self.module
        if info.world_size > 1:
            ids = [info.device.index] if info.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()),
            lr=settings.lr,
            betas=settings.betas,
            weight_decay=settings.weight_decay,
        )
        self.ema = {n: p.detach().float().clone() for n, p in self.params.items()}
        self.step = 0
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    def _amp_dtype(self) -> torch.dtype | None:
        mode = self.settings.mixed_precision
        if self.info.device.type != "cuda":
            if mode in ("bf16", "fp16"):
                logger.warning(
                    "mixed precision %s is for CUDA; training in fp32 on %s", mode, self.info.device
                )
            return None
        return {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16, "no": None}[mode]

    # ------------------------------------------------------------------ schedule and EMA
    def lr_at(self, step: int) -> float:
        s = self.settings
        if step < s.warmup_steps:
            return s.lr * (step + 1) / s.warmup_steps
        progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * cosine)

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.settings.ema_decay, (1 + self.step) / (10 + self.step))  # warm-up for short runs
        for name, p in self.params.items():
            self.ema[name].lerp_(p.detach().float(), 1 - decay)

    def ema_state_dict(self) -> dict[str, Tensor]:
        """The module's state dict with the EMA values in place of the trained parameters."""
        state = dict(self.module.state_dict())
        for name, value in self.ema.items():
            state[name] = value.to(state[name].dtype)
        return state

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        gen = step_generator(self.seed, self.stage, self.info.rank, self.step)
        # modules' own randomness (e.g. dropout) uses the global RNG: key it to the step too
        torch.manual_seed(step_seed(self.seed, self.stage + "/global", self.info.rank, self.step))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        autocast = (
            torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        )
        self.wrapped.train()
        with autocast:
            out = self.loss_fn(self.wrapped, self.step, gen, self.info.device)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"stage {self.stage}: loss is {loss.item()} at step {self.step}")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.settings.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self._update_ema()
        metrics = {k: float(v.detach()) for k, v in out.items()}
        metrics["grad_norm"] = float(grad_norm)
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path | None:
        """Rank 0 writes step-XXXXXXX.safetensors; every rank waits for it."""
        path = checkpoint_path(self.checkpoint_dir, self.step)
        if self.info.is_main:
            save_checkpoint(
                path,
                step=self.step,
                module_state=self.module.state_dict(),
                ema_state=self.ema,
                optimizer_state=self.optimizer.state_dict(),
                extra={"stage": self.stage, "world_size": self.info.world_size},
            )
            prune_checkpoints(self.checkpoint_dir, self.settings.keep_checkpoints)
            logger.info("%s: saved %s", self.stage, path)
        barrier(self.info)
        return path if self.info.is_main else None

    def resume(self, path: Path | None = None) -> bool:
        """Load `path`, or the newest checkpoint of this stage; False when there is none."""
        if path is None:
            found = list_checkpoints(self.checkpoint_dir)
            if not found:
                return False
            path = found[-1][1]
        ckpt = load_checkpoint(path)
        self.module.load_state_dict(ckpt["module"], strict=True)
        missing = sorted(set(self.ema) - set(ckpt["ema"]))
        if missing:
            raise ConfigError(f"checkpoint {path} has no EMA for {missing[:5]}; it belongs to another run")
        self.ema = {n: ckpt["ema"][n].to(self.info.device, torch.float32) for n in self.ema}
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = ckpt["step"]
        logger.info("%s: resumed from %s at step %d", self.stage, path, self.step)
        return True

    # ------------------------------------------------------------------ the loop
    def fit(self, on_log: LogFn | None = None) -> None:
        s = self.settings
        sums: dict[str, float] = {}
        seen: dict[str, int] = {}  # a metric is averaged over the steps that reported it
        count, started = 0, time.perf_counter()
        while self.step < s.steps:
            metrics = self.train_step()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
                seen[k] = seen.get(k, 0) + 1
            count += 1
            if self.step % s.log_every == 0 or self.step == s.steps:
                avg = {k: v / seen[k] for k, v in sums.items()}
                avg["sec_per_step"] = (time.perf_counter() - started) / count
                if self.info.is_main:
                    logger.info(
                        "%s step %d/%d %s",
                        self.stage,
                        self.step,
                        s.steps,
                        " ".join(f"{k}={v:.4g}" for k, v in avg.items()),
                    )
                    if on_log is not None:
                        on_log(self.stage, self.step, s.steps, avg)
                sums, seen, count, started = {}, {}, 0, time.perf_counter()
            elif self.info.is_main and on_log is not None:
                on_log(self.stage, self.step, s.steps, {})
            if self.step % s.checkpoint_every == 0 or self.step == s.steps:
                self.save()

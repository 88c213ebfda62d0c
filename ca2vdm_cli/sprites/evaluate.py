"""Scores for sprites videos (the `ca2vdm eval` metrics), computed from pixels alone.

Every pixel within `COLOUR_TOLERANCE` (RGB distance) of one of the 8 sprite colours counts for it; a colour
is present in a frame with at least `MIN_PIXELS` such pixels (a 10 px triangle covers 55). Per video:

* presence   fraction of (frame, prompted sprite) pairs where the sprite's colour is present;
* absence    fraction of frames where no unprompted colour is present;
* direction  the prompted direction matches the sign (per axis, ±`DIRECTION_MIN_PX`) of the colour
             centroid's displacement from the first frame to frame `HEADROOM` (no bounce happens there);
* motion     fraction of (consecutive frame pair, sprite) where the moving axes of the centroid (|step| ≥
             `MOTION_MIN_PX`) are those of the prompted direction. Reflection flips a velocity's sign but
             never which axes move, so this is the direction score that stays defined after bounces;
* change     mean absolute frame-to-frame pixel change at chunk boundaries (the first frame of a new AR
             chunk) and inside chunks; their ratio shows seams between chunks.

`window` scores use the first and the last `window` frames, to measure long-horizon drift.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ca2vdm_cli.sprites.world import COLOURS, DIRECTIONS, HEADROOM, parse_prompt

COLOUR_TOLERANCE = 64.0  # half the smallest distance between two sprite colours (red–orange: 128)
MIN_PIXELS = 20
DIRECTION_MIN_PX = 3.0
MOTION_MIN_PX = 0.5
_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], dtype=np.float32)  # (8, 3)


def colour_masks(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> bool (T, 8, H, W): pixels attributed to each sprite colour."""
    px = frames.astype(np.float32)
    d2 = ((px[:, :, :, None, :] - _PALETTE) ** 2).sum(-1)  # (T, H, W, 8) squared RGB distances
    nearest = d2.argmin(-1)
    ok = d2.min(-1) < COLOUR_TOLERANCE**2
    return (nearest[:, None] == np.arange(len(_NAMES))[None, :, None, None]) & ok[:, None]


@dataclass
class VideoScores:
    """Raw counts for one video; `aggregate` turns a list of them into rates."""

    frames: int
    present: np.ndarray  # (T, n_prompted) bool
    clean: np.ndarray  # (T,) bool: no unprompted colour
    direction_ok: list[bool]  # per prompted sprite
    axes_ok: np.ndarray  # (T-1, n_prompted) bool; False where the sprite is missing in either frame
    change: np.ndarray  # (T-1,) mean |frame[f+1] - frame[f]|
    boundary: np.ndarray  # (T-1,) bool: frame f+1 starts an AR chunk
    extra: dict[str, float] = field(default_factory=dict)


def score_video(frames: np.ndarray, prompt: str, chunk_starts: set[int]) -> VideoScores:
    """Score uint8 frames (T, H, W, 3) against `prompt`; `chunk_starts` are the frame indices that begin
    a newly generated AR chunk (for the boundary/inside change ratio)."""
    sprites = parse_prompt(prompt)
    masks = colour_masks(frames)  # (T, 8, H, W)
    counts = masks.sum(axis=(2, 3))  # (T, 8)
    wanted = [_NAMES.index(c) for c, _, _ in sprites]
    present = counts[:, wanted] >= MIN_PIXELS  # (T, n)
    others = [i for i in range(len(_NAMES)) if i not in wanted]
    clean = ~(counts[:, others] >= MIN_PIXELS).any(axis=1)
    H, W = frames.shape[1:3]
    ys, xs = np.mgrid[0:H, 0:W]
    T = frames.shape[0]
    direction_ok, axes_ok = [], np.zeros((T - 1, len(sprites)), dtype=bool)
    for j, (colour, _, direction) in enumerate(sprites):
        m = masks[:, _NAMES.index(colour)]  # (T, H, W)
        n = m.sum(axis=(1, 2)).clip(min=1)
        centre = np.stack([(m * xs).sum(axis=(1, 2)) / n, (m * ys).sum(axis=(1, 2)) / n], axis=1)  # (T, 2)
        want = np.array(DIRECTIONS[direction])
        k = min(HEADROOM, T - 1)
        if present[0, j] and present[k, j]:
            moved = centre[k] - centre[0]
            sign = np.where(moved > DIRECTION_MIN_PX, 1, np.where(moved < -DIRECTION_MIN_PX, -1, 0))
            direction_ok.append(bool((sign == want).all()))
        else:
            direction_ok.append(False)
        step = np.abs(np.diff(centre, axis=0)) >= MOTION_MIN_PX  # (T-1, 2)
        both = present[1:, j] & present[:-1, j]
        axes_ok[:, j] = both & (step == (want != 0)).all(axis=1)
    change = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))  # (T-1,)
    boundary = np.array([f + 1 in chunk_starts for f in range(T - 1)], dtype=bool)
    return VideoScores(T, present, clean, direction_ok, axes_ok, change, boundary)


def chunk_starts(num_frames: int, num_prefix: int, chunk: int) -> set[int]:
    """Indices of the first frame of every generated chunk after `num_prefix` given frames."""
    return set(range(num_prefix, num_frames, chunk))


def _rate(values: list[np.ndarray]) -> float:
    flat = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in values]) if values else []
    return float(np.mean(flat)) if len(flat) else float("nan")


def aggregate(videos: list[VideoScores], window: int = 40) -> dict[str, float]:
    """Rates (0–1) over all videos; `*_first`/`*_last` use the first/last `window` frames."""
    out = {
        "videos": float(len(videos)),
        "presence": _rate([v.present for v in videos]),
        "presence_first": _rate([v.present[:window] for v in videos]),
        "presence_last": _rate([v.present[-window:] for v in videos]),
        "absence": _rate([v.clean for v in videos]),
        "absence_first": _rate([v.clean[:window] for v in videos]),
        "absence_last": _rate([v.clean[-window:] for v in videos]),
        "direction": _rate([np.array([all(v.direction_ok)]) for v in videos]),
        "direction_sprites": _rate([np.array(v.direction_ok) for v in videos]),
        "motion_first": _rate([v.axes_ok[: window - 1] for v in videos]),
        "motion_last": _rate([v.axes_ok[-(window - 1) :] for v in videos]),
    }
    at = np.concatenate([v.change[v.boundary] for v in videos]) if videos else np.array([])
    inside = np.concatenate([v.change[~v.boundary] for v in videos]) if videos else np.array([])
    out["change_boundary"] = float(at.mean()) if at.size else float("nan")
    out["change_inside"] = float(inside.mean()) if inside.size else float("nan")
    defined = inside.size and out["change_inside"] > 0
    out["boundary_ratio"] = out["change_boundary"] / out["change_inside"] if defined else float("nan")
    return out


# ----------------------------------------------------------------------------- generation for the eval
def generate_batch(
    components: Any,
    prompts: list[str],
    seeds: list[int],
    num_frames: int,
    sampling: Any,
    first_frames: np.ndarray | None = None,
) -> np.ndarray:
    """Videos of `num_frames` frames (the given first frame included) for a batch of prompts, made by the
    pipeline `ca2vdm generate` uses: each first frame goes through a PNG file, as `--image first.png`
    does. first_frames: uint8 (B, H, W, 3) or None (text-to-video). Returns uint8 (B, T, H, W, 3)."""
    from PIL import Image

    from ca2vdm_cli.engine.pipeline import Pipeline
    from ca2vdm_cli.engine.request import SAMPLING_FIELDS, GenerateRequest

    pipeline = components if isinstance(components, Pipeline) else Pipeline(components)
    overrides = {name: getattr(sampling, name) for name in SAMPLING_FIELDS if hasattr(sampling, name)}
    with tempfile.TemporaryDirectory(prefix="ca2vdm-eval-") as tmp:
        images: list[tuple[Path, ...]] = [() for _ in prompts]
        if first_frames is not None:
            images = []
            for b, frame in enumerate(first_frames):
                path = Path(tmp) / f"first-{b}.png"
                Image.fromarray(frame).save(path)
                images.append((path,))
        requests = [
            GenerateRequest(prompt=p, images=i, frames=num_frames, seed=s, decode_batch=64, **overrides)
            for p, i, s in zip(prompts, images, seeds, strict=True)
        ]
        chunks = [c.frames for c in pipeline.generate_batch(requests)]
    return np.concatenate(chunks, axis=1)  # (B, T, H, W, 3)


def evaluate_model(
    components: Any,
    *,
    num_prompts: int,
    num_frames: int,
    mode: str,
    cache_frames: int | None = None,
    sampling: Any = None,
    batch: int = 8,
    seed_base: int = 10**7,
    window: int = 40,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Generate and score `num_prompts` held-out sprites scenes (seeds seed_base, seed_base+1, …).

    mode "image": the scene's first frame is given (as `--image first.png`); "text": text-to-video.
    `sampling` replaces the card's sampling settings; `cache_frames` its queue size (1 = no long
    context). Returns `aggregate` rates."""
    from ca2vdm_cli.engine.pipeline import Pipeline
    from ca2vdm_cli.sprites import world

    pipeline = components if isinstance(components, Pipeline) else Pipeline(components)
    sampling = sampling if sampling is not None else pipeline.card.sampling
    if cache_frames is not None:
        sampling = sampling.replace(cache_frames=cache_frames)
    scores: list[VideoScores] = []
    for first in range(0, num_prompts, batch):
        seeds = list(range(seed_base + first, seed_base + min(num_prompts, first + batch)))
        scenes = [world.sample_scene(s) for s in seeds]
        prompts = [s.prompt for s in scenes]
        given = np.stack([world.render(s, 1)[0] for s in scenes]) if mode == "image" else None
        videos = generate_batch(pipeline, prompts, seeds, num_frames, sampling, given)
        starts = chunk_starts(num_frames, 1 if mode == "image" else 0, sampling.chunk)
        scores += [score_video(v, p, starts) for v, p in zip(videos, prompts, strict=True)]
        if on_batch is not None:
            on_batch(len(scores), num_prompts)
    return aggregate(scores, window)


def evaluate_world(
    num_prompts: int, num_frames: int, chunk: int, seed_base: int = 10**7, window: int = 40
) -> dict[str, float]:
    """The same scores on the procedural videos themselves: the ceiling the metrics allow."""
    from ca2vdm_cli.sprites import world

    scores = []
    for seed in range(seed_base, seed_base + num_prompts):
        scene = world.sample_scene(seed)
        video = world.render(scene, num_frames)
        scores.append(score_video(video, scene.prompt, chunk_starts(num_frames, 1, chunk)))
    return aggregate(scores, window)

"""Batch job lists: parse a prompt file / JSONL / stdin into items, name their outputs deterministically
(refusing a second item with the same output), and shard them across ranks. Pure Python (no torch). Each
line is either a plain prompt or (starting with `{`) a JSON object (`prompt`, optional `image`, `frames`,
`seed`, `out`, `steps`, `cfg_scale`, `sampler`, `chunk`, `cache_frames`, `window`, `sink_frames`,
`positions`, `prefix_perturb_t`, `fps`); blank lines and `#` comments are skipped. A line that cannot be
used becomes an item carrying its error, so the batch reports it and goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# JSON keys an item may set, with the type each must have.
ITEM_KEYS: dict[str, type | tuple[type, ...]] = {
    "prompt": str,
    "image": str,
    "frames": int,
    "seed": int,
    "out": str,
    "steps": int,
    "cfg_scale": (int, float),
    "sampler": str,
    "chunk": int,
    "cache_frames": int,
    "window": int,
    "sink_frames": int,
    "positions": str,
    "prefix_perturb_t": int,
    "fps": int,
    "prompts": list,  # a prompt timeline: prompts[0] first, then one per `at` frame
    "at": list,
}


@dataclass
class JobItem:
    """One render. `line` is the 1-based source line; `error` is set when the line itself is bad."""

    index: int
    line: int
    prompt: str = ""
    image: str | None = None
    seed: int = 0
    out: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # per-item values for the command's flags
    error: str | None = None


def parse_jobs(lines: Iterable[str], *, default_seed: int = 0, base_dir: Path | None = None) -> list[JobItem]:
    """Parse job lines. Relative `image`/`out` paths in JSON lines are taken relative to `base_dir`
    (the job file's directory; None: the current directory)."""
    items: list[JobItem] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        item = JobItem(index=len(items), line=number, seed=default_seed)
        if text.startswith(("{", "[")):  # JSON (a list is reported as an error)
            _fill_from_json(item, text, base_dir)
        else:
            item.prompt = text
        items.append(item)
    return items


def _fill_from_json(item: JobItem, text: str, base_dir: Path | None) -> None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        item.error = f"line {item.line}: invalid JSON ({exc.msg} at column {exc.colno})"
        return
    if not isinstance(data, dict):
        item.error = f"line {item.line}: expected a JSON object, got {type(data).__name__}"
        return
    unknown = sorted(set(data) - set(ITEM_KEYS))
    if unknown:
        item.error = f"line {item.line}: unknown keys {unknown}; valid keys: {sorted(ITEM_KEYS)}"
        return
    for key, value in data.items():
        expected = ITEM_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, expected):
            names = expected.__name__ if isinstance(expected, type) else "number"
            item.error = f"line {item.line}: {key}={value!r} should be a {names}"
            return
    if "prompts" in data:
        prompts = data["prompts"]
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts) or "prompt" in data:
            item.error = f"line {item.line}: 'prompts' must be a non-empty list of prompts (without 'prompt')"
            return
        data["prompt"] = prompts[0]
    prompt = data.pop("prompt", "")
    if not prompt.strip() and "image" not in data:
        item.error = f"line {item.line}: needs a non-empty 'prompt' (or an 'image')"
        return
    item.prompt = prompt.strip()
    if "image" in data:
        item.image = _relative_to(data.pop("image"), base_dir)
    if "out" in data:
        item.out = _relative_to(data.pop("out"), base_dir)
    if "seed" in data:
        item.seed = data.pop("seed")
    item.overrides = data


def _relative_to(path: str, base_dir: Path | None) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() or base_dir is None else base_dir / p)


def slugify(text: str, max_length: int = 60) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_length].rstrip("-") or "video"


def output_name(item: JobItem) -> str:
    """The default output file of a job item (`video_name`)."""
    return video_name(item.prompt, [item.image] if item.image else [], item.seed)


def video_name(prompt: str, images: list[str], seed: int) -> str:
    """`<slug of the prompt>-<6 hex of prompt+images>-s<seed>.mp4`, the one naming scheme of `generate` and
    `batch`: stable across runs and ranks, distinct for prompts that share a long prefix or differ only by
    their image."""
    digest = hashlib.sha256("\0".join([prompt, *images]).encode()).hexdigest()[:6]
    return f"{slugify(prompt)}-{digest}-s{seed}.mp4"


def output_path(item: JobItem, out_dir: Path) -> Path:
    return Path(item.out) if item.out else out_dir / output_name(item)


def mark_duplicate_outputs(items: list[JobItem], out_dir: Path) -> None:
    """Give every item whose output path an earlier item already has an error, so that no file is rendered
    twice (same prompt, image and seed, or the same `out`)."""
    first: dict[str, JobItem] = {}
    for item in items:
        if item.error:
            continue
        key = os.path.abspath(output_path(item, out_dir))
        if key in first:
            item.error = (
                f"line {item.line}: same output as line {first[key].line} ({output_path(item, out_dir)}); "
                "give it another seed or its own 'out'"
            )
        else:
            first[key] = item


def shard(items: list[JobItem], rank: int, world_size: int) -> list[JobItem]:
    """Items of one rank: every world_size-th item, so each item goes to exactly one rank."""
    return [item for item in items if item.index % world_size == rank]
